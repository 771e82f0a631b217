"""The Ray backend: a sweep split into work units that run as Ray tasks, anywhere on a cluster,
while one process here (the driver) owns the database.

- A work unit is a list of (scale, seed) points. Each unit is one Ray task that loads the model,
  measures the base and trains its points with the local engine, unchanged (packed on a GPU).
- Workers never open the database. They push their writes (finished points, progress events,
  base generations, method facts) to a `Board` actor; the driver drains it about twice a second
  and writes through its `Store`: one writer, as with the local backend.
- Faults: a unit whose worker process dies is retried by Ray (`max_retries`). The retry asks the
  board which points are already finished and skips them, so no point is computed or stored
  twice (and a point written twice would replace itself: writes are keyed by run, scale, seed).
- Cancel: the driver polls the run's cancel flag and cancels the pending tasks (`ray.cancel`).

Ray is an optional dependency (`pip install '.[distributed]'`); nothing here imports it at
module level.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

from .config import RunSpec
from .errors import ConfigError
from .outbox import Event, PointWriter
from .paths import lab_home
from .store import PointResult, Store

DRAIN_EVERY_S = 0.5
PUSH_EVERY_S = 0.5
MAX_RETRIES = 3
# what a worker needs from the driver's environment (lab home, model folders, offline flags)
ENV_KEYS = ("FORGETTING_LAB_HOME", "FORGETTING_LAB_MODEL_DIRS", "HF_HUB_OFFLINE", "HF_HOME")


def require_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "backend 'ray' needs Ray: pip install '.[distributed]' (or choose backend 'local')"
        ) from None
    return ray


def split_units(points: list[tuple[int, int]], n: int) -> list[list[tuple[int, int]]]:
    """Deal points to n units, largest first, each to the unit with the least work so far
    (work ~ dataset size), so units finish at about the same time."""
    n = max(1, min(n, len(points)))
    units: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    load = [0] * n
    for p in sorted(points, key=lambda p: -p[0]):
        i = load.index(min(load))
        units[i].append(p)
        load[i] += p[0]
    return [sorted(u) for u in units if u]


class _Board:
    """A Ray actor: the mailbox between workers and the driver, and the ledger of finished
    points that retried units consult."""

    def __init__(self, done):
        self.queue: list = []
        self.done = {tuple(p) for p in done}

    def push(self, msgs: list) -> None:
        for m in msgs:
            if m[0] == "point" and m[2].status in ("done", "diverged", "stopped"):
                self.done.add((m[2].scale, m[2].seed))
        self.queue.extend(msgs)

    def drain(self) -> list:
        q, self.queue = self.queue, []
        return q

    def finished(self) -> set:
        return set(self.done)


class _BoardStore:
    """What a worker's engine sees as its store: reads come from the board, writes go to it."""

    def __init__(self, board, ray):
        self.board, self.ray = board, ray
        self.buf: list = []
        self.last = 0.0
        self.pid = os.getpid()

    def send(self, *msg, now: bool = False) -> None:
        self.buf.append(msg)
        if now or time.monotonic() - self.last >= PUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.ray.get(self.board.push.remote(self.buf))
            self.buf = []
        self.last = time.monotonic()

    # the Store methods the engine calls
    def set_status(self, run_id, status, error=None, **fields):
        self.send("status", fields.get("device", ""))

    def finished_points(self, run_id):
        return self.ray.get(self.board.finished.remote())

    def save_base_generations(self, run_id, gens):
        self.send("base_gens", gens)

    def save_run_info(self, run_id, key, value):
        self.send("info", key, value)

    def save_point(self, run_id, result: PointResult):
        self.send("point", self.pid, result, now=True)

    def event(self, ev: Event) -> None:
        self.send("event", self.pid, ev, now=ev["type"] in ("point_start", "point_done"))


def _unit(spec_dict: dict, run_id: str, points: list, board, env: dict) -> int:
    """One work unit, run inside a Ray worker. Returns the worker's pid."""
    import ray

    os.environ.update(env)
    from .engine import run_sweep

    spec = RunSpec.from_dict(spec_dict)
    out = _BoardStore(board, ray)
    try:
        run_sweep(spec, run_id, out, out.event, only=[tuple(p) for p in points])
    finally:
        out.flush()
    return os.getpid()


def _concurrency(ray, spec: RunSpec) -> tuple[int, float]:
    """(units that fit at once, GPUs per unit) from the cluster's resources."""
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    if gpus > 0 and spec.device != "cpu":
        return max(1, math.floor(gpus / spec.ray_gpus_per_unit + 1e-9)), spec.ray_gpus_per_unit
    return max(1, int(res.get("CPU", 1))), 0.0


def run_ray(
    spec: RunSpec,
    run_id: str,
    store: Store,
    events: Callable[[Event], None] = lambda e: None,
    should_cancel: Callable[[], bool] = lambda: False,
    num_cpus: int | None = None,
) -> str:
    """Run the unfinished points of a run on Ray; return 'done' or 'cancelled'. Raises when a
    unit still fails after its retries (its finished points are kept)."""
    ray = require_ray()
    started_here = False
    if not ray.is_initialized():
        address = spec.ray_address or os.environ.get("RAY_ADDRESS") or None
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
        started_here = True
    try:
        return _drive(ray, spec, run_id, store, events, should_cancel)
    finally:
        if started_here:
            ray.shutdown()


def _drive(ray, spec, run_id, store, events, should_cancel) -> str:
    done = store.finished_points(run_id)
    todo = [p for p in spec.points() if p not in done]
    events({"type": "plan", "points": len(spec.points()), "todo": len(todo)})
    if not todo:
        return "done"
    fit, gpus = _concurrency(ray, spec)
    units = split_units(todo, spec.ray_units or fit)
    board = ray.remote(_Board).options(num_cpus=0).remote(sorted(done))
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    env["FORGETTING_LAB_HOME"] = str(lab_home())
    task = ray.remote(_unit).options(num_cpus=1, num_gpus=gpus, max_retries=MAX_RETRIES)
    pending = [task.remote(spec.to_dict(), run_id, u, board, env) for u in units]
    store.set_status(run_id, "running", device=f"ray: {len(units)} unit(s), {gpus:g} GPU each")
    events({"type": "phase", "phase": f"running {len(units)} work unit(s) on Ray"})
    errors: list[str] = []
    writer = PointWriter(store, run_id, events)  # buffers points if the database fails

    def apply(msgs):
        for m in msgs:
            kind = m[0]
            if kind == "event":
                events({**m[2], "pid": m[1]})
            elif kind == "point":
                writer.save(m[2])
            elif kind == "base_gens":
                store.save_base_generations(run_id, m[1])
            elif kind == "info":
                store.save_run_info(run_id, m[1], m[2])

    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=DRAIN_EVERY_S)
        apply(ray.get(board.drain.remote()))
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as e:  # the unit failed for good (after retries)
                errors.append(str(e).strip().splitlines()[-1][:300])
        if should_cancel():
            for ref in pending:
                ray.cancel(ref, force=True)
            apply(ray.get(board.drain.remote()))
            writer.close()
            return "cancelled"
    apply(ray.get(board.drain.remote()))
    writer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} Ray work unit(s) failed: {errors[0]}")
    return "done"
