"""Run a sweep: load the model once, measure the base once (`Baseline`), then for every
(scale, seed) point train a fresh adapter, measure it (`measure_point` -> `PointResult`, which
writes no database) and hand the result to the outbox (`outbox.PointWriter` -> the store).

Events go to a callback as small dicts ({"type": "step", ...}); the runner turns them into
database progress rows and the CLI into a progress bar. No SQL here.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data, evaluate
from .config import RunSpec
from .errors import StoreError
from .methods import get_method
from .models import pick_device
from .outbox import Event, PointWriter
from .paths import adapters_dir, checkpoints_dir, lab_home
from .quant import model_bytes
from .spectral import analyse
from .store import PointResult, Store
from .train import train_point

GENERAL = "general"
log = logging.getLogger(__name__)
CHECKPOINT_EVERY_S = 600.0  # the packed trainer saves its state this often (resume continues)
CHECKPOINT_EVERY_STEPS = 0  # and every N packed steps (0: time only; tests set it)


def eval_sets(spec: RunSpec) -> dict[str, list[str]]:
    """Named evaluation texts: the general probe, the training domain's held-out split and, when
    asked, every other domain's split (the cross-domain matrix's columns)."""
    probe = data.load_probe(spec.probe)
    sets = {
        GENERAL: [probe[i] for i in data.spread(len(probe), spec.probe_items)],
        f"domain:{spec.domain}": data.domain_eval(
            spec.domain, spec.domain_eval_size, spec.construction
        ),
    }
    if spec.eval_all_domains:
        for d in data.list_domains():
            if d != spec.domain:
                sets[f"domain:{d}"] = data.domain_eval(d, spec.domain_eval_size, spec.construction)
    return sets


def measure(
    model,
    tok,
    spec: RunSpec,
    sets: dict[str, list[str]],
    before: dict[str, evaluate.PerplexityResult] | None = None,
) -> dict[str, evaluate.PerplexityResult]:
    """Perplexity on every set. Without `before` (the base is being measured) the general
    probe's next-token log-probs are kept, when they fit `evaluate.KL_CACHE_BYTES`; with it, the
    point's KL to the base comes from them in the same forward pass (no second model)."""
    out = {}
    for name, texts in sets.items():
        keep, ref = False, None
        if name == GENERAL and before is None:
            keep = evaluate.logp_fits(model, tok, texts, spec.max_length)
            if not keep:
                log.warning("the base's log-probs exceed the cache budget: KL to base not measured")
        elif name == GENERAL:
            ref = before[GENERAL].logp
        out[name] = evaluate.perplexity(
            model, tok, texts, spec.eval_batch_size, spec.max_length, keep, ref
        )
    return out


def general_measures(before: evaluate.PerplexityResult, after: evaluate.PerplexityResult) -> dict:
    """The other forgetting measures on the general probe: per-statement perplexity (Martz
    2025's aggregation) before and after and its change, mean per-token KL to the base
    (Kalajdzievski 2024) and the change of mean per-token cross-entropy (peft's
    method_comparison)."""
    sb = evaluate.stmt_perplexity(before.item_nll, before.item_tokens)
    sa = evaluate.stmt_perplexity(after.item_nll, after.item_tokens)
    return dict(
        general_ppl_stmt_before=sb,
        general_ppl_stmt_after=sa,
        degradation_stmt_pct=evaluate.degradation_pct(sb, sa),
        kl_to_base=evaluate.kl_mean(after),
        general_ce_delta=evaluate.ce_delta(before, after),
    )


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _gens(gens: list[evaluate.Generation]) -> list[dict]:
    return [
        dict(prompt=g.prompt, output=g.output, new_tokens=g.new_tokens, ok=g.ok, reason=g.reason)
        for g in gens
    ]


@dataclass
class TrainedPoint:
    """What training one point produced, before it is measured (`measure_point`)."""

    scale: int
    seed: int
    status: str  # done | diverged | stopped
    steps: int
    losses: list[float]
    seconds: float
    n_train: int
    n_all: int
    save: Callable[[Path], object] | None = None  # writes the adapter to a folder
    message: str = ""
    deltas: Callable[[], Iterable] | None = None  # (name, W, dW) for the spectral analysis
    checks: list[tuple[str, list[dict]]] = field(default_factory=list)  # in-training smoke tests
    stop_step: int | None = None
    extra_bytes: int = 0  # adapter tensors not registered in the model (packed trainer)


@dataclass
class Baseline:
    """What every point of a sweep is measured with and against: the evaluation inputs and the
    base model's numbers, measured once per sweep."""

    spec: RunSpec
    run_id: str
    device: torch.device
    tok: object
    sets: dict[str, list[str]]  # evaluation texts by name (`eval_sets`)
    before: dict[str, evaluate.PerplexityResult]  # the base model on every set
    prompts: list[str]  # smoke-test prompts
    # the general probe's items measured, by their index in the whole probe (a subset keeps
    # them: per-item views name them)
    probe_index: list[int]
    mc_items: list = field(default_factory=list)  # multiple-choice questions (empty: off)
    mc_before: float | None = None
    mc_index: list[int] = field(default_factory=list)  # their indices in the whole set
    mc_correct_before: list[bool] = field(default_factory=list)  # the base's answer right?
    base_vectors: dict = field(default_factory=dict)  # spectral: the base's singular vectors


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _eval_rows(base: Baseline, after: dict) -> tuple[list[dict], list[dict]]:
    """The point's perplexity on every evaluation set, and the general probe per item."""
    before = base.before
    evals = [
        dict(
            eval_set=k,
            ppl_before=before[k].ppl,
            ppl_after=after[k].ppl,
            change_pct=evaluate.change_pct(before[k].ppl, after[k].ppl),
        )
        for k in base.sets
    ]
    b, a = before[GENERAL], after[GENERAL]
    items = [
        dict(eval_set=GENERAL, item=i, nll_before=x, nll_after=y, tokens=n)
        for i, x, y, n in zip(base.probe_index, b.item_nll, a.item_nll, a.item_tokens)
    ]
    return evals, items


def measure_point(
    base: Baseline, model, t: TrainedPoint, events: Callable[[Event], None] = lambda e: None
) -> PointResult:
    """Measure a trained point the way the base was measured (perplexities, smoke test,
    multiple choice, spectral analysis), save its adapter, and return everything as one
    `PointResult`. Writes nothing to the database; `events` hears which part runs."""
    spec, before = base.spec, base.before
    dom = f"domain:{spec.domain}"
    metrics = dict(
        steps=t.steps,
        final_loss=t.losses[-1] if t.losses else None,
        train_seconds=t.seconds,
        trainable_params=t.n_train,
        total_params=t.n_all,
        general_ppl_before=before[GENERAL].ppl,
        domain_ppl_before=before[dom].ppl,
        stop_step=t.stop_step,
        error=t.message or None,
    )
    if t.status == "diverged":
        metrics.update(peak_mem_mb=_peak_mem_mb(base.device))
        return PointResult(t.scale, t.seed, "diverged", metrics, [], [], [], t.checks)
    parts = ["perplexity", "smoke test"]
    parts += ["multiple choice"] * bool(base.mc_items)
    parts += ["spectral analysis"] * bool(spec.spectral and t.deltas is not None)

    def part(name: str) -> None:
        where = f"{parts.index(name) + 1}/{len(parts)}"
        events(
            {
                "type": "phase",
                "scale": t.scale,
                "seed": t.seed,
                "phase": f"evaluating: {name} ({where})",
            }
        )

    part("perplexity")
    t_eval = time.perf_counter()
    after = measure(model, base.tok, spec, base.sets, before)
    part("smoke test")
    t_gen = time.perf_counter()
    gens = evaluate.generate(model, base.tok, base.prompts, spec.smoke_max_new_tokens)
    gen_s = time.perf_counter() - t_gen
    adapter, disk = None, None
    if spec.save_adapters and t.save is not None:
        out = adapters_dir() / base.run_id / f"scale{t.scale}_seed{t.seed}"
        t.save(out)
        adapter, disk = str(out.relative_to(lab_home())), _dir_mb(out)
    if base.mc_items:
        part("multiple choice")
        acc, correct = evaluate.mc_accuracy(model, base.tok, base.mc_items, spec.eval_batch_size)
        metrics.update(
            mc_acc_before=base.mc_before, mc_acc_after=acc, mc_drop_pts=(base.mc_before - acc) * 100
        )
        mc_rows = [
            dict(item=i, correct_before=b, correct_after=a)
            for i, b, a in zip(base.mc_index, base.mc_correct_before, correct)
        ]
    else:
        mc_rows = []
    spectral = []
    if spec.spectral and t.deltas is not None:
        part("spectral analysis")
        spectral = analyse(
            t.deltas(), spec.spectral_topk, base.base_vectors, spec.intruder_k, spec.intruder_eps
        )
        if spec.intruder_k > 0 and spectral:
            metrics.update(intruder_dims=sum(int(x["intruder_dims"]) for x in spectral))
    g, d = after[GENERAL].ppl, after[dom].ppl
    metrics.update(
        general_ppl_after=g,
        degradation_pct=evaluate.degradation_pct(before[GENERAL].ppl, g),
        **general_measures(before[GENERAL], after[GENERAL]),
        domain_ppl_after=d,
        domain_improvement_pct=evaluate.improvement_pct(before[dom].ppl, d),
        smoke_ok=all(x.ok for x in gens),
        smoke_min_new_tokens=min(x.new_tokens for x in gens),
        gen_tokens_per_s=sum(x.new_tokens for x in gens) / max(gen_s, 1e-9),
        eval_seconds=time.perf_counter() - t_eval,
        peak_mem_mb=_peak_mem_mb(base.device),
        model_mem_mb=(model_bytes(model) + t.extra_bytes) / 2**20,
        disk_mb=disk,
        adapter_path=adapter,
    )
    evals, items = _eval_rows(base, after)
    return PointResult(
        t.scale, t.seed, t.status, metrics, evals, items, _gens(gens), t.checks, spectral, mc_rows
    )


class Sweep:
    """One sweep's points on their way out: measured (`measure_point`), handed to the
    `PointWriter` and announced as events. Shared by the sequential and the packed path."""

    def __init__(self, base: Baseline, store, events: Callable[[Event], None]):
        self.base, self.spec, self.events = base, base.spec, events
        self.tok, self.device = base.tok, base.device
        self.writer = PointWriter(store, base.run_id, events)

    def smoke_check(
        self, model, scale: int, seed: int, checks: list
    ) -> Callable[[int], str | None]:
        """The in-training smoke test (seed 003) for one point: generate, keep the answers,
        return why the model failed or None."""

        def check(step: int) -> str | None:
            gens = evaluate.generate(
                model, self.tok, self.base.prompts, self.spec.smoke_max_new_tokens
            )
            checks.append((f"step:{step}", _gens(gens)))
            bad = next((g for g in gens if not g.ok), None)
            reason = None
            if bad is not None:
                reason = f"{bad.reason or 'a degenerate answer'} for '{bad.prompt[:40]}'"
            self.events(
                {
                    "type": "smoke_check",
                    "scale": scale,
                    "seed": seed,
                    "step": step,
                    "ok": not reason,
                }
            )
            return reason

        return check

    def _done(self, result: PointResult, seconds: float) -> None:
        self.writer.save(result)
        self.events(
            {
                "type": "point_done",
                "scale": result.scale,
                "seed": result.seed,
                "status": result.status,
                "metrics": result.metrics,
                "seconds": seconds,
            }
        )

    def finish(self, model, t: TrainedPoint) -> None:
        """Measure a trained point, save its adapter, store everything."""
        result = measure_point(self.base, model, t, self.events)
        self._done(result, t.seconds + result.metrics.get("eval_seconds", 0.0))

    def fail(self, scale, seed, err: Exception) -> None:
        msg = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
        self._done(PointResult(scale, seed, "failed", {"error": msg}, [], [], []), 0.0)


def run_sweep(
    spec: RunSpec,
    run_id: str,
    store: Store,
    events: Callable[[Event], None] = lambda e: None,
    should_cancel: Callable[[], bool] = lambda: False,
    only: list[tuple[int, int]] | None = None,
) -> str:
    """Execute every unfinished point of the run (or of `only`, a distributed work unit); return
    'done' or 'cancelled'. `store` is a Store, or anything with the same writing methods (the
    Ray backend's workers hand their writes to the driver instead)."""
    return run_group([(spec, run_id, events)], store, should_cancel, only)


def run_group(
    series: list[tuple[RunSpec, str, Callable[[Event], None]]],
    store: Store,
    should_cancel: Callable[[], bool] = lambda: False,
    only: list[tuple[int, int]] | None = None,
) -> str:
    """Execute several runs (series: spec, run id, its events) on one loaded model. Where they
    differ only in settings of `config.PER_SERIES` (domain, replay, learning rate...) and the
    method packs, every point of every series trains in one packed pass; otherwise the series
    run one after another. Returns 'done' or 'cancelled' (for all of them)."""
    from .config import pack_conflict

    specs = [s for s, _, _ in series]
    spec = specs[0]
    device = pick_device(spec.device)
    method = get_method(spec.method)
    for _, _, events in series:
        events({"type": "phase", "phase": "loading model"})
    lm = method.load(spec, device)
    base, tok = lm.model, lm.tokenizer
    sweeps, todos, memo = [], [], BaseMemo()
    for sp, run_id, events in series:
        sweep = _begin(sp, run_id, store, events, method, base, tok, device, memo)
        done = store.finished_points(run_id)
        todo = [p for p in (only if only is not None else sp.points()) if p not in done]
        events({"type": "plan", "points": len(sp.points()), "todo": len(todo)})
        sweeps.append(sweep)
        todos.append(todo)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    packed = all(method.packs(sp, device) for sp in specs) and pack_conflict(specs) is None
    try:
        if packed and any(todos):
            ids = [run_id for _, run_id, _ in series]
            status = _run_packed(sweeps, base, todos, should_cancel, _checkpoint(ids, only))
        else:
            status = "done"
            for sweep, todo in zip(sweeps, todos):
                status = _run_sequential(sweep, method, base, todo, should_cancel)
                if status != "done":
                    break
    except BaseException:
        for sweep in sweeps:
            with contextlib.suppress(StoreError):  # keep what finished even if the sweep fails
                sweep.writer.close()
        raise
    for sweep in sweeps:
        sweep.writer.close()
    return status


class BaseMemo:
    """The base model's measurements within one group of series on one loaded model, keyed by
    what each depends on (a set's name and texts, the batch size and length; the smoke-test
    prompts and length; the multiple-choice items): measured once and reused by every series
    that shares them. Two domains measure the general probe once and each domain's own text
    once; every number is what measuring again would give (same model, same inputs). Each
    entry keeps the seconds it took, so a series that reuses it reports the base's full time
    (the first estimate of a point's evaluation)."""

    def __init__(self):
        self._done: dict[tuple, tuple[object, float]] = {}

    def get(self, key: tuple, compute: Callable[[], object]) -> tuple[object, float]:
        """The value for `key` and the seconds it took, computing it the first time."""
        if key not in self._done:
            t = time.perf_counter()
            value = compute()
            self._done[key] = (value, time.perf_counter() - t)
        return self._done[key]

    def perplexities(self, base, tok, spec: RunSpec, sets: dict) -> tuple[dict, float]:
        """`measure` of the base on every set, each set measured once per group."""

        def key(name):
            return ("ppl", name, tuple(sets[name]), spec.eval_batch_size, spec.max_length)

        missing = {n: t for n, t in sets.items() if key(n) not in self._done}
        if missing:
            t = time.perf_counter()
            fresh = measure(base, tok, spec, missing)
            share = (time.perf_counter() - t) / len(missing)
            for name, result in fresh.items():
                self._done[key(name)] = (result, share)
        got = [self._done[key(n)] for n in sets]
        return {n: v for n, (v, _) in zip(sets, got)}, sum(sec for _, sec in got)


def _begin(spec, run_id, store, events, method, base, tok, device, memo: BaseMemo) -> Sweep:
    """Measure the base for one run (its evaluation sets, smoke-test answers, multiple choice;
    what an earlier series of the group already measured comes from `memo`) and return its
    `Sweep`."""
    store.set_status(run_id, "running", device=str(device))
    sets = eval_sets(spec)
    events({"type": "phase", "phase": "measuring the base model"})
    before, seconds = memo.perplexities(base, tok, spec, sets)
    seconds += _store_method_info(method, base, tok, spec, sets, run_id, store, memo)
    prompts = data.smoke_prompts()
    base_gens, sec = memo.get(
        ("generate", tuple(prompts), spec.smoke_max_new_tokens),
        lambda: evaluate.generate(base, tok, prompts, spec.smoke_max_new_tokens),
    )
    seconds += sec
    store.save_base_generations(run_id, _gens(base_gens))
    probe_index = data.spread(len(data.load_probe(spec.probe)), spec.probe_items)
    baseline = Baseline(spec, run_id, device, tok, sets, before, prompts, probe_index)
    mc = data.load_mc() if spec.mc_eval else []
    baseline.mc_index = data.spread(len(mc), spec.mc_items) if mc else []
    baseline.mc_items = [mc[i] for i in baseline.mc_index]
    if baseline.mc_items:
        (baseline.mc_before, baseline.mc_correct_before), sec = memo.get(
            ("mc", tuple(baseline.mc_index), spec.eval_batch_size),
            lambda: evaluate.mc_accuracy(base, tok, baseline.mc_items, spec.eval_batch_size),
        )
        seconds += sec
    sweep = Sweep(baseline, store, events)
    # The base goes through the same evaluation as every point: its time is the first estimate
    # of a point's evaluation (the whole-run ETA uses it until a point has been measured).
    events({"type": "base_done", "seconds": seconds})
    return sweep


def _run_sequential(sweep: Sweep, method, base, todo, should_cancel) -> str:
    """One point after another: prepare -> train -> measure -> save -> release."""
    spec, tok, events, device = sweep.spec, sweep.tok, sweep.events, sweep.device
    for scale, seed in todo:
        if should_cancel():
            return "cancelled"
        events({"type": "point_start", "scale": scale, "seed": seed})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model = None
        try:
            samples = data.training_samples(
                spec.domain, scale, spec.construction, seed, spec.replay
            )
            model = method.prepare(base, spec, seed)
            n_train, n_all = method.trainable(model)
            checks: list = []
            tr = train_point(
                model,
                tok,
                samples,
                spec,
                seed,
                on_step=lambda s, n, loss, sc=scale, sd=seed: events(
                    {"type": "step", "scale": sc, "seed": sd, "step": s, "total": n, "loss": loss}
                ),
                should_stop=should_cancel,
                check=sweep.smoke_check(model, scale, seed, checks) if spec.smoke_every else None,
            )
            if tr.status == "cancelled":
                base = method.release(model)
                return "cancelled"
            method.before_eval(model)
            sweep.finish(
                model,
                TrainedPoint(
                    scale,
                    seed,
                    tr.status,
                    tr.steps,
                    tr.losses,
                    tr.seconds,
                    n_train,
                    n_all,
                    save=(lambda out, m=model: method.save(m, out))
                    if method.saves_adapters
                    else None,
                    message=tr.message,
                    deltas=lambda m=model: method.weight_deltas(m),
                    checks=checks,
                    stop_step=tr.steps if tr.status == "stopped" else None,
                ),
            )
            base = method.release(model)
            model = None
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            # The point fails with its reason; the sweep goes on with a clean base.
            if model is not None:
                base = method.release(model)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            sweep.fail(scale, seed, e)
    return "done"


def _store_method_info(method, base, tok, spec, sets, run_id, store, memo: BaseMemo) -> float:
    """Run-level facts of the method (ADAPT-Q's profile and selection); for methods that keep
    layers quantized, also the general perplexity of the unquantized base, so the cost of
    quantization alone is on record. Returns the seconds that measure took (0: none)."""
    info = method.info()
    seconds = 0.0
    if method.swap is not None:

        def full_precision():
            method.swap.use(False, base)
            try:
                return evaluate.perplexity(
                    base, tok, sets[GENERAL], spec.eval_batch_size, spec.max_length
                )
            finally:
                method.swap.use(True, base)

        key = ("full precision", tuple(sets[GENERAL]), spec.eval_batch_size, spec.max_length)
        full, seconds = memo.get(key, full_precision)
        info["general_ppl_full_precision"] = full.ppl
    for key, value in info.items():
        store.save_run_info(run_id, key, value)
    return seconds


def _checkpoint(run_ids: list[str], only: list[tuple[int, int]] | None):
    """The packed trainer's checkpoint of this run, of this group of runs trained in one pass,
    or of this Ray work unit."""
    import hashlib

    from .packed import Checkpoint

    name = run_ids[0]
    if len(run_ids) > 1:  # a group: found again by `resume` with the same runs, in any order;
        # named after its first run id; it records every run (deleting any of them removes it)
        ids = sorted(run_ids)
        name = f"{ids[0]}-group-" + hashlib.sha1(" ".join(ids).encode()).hexdigest()[:12]
    if only is not None:  # a work unit: its own file, found again when Ray retries the unit
        name += "-" + hashlib.sha1(repr(sorted(only)).encode()).hexdigest()[:10]
    return Checkpoint(
        checkpoints_dir() / name, CHECKPOINT_EVERY_S, CHECKPOINT_EVERY_STEPS, tuple(run_ids)
    )


def _keyed_runs(sweeps: list[Sweep], todos) -> tuple[list[tuple], Callable]:
    """The packed trainer's runs (key, seed, samples, learning rate) for every sweep's points,
    and `where(key) -> (sweep, scale, seed)`. A key is (scale, seed) for one sweep, (run id,
    scale, seed) for several (a checkpoint names its runs, whatever order a resume lists them
    in)."""
    one = len(sweeps) == 1
    by_id = {sw.base.run_id: sw for sw in sweeps}

    def where(key: tuple) -> tuple[Sweep, int, int]:
        if one:
            return sweeps[0], *key
        run_id, scale, seed = key
        return by_id[run_id], scale, seed

    runs = [
        (
            (sc, sd) if one else (sw.base.run_id, sc, sd),
            sd,
            data.training_samples(sw.spec.domain, sc, sw.spec.construction, sd, sw.spec.replay),
            sw.spec.learning_rate,
        )
        for sw, todo in zip(sweeps, todos)
        for sc, sd in todo
    ]
    return runs, where


def _run_packed(sweeps: list[Sweep], base, todos, should_cancel, checkpoint) -> str:
    """All points of the sweeps share each forward/backward (see core/packed/); the trainer
    saves its state every CHECKPOINT_EVERY_S and when stopped, and a resumed run continues
    from it."""
    from .packed import save_peft_adapter, train_packed
    from .spectral import packed_pairs

    spec = sweeps[0].spec
    runs, where = _keyed_runs(sweeps, todos)
    n_base = sum(p.numel() for p in base.parameters())
    started = {run[0] for run in runs[: spec.pack_slots]}
    for key in started:
        sw, scale, seed = where(key)
        sw.events({"type": "point_start", "scale": scale, "seed": seed})

    emitted: dict[tuple, int] = {}

    def on_step(live, _latest):
        """Called at each loss read-back: every step since the last one becomes an event."""
        for x in live:
            if x is None:
                continue
            sw, scale, seed = where(x.key)
            if x.key not in emitted:
                emitted[x.key] = 0
                if x.key not in started:
                    sw.events({"type": "point_start", "scale": scale, "seed": seed})
            for i in range(emitted[x.key], len(x.losses)):
                sw.events(
                    {
                        "type": "step",
                        "scale": scale,
                        "seed": seed,
                        "step": i + 1,
                        "total": x.total,
                        "loss": x.losses[i],
                    }
                )
            emitted[x.key] = len(x.losses)

    def on_done(packer, slot, run):
        sw, scale, seed = where(run.key)
        status = "done" if math.isfinite(run.losses[-1]) else "diverged"
        msg = "" if status == "done" else f"loss became {run.losses[-1]} at step {run.pos}"
        try:
            sw.finish(
                base,
                TrainedPoint(
                    scale,
                    seed,
                    status,
                    run.pos,
                    run.losses,
                    time.perf_counter() - run.started,
                    packer.params_per_slot,
                    n_base + packer.params_per_slot,
                    save=lambda out: save_peft_adapter(packer, slot, sw.spec, out),
                    message=msg,
                    deltas=lambda: packed_pairs(packer, slot),
                    extra_bytes=packer.params_per_slot * packer.weights.element_size(),
                ),
            )
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            sw.fail(scale, seed, e)

    if checkpoint.load_meta({run[0] for run in runs}) is not None:
        for sw in sweeps:
            sw.events({"type": "phase", "phase": "resuming from the last checkpoint"})
    status = train_packed(
        base,
        sweeps[0].tok,
        spec,
        runs,
        spec.pack_slots,
        on_done,
        on_step,
        should_cancel,
        checkpoint=checkpoint,
        compile_step=spec.compile_step and sweeps[0].device.type == "cuda",
    )
    if status == "done":
        checkpoint.clear()
    return status


def adapter_abspath(rel: str | None) -> Path | None:
    return (lab_home() / rel) if rel else None
