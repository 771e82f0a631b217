"""The paper's whole grid, measured: Martz 2025's protocol (paper-000: batch 1, 3 epochs, sizes 50
to 50,000), legal and financial, in ONE packed pass, timed from the first training step to the
last point stored, over as many chained commands as it takes.

    python bench/fullgrid.py start  --precision bf16 [--seeds 1] [--scales ...]   # a fresh pass
    python bench/fullgrid.py resume                                               # the next chunk
    python bench/fullgrid.py report --device "NVIDIA H200" --out bench/results    # the result

`start` and `resume` train until done or until SIGTERM (e.g. `timeout -s TERM 480 ...`: the
packed trainer saves its checkpoint at the stop, and `resume` continues from that step). Leave
a few minutes between the stop and a hard limit: a stop that lands in a compile (a fresh process,
or the packer shrinking to a new size) is honoured only when the compile is over.
`--stop-at-rows N` stops the same way once the packer shrinks to N rows or fewer, before the
smaller packer compiles: the checkpoint then holds only the runs still training (for the paper's
grid, the two 50,000-sample runs: ~59 MB in bf16 at LoRA r8), small enough to carry to another
machine and `resume` there (the lab home travels with it). Each
chunk appends its timings to `fullgrid-state.json` in the lab home: wall time from its first
training step to its end (the last point stored, or the stop), model load and base measurement
before it, evaluation inside it, and the packed step time at every width (rows in flight) from the
loss read-back intervals. `report` sums the chunks into
bench/results/<date>-<device>-fullgrid-<arith>.json (`full_grid_measured_min`, `compile_s`, ms
per step by width). The lab home keeps the runs: the points are real results (real weights
when the model has them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import runner  # noqa: E402
from core.config import preset, sweep_series  # noqa: E402
from core.paths import git_commit, lab_home, resolve_db  # noqa: E402
from core.store import Store  # noqa: E402


def _state_path() -> Path:
    return lab_home() / "fullgrid-state.json"


def _load_state() -> dict:
    p = _state_path()
    return json.loads(p.read_text()) if p.exists() else {}


def _save_state(state: dict) -> None:
    _state_path().write_text(json.dumps(state, indent=1) + "\n")


class Timer:
    """Wraps the packed scheduler's read-back and hand-over to time the chunk: each read-back
    interval's wall time, its packed steps and the rows in flight; hand-over time (evaluation and
    storing of finished points) is taken out of the interval it fell into."""

    def __init__(self):
        from core.packed import scheduler

        self.t0 = time.perf_counter()
        self.first_step: float | None = None
        self.last_point: float | None = None
        self.intervals: list[tuple[int, int, float]] = []  # (rows per step, steps, seconds)
        self.eval_s = 0.0
        self._last: tuple[float, int] | None = None
        self._handover = 0.0
        self.shrinks: list[tuple[int, int]] = []  # (packed step, slots after)
        self.on_point = None  # called with the summary so far whenever points are stored
        self.stop_at_rows: int | None = None  # stop once the packer shrinks to this many rows
        S = scheduler.Scheduler
        timer = self
        read_back, hand_over, step, shrink = S.read_back, S.hand_over, S.step, S.shrink_packer

        def timed_step(sched):
            if timer.first_step is None:
                timer.first_step = time.perf_counter()
                timer._last = (timer.first_step, sched.step_no)
            return step(sched)

        def timed_read_back(sched):
            rows = len(sched.live)  # rows per step: one per slot, idle slots padded
            had = bool(sched.pending)
            read_back(sched)
            if had and timer._last is not None:  # read_back waited for those steps' losses
                now = time.perf_counter()
                t, n = timer._last
                steps = sched.step_no - n
                if steps > 0:
                    timer.intervals.append((rows, steps, now - t - timer._handover))
                timer._last, timer._handover = (now, sched.step_no), 0.0

        def timed_hand_over(sched):
            t = time.perf_counter()
            n_live = sum(x is not None for x in sched.live)
            hand_over(sched)
            dt_ = time.perf_counter() - t
            if dt_ > 0.01 or n_live != sum(x is not None for x in sched.live):
                timer.eval_s += dt_
                timer._handover += dt_
                timer.last_point = time.perf_counter()
                if timer.on_point is not None:  # a record that survives a killed command
                    timer.on_point(timer.summary(timer.last_point))

        def timed_shrink(sched):  # its time stays in the interval: one-time work
            shrink(sched)
            timer.shrinks.append((sched.step_no, sched.packer.slots))
            if timer.stop_at_rows and sched.packer.slots <= timer.stop_at_rows:
                # the stop a `timeout` would send: checked before the next step, so the
                # checkpoint is saved before the smaller packer compiles
                os.kill(os.getpid(), signal.SIGTERM)

        S.step, S.read_back, S.hand_over, S.shrink_packer = (
            timed_step,
            timed_read_back,
            timed_hand_over,
            timed_shrink,
        )

    def summary(self, end: float) -> dict:
        by_rows: dict[int, list[float]] = {}
        for rows, steps, sec in self.intervals:
            by_rows.setdefault(rows, []).append(sec / steps * 1000)
        steady = {r: statistics.median(v) for r, v in by_rows.items()}
        train_s = sum(sec for _, _, sec in self.intervals)
        steady_s = sum(steady[r] * steps / 1000 for r, steps, _ in self.intervals)
        first = self.first_step or end
        return {
            "setup_s": round(first - self.t0, 1),  # model load, base measurement (not counted)
            "wall_s": round(end - first, 1),  # first training step -> end: what the grid counts
            "eval_s": round(self.eval_s, 1),
            "train_s": round(train_s, 1),
            # training time above each width's median step: compiling, graph captures, shrinks
            "one_time_s": round(train_s - steady_s, 1),
            "steps": sum(steps for _, steps, _ in self.intervals),
            "ms_per_step_by_rows": {str(r): round(v, 2) for r, v in sorted(steady.items())},
            "steps_by_rows": {
                str(r): sum(s for rr, s, _ in self.intervals if rr == r) for r in sorted(by_rows)
            },
            "shrinks": self.shrinks,
        }


def _chunk(
    store: Store, run_ids: list[str], state: dict, kind: str, stop_at_rows: int | None = None
) -> int:
    timer = Timer()
    timer.stop_at_rows = stop_at_rows
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    chunks = state.setdefault("chunks", [])
    chunks.append({"kind": kind, "started": started, "status": "running"})

    def record(summary: dict, status: str = "killed before its end (last record: a point stored)"):
        done = sum(len(store.finished_points(r)) for r in state["run_ids"])
        chunks[-1] = {"kind": kind, "started": started, "status": status, "points_stored": done}
        chunks[-1].update(summary)
        _save_state(state)

    # Until the chunk ends, its record is the summary at its last stored point: a command killed
    # (e.g. by a machine's time limit) before its stop could save still counts what it stored.
    timer.on_point = record
    status = runner.run_foreground_group(store, run_ids, _printer())
    record(timer.summary(time.perf_counter()), status)
    chunk = chunks[-1]
    print(json.dumps(chunk), flush=True)
    return 0 if status in ("done", "cancelled") else 1


def _printer():
    last = [0.0]

    def show(i, ev):
        t = ev["type"]
        if t == "point_done":
            m = ev.get("metrics", {})
            print(
                f"{time.strftime('%H:%M:%S')} run {i} scale {ev['scale']} seed {ev['seed']} "
                f"{ev['status']} deg {m.get('degradation_pct', float('nan')):.2f}%",
                flush=True,
            )
        elif t == "phase" and "scale" not in ev:
            print(f"{time.strftime('%H:%M:%S')} run {i}: {ev['phase']}", flush=True)
        elif t == "step" and time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(
                f"{time.strftime('%H:%M:%S')} run {i} scale {ev['scale']} step "
                f"{ev['step']}/{ev['total']}",
                flush=True,
            )

    return show


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["start", "resume", "report"])
    ap.add_argument("--precision", default="bf16", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--scales", default=None, help="comma list (default: the preset's 11)")
    ap.add_argument("--domains", default="legal,financial")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--run-device", default="cuda", help="where to train (cpu: a smoke test)")
    ap.add_argument("--device", default=None, help="report: the device's name")
    ap.add_argument("--command", action="append", default=[], help="report: commands run")
    ap.add_argument("--commit", default=None, help="report: the commit measured")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument(
        "--stop-at-rows",
        type=int,
        default=None,
        help="stop (checkpoint saved) once the packer shrinks to this many rows or fewer",
    )
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    store = Store(resolve_db(None))
    state = _load_state()
    if a.cmd == "start":
        if state.get("run_ids"):
            raise SystemExit(f"a grid is already under way here ({_state_path()}): resume it")
        over = dict(
            precision=a.precision,
            seeds=tuple(int(x) for x in a.seeds.split(",")),
            model=a.model,
            device=a.run_device,
            trainer="packed",
        )
        if a.scales:
            over["scales"] = tuple(int(x) for x in a.scales.split(","))
        n = len(a.domains.split(",")) * len(preset("paper-000", **over).points())
        base = preset("paper-000", pack_slots=n, **over)  # every point starts at once
        specs = sweep_series(base, domains=tuple(a.domains.split(",")))
        ids = [runner.create_run(store, s, status="running") for s in specs]
        state = {"run_ids": ids, "precision": a.precision, "commit": git_commit(), "chunks": []}
        _save_state(state)
        runner.install_stop_signals()
        return _chunk(store, ids, state, "start", a.stop_at_rows)
    if a.cmd == "resume":
        ids = [
            r
            for r in state["run_ids"]
            if len(store.finished_points(r)) < len(store.get_spec(r).points())
        ]
        if not ids:
            print("every point is stored: nothing to resume")
            return 0
        for r in ids:
            runner.prepare_resume(store, r)
        runner.install_stop_signals()
        return _chunk(store, ids, state, "resume", a.stop_at_rows)
    return _report(store, state, a)


def _report(store: Store, state: dict, a) -> int:
    import torch  # noqa: F401  (versions)

    from core.models import library_versions

    chunks = state["chunks"]
    ids = state["run_ids"]
    specs = [store.get_spec(r) for r in ids]
    total = sum(len(s.points()) for s in specs)
    done = sum(len(store.finished_points(r)) for r in ids)
    by_rows: dict[str, list[float]] = {}
    for c in chunks:
        for r, ms in c["ms_per_step_by_rows"].items():
            by_rows.setdefault(r, []).append(ms)
    wall_min = sum(c["wall_s"] for c in chunks) / 60
    result = {
        "date": dt.date.today().isoformat(),
        "device": a.device,
        "gpus": 1,
        "versions": library_versions(),
        "commit": a.commit or state.get("commit"),
        "command": a.command,
        "protocol": "paper-000 (Martz 2025): batch 1, 3 epochs, lr 5e-5, LoRA r8 all-linear",
        "domains": sorted({s.domain for s in specs}),
        "scales": list(specs[0].scales),
        "seeds": list(specs[0].seeds),
        "arithmetic": state["precision"],
        "points": f"{done}/{total}",
        "complete": done == total,
        "full_grid_measured_min": round(wall_min, 2) if done == total else None,
        "measured_so_far_min": round(wall_min, 2),
        "compile_s": round(sum(c["one_time_s"] for c in chunks), 1),
        "eval_s": round(sum(c["eval_s"] for c in chunks), 1),
        "setup_s_outside_the_count": round(sum(c["setup_s"] for c in chunks), 1),
        "ms_per_step_by_rows": {r: round(statistics.median(v), 2) for r, v in by_rows.items()},
        "chunks": chunks,
        "run_ids": ids,
        "notes": (
            "wall time from each chained command's first training step to its end (the last "
            "point stored, or the stop that saved the checkpoint), summed; evaluation of every "
            "point included; model load and the base measurement of each command are not "
            "(setup_s_outside_the_count). compile_s: training time above each width's median "
            "step (compiling, CUDA-graph captures, packer shrinks). ms_per_step_by_rows: the "
            "median packed step at each number of rows in flight."
        ),
    }
    tag = (a.device or "device").split()[-1].lower()
    name = f"{result['date']}-cuda-{tag}-fullgrid-{state['precision']}.json"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
