"""`python -m core` — the command line. Every subcommand takes --db; errors print one line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .analysis import METRICS
from .config import (
    PRESETS,
    RunSpec,
    field_help,
    headline_measure,
    pack_groups,
    parse_float_list,
    parse_int_list,
    preset,
    sweep_series,
)
from .errors import LabError
from .labels import POINT_SUMMARY
from .paths import resolve_db
from .store import Store


def quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notes) hides our own progress."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def quiet_transformers() -> None:
    """transformers' logging and weight-loading bars, silenced by the commands that load a
    model once their input is checked: importing transformers costs a second of CPU that
    `list`, `show` or a rejected command line need not pay."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


# (flag, RunSpec field, type) — help text comes from the RunSpec field itself. The sweep axes
# (--domain, --rank, --replay, --lr) take comma lists: one series (run) per value, see SWEEP_HELP.
OVERRIDES = [
    ("--name", "name", str),
    ("--model", "model", str),
    ("--method", "method", str),
    ("--domain", "domain", str),
    ("--construction", "construction", str),
    ("--scales", "scales", str),
    ("--seeds", "seeds", str),
    ("--epochs", "epochs", int),
    ("--lr", "learning_rate", str),
    ("--weight-decay", "weight_decay", float),
    ("--batch-size", "batch_size", int),
    ("--max-length", "max_length", int),
    ("--grad-clip", "grad_clip", float),
    ("--rank", "lora_rank", str),
    ("--alpha", "lora_alpha", float),
    ("--dropout", "lora_dropout", float),
    ("--target-modules", "target_modules", str),
    ("--probe", "probe", str),
    ("--probe-items", "probe_items", int),
    ("--mc-items", "mc_items", int),
    ("--device", "device", str),
    ("--trainer", "trainer", str),
    ("--pack-slots", "pack_slots", int),
    ("--precision", "precision", str),
    ("--eval-size", "domain_eval_size", int),
    ("--warmup", "warmup_ratio", float),
    ("--replay", "replay", str),
    ("--adaptq-fraction", "adaptq_fraction", float),
    ("--selection", "adaptq_selection", str),
    ("--frozen-bits", "frozen_bits", int),
    ("--quant-order", "quant_order", str),
    ("--smoke-every", "smoke_every", int),
    ("--spectral-topk", "spectral_topk", int),
    ("--intruder-k", "intruder_k", int),
    ("--intruder-eps", "intruder_eps", float),
    ("--headline-metric", "headline_metric", str),
    ("--backend", "backend", str),
    ("--ray-address", "ray_address", str),
    ("--ray-units", "ray_units", int),
    ("--ray-gpus-per-unit", "ray_gpus_per_unit", float),
]
# on/off switches: (flag, RunSpec field, value the flag sets)
SWITCHES = [
    ("--eval-all-domains", "eval_all_domains", True),
    ("--smoke-stop", "smoke_stop", True),
    ("--no-spectral", "spectral", False),
    ("--no-mc", "mc_eval", False),
    ("--no-save-adapters", "save_adapters", False),
    ("--no-compile", "compile_step", False),
]
# The sweep axes: a comma list queues one series (run) per value; several axes, every combination.
SWEEP_HELP = {
    "domain": " A comma list (e.g. legal,financial) runs one series per domain, trained in one "
    "packed pass on a GPU.",
    "lora_rank": " A comma list (e.g. 4,8,16) runs one series per rank.",
    "replay": " A comma list (e.g. 0,0.05,0.1,0.3) runs one series per fraction.",
    "learning_rate": " A comma list (e.g. 5e-5,1e-4) runs one series per learning rate.",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"error: {message} (see --help)\n")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", help="database file (default: $FORGETTING_LAB_DB or the lab home's lab.duckdb)"
    )


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m core", description="Forgetting Lab: measure forgetting vs dataset size."
    )
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_run_commands(sub)
    _add_analyze(sub)
    _add_forecast(sub)
    _add_reference(sub)
    exp = sub.add_parser("export", help="write per-point results as CSV or Parquet")
    exp.add_argument("--format", choices=["csv", "parquet"], default="csv")
    exp.add_argument("--out", required=True, help="output file")
    exp.add_argument("--run", action="append", dest="runs", help="only this run (repeatable)")
    _add_db(exp)
    for name, parser in sub.choices.items():  # each subcommand runs its own function
        parser.set_defaults(func=COMMANDS[name])
    return ap


def _add_run(sub) -> None:
    """`run`: a preset, every RunSpec override and switch, --detach."""
    run = sub.add_parser("run", help="run a sweep (foreground with a progress bar, or --detach)")
    run.add_argument(
        "--preset", default="quick-cpu", help=f"one of: {', '.join(PRESETS)} (default quick-cpu)"
    )
    for flag, fname, _ in OVERRIDES:
        extra = SWEEP_HELP.get(fname, "")
        run.add_argument(flag, dest=fname, default=None, help=field_help(fname) + extra)
    run.add_argument(
        "--detach", action="store_true", help="queue it for the background worker and return"
    )
    for flag, fname, value in SWITCHES:
        run.add_argument(
            flag,
            dest=fname,
            action="store_const",
            const=value,
            default=None,
            help=("turn off: " if not value else "") + field_help(fname),
        )
    run.add_argument(
        "--alpha-2r",
        action="store_true",
        help="set LoRA alpha to 2 x rank for every rank (Rathore et al. 2025)",
    )
    _add_db(run)


def _add_run_commands(sub) -> None:
    """The subcommands that list, show or act on runs (and the worker)."""
    for name, helptext in (
        ("list", "list runs"),
        ("worker", "drain the queue (used by the app)"),
        ("prepare", "convert the embedded model to its fast cache (once) and check the database"),
    ):
        p = sub.add_parser(name, help=helptext)
        _add_db(p)
    for name, helptext in (
        ("show", "show a run and its points"),
        ("cancel", "cancel a queued or running run"),
        ("resume", "continue a stopped run, skipping finished points"),
        ("delete", "delete a run and its points"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "resume":  # runs trained in one pass continue in one pass
            p.add_argument("run_id", nargs="+", help="one run, or the runs of one packed pass")
        else:
            p.add_argument("run_id")
        _add_db(p)
        if name == "resume":
            p.add_argument("--detach", action="store_true", help="resume in the background worker")
        if name == "show":
            p.add_argument("--json", action="store_true", help="print JSON")


def _add_analyze(sub) -> None:
    an = sub.add_parser(
        "analyze", help="threshold with its confidence interval, phases and growth fits"
    )
    an.add_argument("run_id")
    an.add_argument(
        "--level",
        type=float,
        default=10.0,
        help="threshold level in %% degradation (a measure in nats: its perplexity-ratio "
        "equivalent, e.g. 10 is log(1.1) = 0.0953 nats)",
    )
    an.add_argument(
        "--metric",
        default=None,
        choices=list(METRICS),
        help="forgetting measure (default: the run's headline measure: its headline_metric "
        "setting, degradation_stmt_pct for a run of the paper-000 protocol, else "
        "degradation_pct): degradation_pct "
        "(token-weighted perplexity change), "
        "degradation_stmt_pct (mean of per-statement perplexities, Martz 2025), "
        "general_ce_delta (cross-entropy change in nats, peft's method comparison), kl_to_base "
        "(KL to the base model in nats, Kalajdzievski 2024)",
    )
    an.add_argument("--json", action="store_true", help="print JSON")
    _add_db(an)


def _add_forecast(sub) -> None:
    fc = sub.add_parser(
        "forecast",
        help="project a run's forgetting beyond its largest size (a projection, with its backtest)",
    )
    fc.add_argument("run_id", help="a stored run, or a reference run (ref:...)")
    fc.add_argument(
        "--to", default="50000", help="largest dataset size to forecast (default 50000)"
    )
    fc.add_argument(
        "--metric", default="degradation_pct", help="metric column (default degradation_pct)"
    )
    fc.add_argument("--level", type=float, default=10.0, help="threshold level in %% degradation")
    fc.add_argument("--boot", type=int, default=200, help="bootstrap replicates (default 200)")
    fc.add_argument("--json", action="store_true", help="print JSON")
    _add_db(fc)


def _add_reference(sub) -> None:
    ref = sub.add_parser(
        "reference", help="re-derive the shipped reference results from their Parquet files"
    )
    ref.add_argument("--json", action="store_true", help="print JSON")
    ref.add_argument(
        "--set",
        dest="ref_set",
        default=None,
        help="which shipped set (default: the Martz 2025 protocol); see data/reference/",
    )
    _add_db(ref)


def _spec_from_args(a: argparse.Namespace) -> RunSpec:
    over = {}
    for _, fname, typ in OVERRIDES:
        v = getattr(a, fname)
        if v is None:
            continue
        if fname in ("scales", "seeds"):
            over[fname] = parse_int_list(v, fname)
            continue
        if fname in SWEEP_HELP:
            continue  # a list: one series per value, see _specs_from_args
        try:
            over[fname] = typ(v)
        except ValueError:
            raise LabError(f"{fname}: '{v}' is not a valid {typ.__name__}") from None
    for _, fname, _ in SWITCHES:
        if getattr(a, fname, None) is not None:
            over[fname] = getattr(a, fname)
    return preset(a.preset, **over)


def _specs_from_args(a: argparse.Namespace) -> list[RunSpec]:
    """One spec per requested value of each sweep axis (`--rank 4,8,16`, `--replay 0,0.1`,
    `--lr 5e-5,1e-4`: one series each; several axes: every combination)."""
    base = _spec_from_args(a)
    return sweep_series(
        base,
        domains=tuple(d.strip() for d in a.domain.split(",")) if a.domain else None,
        ranks=parse_int_list(a.lora_rank, "rank") if a.lora_rank else None,
        replays=parse_float_list(a.replay, "replay") if a.replay else None,
        learning_rates=parse_float_list(a.learning_rate, "learning_rate")
        if a.learning_rate
        else None,
        alpha_2r=a.alpha_2r,
    )


class _Progress:
    """One tqdm bar (scale, seed, step, loss, ETA) and one summary line per finished point. A
    packed sweep trains many points at once: the bar follows the longest of them (the critical
    path) and says how many are in flight; its rate is that point's own steps per second."""

    def __init__(self, n_points: int):
        from tqdm import tqdm

        self.tqdm, self.bar, self.n, self.done = tqdm, None, n_points, 0
        self.live: dict[tuple, tuple[int, int | None]] = {}  # key -> (step, total)
        self.key: tuple | None = None  # the point the bar follows

    def _desc(self) -> str:
        k = self.key
        series = f"{k[2]}: " if k[2] else ""
        return f"[{self.done}/{self.n} done, {len(self.live)} training] {series}scale {k[0]} seed {k[1]}"

    def _follow(self, key: tuple | None) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.key = None, key
        if key is None:
            return
        step, total = self.live[key]
        self.bar = self.tqdm(
            total=total,
            initial=step,
            desc=self._desc(),
            unit="step",
            leave=False,
            file=sys.stderr,
        )

    def __call__(self, ev: dict) -> None:
        """An engine event; `series` (a run's name when several train in one pass) labels it."""
        t = ev["type"]
        key = (ev.get("scale"), ev.get("seed"), ev.get("series"))
        tag = f"{ev['series']}: " if ev.get("series") else ""
        if t == "phase" and "scale" not in ev:
            print(f"... {tag}{ev['phase']}", file=sys.stderr)
        elif t == "plan" and ev["todo"] < ev["points"]:
            self.done += ev["points"] - ev["todo"]
            print(
                f"... {tag}{ev['points'] - ev['todo']} point(s) already stored, skipping them",
                file=sys.stderr,
            )
        elif t == "point_start":
            self.live[key] = (0, None)
            if self.key is None:
                self._follow(key)
        elif t == "step" and key in self.live:
            self.live[key] = (ev["step"], ev["total"])
            cur = self.live.get(self.key, (0, 0))[1] or 0
            if key != self.key and ev["total"] > cur:
                self._follow(key)  # a longer point: it decides when the sweep ends
            if key == self.key and self.bar is not None:
                if self.bar.total is None:
                    self.bar.reset(total=ev["total"])
                    self.bar.update(ev["step"])
                else:
                    self.bar.update(ev["step"] - self.bar.n)
                self.bar.set_postfix(loss=f"{ev['loss']:.3f}", refresh=False)
        elif t == "storage_error":
            self.tqdm.write(
                f"!! {ev['message']} -- {ev['pending']} finished point(s) kept in memory, retrying",
                file=sys.stderr,
            )
        elif t == "smoke_check" and not ev["ok"]:
            self.tqdm.write(
                f"!! {tag}scale {ev['scale']} seed {ev['seed']}: in-training smoke test failed at "
                f"step {ev['step']} (zero tokens or a degenerate answer)",
                file=sys.stderr,
            )
        elif t == "point_done":
            self.done += 1
            self.live.pop(key, None)
            if key == self.key or self.key not in self.live:
                self._follow(None)  # closed before the summary line, the next bar after it
            elif self.bar is not None:
                self.bar.set_description(self._desc(), refresh=False)
            m = ev["metrics"]
            if ev["status"] in ("done", "stopped"):
                print(
                    f"{tag}scale {ev['scale']:>6} seed {ev['seed']}: general ppl {m['general_ppl_before']:.2f} -> "
                    f"{m['general_ppl_after']:.2f} ({m['degradation_pct']:+.1f}%), domain "
                    f"{m['domain_improvement_pct']:+.1f}% better, smoke {'ok' if m['smoke_ok'] else 'FAILED'} "
                    f"[{ev['seconds']:.1f}s]" + (f" -- {m['error']}" if m.get("error") else ""),
                    flush=True,
                )
            else:
                print(
                    f"{tag}scale {ev['scale']:>6} seed {ev['seed']}: {ev['status']} ({m.get('error', '')})",
                    flush=True,
                )
            if self.key is None and self.live:
                self._follow(max(self.live, key=lambda k: self.live[k][1] or 0))


def _print_table(df, cols) -> None:
    if df.empty:
        print("(none)")
        return
    print(df[cols].to_string(index=False))


def _run_group(store: Store, specs: list[RunSpec]) -> int:
    """Train runs in this process on one loaded model (one packed pass where they can share
    it); one run is a group of one."""
    from . import runner

    ids = []
    for spec in specs:
        run_id = runner.create_run(store, spec, status="running")
        ids.append(run_id)
        print(
            f"run {run_id}: {spec.model} {spec.method} r{spec.lora_rank} on {spec.domain}, "
            f"lr {spec.learning_rate:g}, replay {spec.replay:g}, "
            f"scales {list(spec.scales)}, seeds {list(spec.seeds)} -> {store.path}",
            file=sys.stderr,
        )
    return _foreground(store, ids)


def _foreground(store: Store, run_ids: list[str]) -> int:
    """Execute stored runs here with one progress display; report how each ended."""
    from . import runner

    specs = [store.get_spec(r) for r in run_ids]
    progress = _Progress(sum(len(s.points()) for s in specs))
    names = [s.name or r for s, r in zip(specs, run_ids)] if len(run_ids) > 1 else [None]
    status = runner.run_foreground_group(
        store, run_ids, lambda i, ev: progress({**ev, "series": names[i]})
    )
    rc = 0 if status == "done" else 1
    for run_id in run_ids:
        run = store.get_run(run_id)
        if run["status"] == "failed":
            print(f"error: run {run_id} failed: {run['error']}", file=sys.stderr)
            rc = 1
            continue
        print(f"run {run_id} {run['status']}" + (f": {run['error']}" if run["error"] else ""))
        rc = max(rc, 1 if run["error"] else 0)
    return rc


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries()
    a = build_parser().parse_args(argv)
    try:
        return _dispatch(a)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; finished points are stored (resume with: python -m core resume RUN)",
            file=sys.stderr,
        )
        return 130


def _dispatch(a: argparse.Namespace) -> int:
    from . import runner

    store = Store(resolve_db(a.db))
    if a.cmd in ("worker", "run", "resume"):
        runner.install_stop_signals()
    return a.func(store, a)


def cmd_worker(store: Store, a: argparse.Namespace) -> int:
    """`worker`: drain the queue (used by the app)."""
    from . import runner

    quiet_transformers()
    return runner.worker_main(store.path)


def cmd_analyze(store: Store, a: argparse.Namespace) -> int:
    """`analyze`: threshold with its interval, phases and growth fits."""
    from . import analysis

    spec = store.get_spec(a.run_id)
    pts, items = store.points_df([a.run_id]), store.item_nll_df(a.run_id)
    # the run's headline measure unless one is asked for (paper-000: Martz 2025's aggregation)
    metric = a.metric or analysis.headline_metric(pts, headline_measure(spec))
    try:
        rep = analysis.threshold_report(pts, items, a.level, metric=metric)
        # the token-weighted change stays beside another headline, labelled
        tw = (
            analysis.threshold_report(pts, items, a.level)
            if metric != "degradation_pct" and "degradation_pct" in analysis.available_metrics(pts)
            else None
        )
    except ValueError as e:
        raise LabError(f"cannot analyze run {a.run_id}: {e}") from None
    if a.json:
        out = {**rep.raw, "token_weighted": tw.raw} if tw is not None else rep.raw
        print(json.dumps(out, indent=2, default=float))
        return 0
    print(f"{metric}: {analysis.metric_of(metric).title}")
    print(rep.verdict())
    print(rep.interval_text())
    if rep.fit is not None:
        print(rep.fit_text(r2_digits=3))
    if tw is not None:
        print(f"token-weighted perplexity change (degradation_pct): {tw.verdict()}")
    nats = analysis.metric_of(metric).unit == "nats"
    for p in rep.points:
        value = f"{p['mean']:+10.4f} nats (≈ {p['mean_degradation_pct']:+.1f} %)" if nats else ""
        value = value or f"{p['mean_degradation_pct']:+10.1f} %"
        print(f"  {p['scale']:>7,}  {value}  {p['phase']}")
    return 0


def _forecast_points(store: Store, run_id: str):
    from . import reference

    if run_id.startswith(reference.REF_PREFIX):
        every = reference.points()
        pts = every[every["run_id"] == run_id]
        if pts.empty:
            ids = ", ".join(dict.fromkeys(every["run_id"]))
            raise LabError(f"no reference run {run_id}; the shipped ones are: {ids}")
        return pts
    store.get_run(run_id)
    return store.points_df([run_id])


def cmd_forecast(store: Store, a: argparse.Namespace) -> int:
    """`forecast`: project the run's metric beyond its largest measured size, with intervals and
    the backtest of the same procedure."""
    from . import forecast

    try:
        to = float(a.to.replace(",", "").replace("_", ""))
    except ValueError:
        raise LabError(f"--to must be a number of samples, got {a.to!r}") from None
    if a.boot < 20:
        raise LabError(f"--boot must be at least 20, got {a.boot}")
    pts = _forecast_points(store, a.run_id)
    try:
        out = forecast.forecast(pts, a.metric, to=to, level=a.level, n_boot=a.boot)
    except forecast.ForecastError as e:
        raise LabError(f"cannot forecast run {a.run_id}: {e}") from None
    out = {"run_id": a.run_id, **out}
    if a.json:
        print(json.dumps(out, indent=2, default=float))
        return 0
    print(f"{a.run_id}:")
    print(forecast.describe(out))
    return 0


def cmd_reference(store: Store, a: argparse.Namespace) -> int:
    """`reference`: re-derive the shipped reference results."""
    from . import analysis, reference

    name = a.ref_set or reference.REF_NAME
    table = reference.summary(name)
    thr = {
        r: analysis.threshold_scale(t["scale"], t["mean"], 10.0)
        for r, t in table.groupby("run", sort=False)
    }
    prov = reference.provenance(name)
    if a.json:
        print(
            json.dumps(
                {
                    "set": name,
                    "provenance": prov,
                    "threshold_10pct": thr,
                    "points": json.loads(table.to_json(orient="records")),
                },
                indent=2,
            )
        )
        return 0
    print(f"{name}: {prov.get('what', '')}")
    print(table.round(1).to_string(index=False))
    for r, verdict in analysis.curve_verdicts(table, "run", 10.0).items():
        print(f"{r}: {verdict}")
    return 0


def cmd_prepare(store: Store, a: argparse.Namespace) -> int:
    """`prepare`: the embedded model cache and the database."""
    from .models import ensure_embedded_cache

    quiet_transformers()
    print(f"embedded model cache: {ensure_embedded_cache()}")
    print(f"database: {store.path} ({len(store.list_runs())} runs)")
    return 0


def cmd_run(store: Store, a: argparse.Namespace) -> int:
    """`run`: train one series per swept value (domain, rank, replay, learning rate) in the
    foreground, those that can share one packed pass together, or queue them so (--detach)."""
    from . import runner

    specs = _specs_from_args(a)
    for spec in specs:  # every series is checked before any is stored
        runner.preflight(spec)
    if a.detach:  # queued as the app queues them: one group per packed pass
        for run_id in runner.launch_group(store, specs):
            print(run_id)
        return 0
    quiet_transformers()
    worst = 0
    # e.g. --domain legal,financial: one group; series that differ in how they train (rank...):
    # one group each, one after another
    for group in pack_groups(specs):
        worst = max(worst, _run_group(store, group))
    return worst


def cmd_list(store: Store, a: argparse.Namespace) -> int:
    """`list`: list runs."""
    from . import runner

    df = runner.runs_with_status(store.list_runs())
    if not df.empty:
        # DONE points (measured in full) of all, as the sidebar and the Launch panel count them
        df["points done"] = df["points_done"].astype(str) + "/" + df["n_points"].astype(str)
        df["created"] = df["created_at"].astype(str).str[:19]
    _print_table(
        df,
        [
            "run_id",
            "status_effective",
            "points done",
            "model",
            "method",
            "domain",
            "name",
            "created",
        ],
    )
    return 0


def cmd_show(store: Store, a: argparse.Namespace) -> int:
    """`show`: a run and its points."""
    from . import runner

    run = runner.with_status(store.get_run(a.run_id))
    pts = store.points_df([a.run_id])
    if a.json:
        print(
            json.dumps(
                {
                    "run": {k: (str(v) if v is not None else None) for k, v in run.items()},
                    "points": json.loads(pts.to_json(orient="records")),
                },
                indent=2,
            )
        )
        return 0
    print(f"run {run['run_id']} [{run['status_effective']}] {run['name']}")
    print(
        f"  model {run['model']}  method {run['method']}  domain {run['domain']}  device {run['device']}"
    )
    if run["error"]:
        print(f"  note: {run['error']}")
    _print_table(pts, POINT_SUMMARY)
    return 0


def cmd_cancel(store: Store, a: argparse.Namespace) -> int:
    """`cancel`: cancel a queued or running run."""
    from . import runner

    print(f"run {a.run_id}: {runner.cancel(store, a.run_id)}")
    return 0


def cmd_resume(store: Store, a: argparse.Namespace) -> int:
    """`resume`: continue a stopped run, skipping finished points."""
    from . import runner

    if a.detach:  # a run is queued with the stopped runs of its group
        queued: list[str] = []
        for run_id in a.run_id:
            if run_id not in queued:
                queued += runner.resume_background(store, run_id)
        for run_id in queued:
            print(f"run {run_id}: queued")
        return 0
    for run_id in a.run_id:  # every run is checked before any continues
        runner.prepare_resume(store, run_id)
    quiet_transformers()
    return _foreground(store, list(a.run_id))


def cmd_delete(store: Store, a: argparse.Namespace) -> int:
    """`delete`: a run, its points, adapters and checkpoints (not a queued or running one)."""
    from . import runner

    runner.delete_run(store, a.run_id)
    print(f"deleted {a.run_id} (its points, saved adapters and checkpoints)")
    return 0


def cmd_export(store: Store, a: argparse.Namespace) -> int:
    """`export`: per-point results as CSV or Parquet."""
    n = store.export(Path(a.out), a.format, a.runs)
    print(f"wrote {n} rows to {a.out}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "show": cmd_show,
    "cancel": cmd_cancel,
    "resume": cmd_resume,
    "delete": cmd_delete,
    "export": cmd_export,
    "analyze": cmd_analyze,
    "forecast": cmd_forecast,
    "reference": cmd_reference,
    "prepare": cmd_prepare,
    "worker": cmd_worker,
}
