"""Run lifecycle: queued -> running -> done | failed | cancelled (and 'interrupted', derived when
a running run's worker is gone). A run executes either in the foreground (CLI `run`) or in a
background worker process that outlives the browser and the app: `python -m core worker`.

One worker per database drains the queue (an advisory file lock next to the database makes sure
of it); launching a run queues it and starts a worker if none holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from . import data
from .config import RunSpec
from .errors import ConfigError, LabError, RunNotFound, StoreError
from .outbox import Event, import_spilled
from .paths import REPO_ROOT, discard_run_files, git_commit
from .store import Store, now, spec_of

log = logging.getLogger(__name__)
# The training thread waits for each progress write (~50-120 ms on a 2-core machine, one database
# connection each; py-spy on a watched quick-cpu worker: 4 % of its time at one write every 3 s).
# The app's live panel reads every 5 s (pages/_ui.REFRESH_S): writing more often shows nothing
# more. The CLI prints every step anyway.
PROGRESS_EVERY_S = 5.0
SETTINGS_ERROR = "settings: "  # the start of a failed run's error when its settings were wrong
CANCEL_POLL_S = 3.0  # when no progress write (which reads the cancel flag too) came sooner
HEARTBEAT_STALE_S = 90.0  # a running run on another host without a heartbeat this long is gone


_signalled: list[str] = []  # the name of a stop signal received, if any


def install_stop_signals() -> None:
    """Make SIGTERM (from `kill`, `timeout`, a job scheduler) stop the run in progress the way a
    cancel does: the packed trainer saves a checkpoint first, the run ends 'cancelled' and
    `resume` continues from that step. Main thread only (Python's rule for signal handlers)."""

    def handler(signum, frame):
        _signalled.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)


def stop_signalled() -> str | None:
    return _signalled[-1] if _signalled else None


# -- liveness: is a run's worker still there? -------------------------------------------------------
def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id runs on this machine (a zombie does not count)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (finished child not yet reaped) still answers signal 0.
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def effective_status(run: dict) -> str:
    """'running' in the table but the worker is gone (killed, machine rebooted) -> 'interrupted'."""
    status = run.get("status")
    if status != "running":
        return status
    if run.get("host") == socket.gethostname() and run.get("pid") and not pd.isna(run.get("pid")):
        return "running" if pid_alive(int(run["pid"])) else "interrupted"
    hb = run.get("heartbeat_at")
    if hb is None or pd.isna(hb):
        return "interrupted"
    age = (now() - pd.Timestamp(hb).to_pydatetime()).total_seconds()
    return "running" if age < HEARTBEAT_STALE_S else "interrupted"


def with_status(run: dict) -> dict:
    """A row of the runs table with its `status_effective` (liveness checked now)."""
    return {**run, "status_effective": effective_status(run)}


def runs_with_status(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table with `status_effective` (liveness checked now, for every row)."""
    runs = runs.copy()
    runs["status_effective"] = (
        [effective_status(r) for r in runs.to_dict("records")] if not runs.empty else []
    )
    return runs


def machine_busy(threshold: float = 0.75) -> str | None:
    """A sentence when this machine is already busy (1-minute load average above `threshold` of
    its cores), else None: a run started now shares the cores and takes longer than the times
    the app quotes. Call it when no run of the lab is active (an active one is load too)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None
    cores = os.cpu_count() or 1
    if load <= threshold * cores:
        return None
    return (
        f"This machine is busy (load {load:.1f} on {cores} core{'s' * (cores > 1)}): other "
        "programs share its cores, so a run takes longer than the times quoted here."
    )


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def preflight(spec: RunSpec) -> None:
    """Cheap checks that need no weights: the domain, the probe and the model exist, the LoRA
    rank and target modules fit the model's shapes (read from its config), and the run's least
    memory fits the machine (`core/memory.py`). Called before a
    run is stored, so bad input leaves the database unchanged."""
    from .models import describe_source

    data.load_domain(spec.domain)
    data.load_probe(spec.probe)
    describe_source(spec.model)
    from .models import skeleton

    model = skeleton(spec.model)
    if model is not None:
        if spec.method in ("lora", "qlora"):  # rank and target modules against its shapes
            from .methods.lora import lora_config

            lora_config(model, spec)
        if spec.backend == "local":  # a Ray cluster's workers have their own memory
            from .memory import check

            check(model, spec)
    if spec.backend == "ray":
        from .distributed import require_ray

        require_ray()
    if spec.device == "mps" and (
        spec.method == "qlora" or (spec.method == "adaptq" and spec.frozen_bits < 16)
    ):
        raise ConfigError(f"method: {spec.method} needs bitsandbytes, which does not run on mps")


def create_run(store: Store, spec: RunSpec, status: str = "queued") -> str:
    return create_runs(store, [spec], status)[0]


def create_runs(store: Store, specs: list[RunSpec], status: str = "queued") -> list[str]:
    """Check every spec, then store them all in one transaction; several form a group, which
    the worker trains together (`execute_group`)."""
    for spec in specs:  # every series is checked before any is stored
        preflight(spec)
    return _store_runs(store, specs, status)


def _store_runs(store: Store, specs: list[RunSpec], status: str) -> list[str]:
    from .models import library_versions

    run_ids: list[str] = []
    for _ in specs:
        run_id = new_run_id()
        while run_id in run_ids:
            run_id = new_run_id()
        run_ids.append(run_id)
    store.create_runs(
        list(zip(run_ids, specs)),
        status=status,
        versions=library_versions(),
        git_commit=git_commit(),
    )
    return run_ids


def group_of(store: Store, run_id: str) -> list[str]:
    """The runs queued together with this one (itself included, in their order); a run queued
    alone is a group of one. A member deleted since is left out."""
    members = (store.run_info(run_id).get("group") or {}).get("runs") or [run_id]
    alive = []
    for r in members:
        with contextlib.suppress(RunNotFound):
            store.get_run(r)
            alive.append(r)
    return alive or [run_id]


class StoreSink:
    """Turns engine events into throttled progress rows (all points in flight in one write every
    PROGRESS_EVERY_S at most) and answers 'should we stop?' from the run's cancel flag (read with
    each progress write, else polled every CANCEL_POLL_S).
    Several points can be in flight at once (the packed trainer)."""

    def __init__(self, store: Store, run_id: str, forward: Callable[[Event], None] | None = None):
        self.store, self.run_id, self.forward = store, run_id, forward
        self._pts: dict[tuple[int, int], dict] = {}
        self._last_write = 0.0
        self._last_poll = 0.0
        self._cancel = False

    def __call__(self, ev: Event) -> None:
        t = ev["type"]
        key = (ev.get("scale"), ev.get("seed"))
        if t == "point_start":
            self._pts[key] = {"buf": [], "step": 0, "total": 0, "loss": None, "phase": "training"}
            try:
                self.store.record_progress(
                    self.run_id, *key, "training", 0, 0, None, [], restart=True
                )
            except StoreError as e:
                log.warning("progress not recorded: %s", e)
        elif t == "step" and key in self._pts:
            p = self._pts[key]
            p["buf"].append((ev["step"], ev["loss"]))
            p["step"], p["total"], p["loss"] = ev["step"], ev["total"], ev["loss"]
            if time.monotonic() - self._last_write >= PROGRESS_EVERY_S:
                self._flush()
        elif t == "phase" and key in self._pts:  # a few per point: written at once
            self._pts[key]["phase"] = ev["phase"]
            self._flush(key)
        elif t == "point_done" and key in self._pts:
            self._pts[key]["phase"] = ev["status"]
            self._flush(key)
            del self._pts[key]
        elif t == "phase" and ev.get("scale") is None:  # the run's own stage (load, base)
            self._info("stage", {"phase": ev["phase"]})
        elif t == "base_done":
            self._info("timing", {"base_s": round(ev["seconds"], 2)})
        if self.forward is not None:
            self.forward(ev)

    def _info(self, key: str, value: dict) -> None:
        try:
            self.store.save_run_info(self.run_id, key, value)
        except StoreError as e:
            log.warning("run stage not recorded: %s", e)

    def _flush(self, only: tuple[int, int] | None = None) -> None:
        keys = [k for k in self._pts if only is None or k == only]
        items = [
            (*k, *(self._pts[k][f] for f in ("phase", "step", "total", "loss", "buf")))
            for k in keys
        ]
        if items:  # every point in flight in one transaction
            try:
                cancel = self.store.record_progress_many(self.run_id, items)
            except StoreError as e:  # progress is a convenience: never stop training for it
                log.warning("progress not recorded: %s", e)
            else:
                if cancel is not None:  # a Ray driver's proxy store answers None
                    self._cancel = self._cancel or bool(cancel)
                    self._last_poll = time.monotonic()
        for k in keys:
            self._pts[k]["buf"] = []
        if only is None:  # one point's phase change does not postpone the others' steps
            self._last_write = time.monotonic()

    def should_cancel(self) -> bool:
        if _signalled:
            return True
        if not self._cancel and time.monotonic() - self._last_poll >= CANCEL_POLL_S:
            self._last_poll = time.monotonic()
            self._cancel = self.store.cancel_requested(self.run_id)
        return self._cancel


def execute(store: Store, run_id: str, forward: Callable[[Event], None] | None = None) -> str:
    """Run (or continue) a run that is already marked running; record how it ended."""
    return execute_group(store, [run_id], forward and (lambda _i, ev: forward(ev)))


def execute_group(
    store: Store,
    run_ids: list[str],
    forward: Callable[[int, Event], None] | None = None,
) -> str:
    """Run (or continue) runs already marked running on one loaded model: in one packed pass
    where they can share it (`engine.run_group`). `forward(i, event)` hears run i's events.
    Each run's ending is recorded; a stop (cancel of any of them, SIGTERM) stops them all."""
    specs = [spec_of(store.get_run(r)) for r in run_ids]
    sinks = [
        StoreSink(store, r, forward and (lambda ev, i=i: forward(i, ev)))
        for i, r in enumerate(run_ids)
    ]

    def should_cancel() -> bool:
        return any([s.should_cancel() for s in sinks])  # every sink polls its own flag

    def set_all(status: str, error: str | None) -> None:
        for r in run_ids:
            store.set_status(r, status, error=error)

    try:
        for r in run_ids:
            imported = import_spilled(store, r)  # points an earlier attempt could not store
            if imported:
                log.warning("run %s: imported %d spilled point(s)", r, imported)
        if specs[0].backend == "ray":
            from .distributed import run_ray

            status = "done"
            for spec, r, sink in zip(specs, run_ids, sinks):
                status = run_ray(spec, r, store, sink, should_cancel)
                if status != "done":
                    break
        else:
            from . import engine  # torch: imported only where a run executes

            status = engine.run_group(list(zip(specs, run_ids, sinks)), store, should_cancel)
    except KeyboardInterrupt:
        set_all("cancelled", "stopped from the keyboard")
        raise
    except LabError as e:
        try:
            # A settings problem fails the same way again: say so, and offer no resume for it.
            set_all("failed", f"{SETTINGS_ERROR}{e}" if isinstance(e, ConfigError) else str(e))
        except StoreError:  # the database itself is the problem: say so where the user looks
            log.error("runs %s failed: %s", ", ".join(run_ids), e)
            raise e from None
        return "failed"
    except Exception as e:  # anything else: keep the reason, never lose finished points
        log.error("runs %s failed:\n%s", ", ".join(run_ids), traceback.format_exc())
        set_all("failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return "failed"
    for r, spec in zip(run_ids, specs):
        n_done = len(store.finished_points(r))
        if status == "cancelled" and n_done < len(spec.points()):
            why = (
                f"stopped by {stop_signalled()}; resume continues from where it stopped"
                if stop_signalled()
                else "cancelled by the user"
            )
            store.set_status(r, "cancelled", error=why)
        else:  # done (a run of a stopped group may have finished before the stop)
            failed = store.count_points(r, "failed")
            store.set_status(r, "done", error=f"{failed} point(s) failed" if failed else None)
    return status


# -- background worker ---------------------------------------------------------------------------
def _lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".worker.lock")


def worker_main(db: Path) -> int:
    """Drain the queue of `db`, oldest first, then exit: a run queued alone on its own, the
    runs queued together (`launch_group`) in one `execute_group`. Only one worker per database."""
    store = Store(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(_lock_path(db), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another worker owns this database's queue
        while True:
            run_ids = store.claim_next_group(os.getpid())
            if not run_ids:
                return 0
            log.info("worker %s runs %s", os.getpid(), " ".join(run_ids))
            execute_group(store, run_ids)
            if stop_signalled():  # asked to stop: leave the rest of the queue for the next worker
                return 0


def _reap(proc: subprocess.Popen) -> None:
    with contextlib.suppress(Exception):
        proc.wait()


def spawn_worker(db: Path) -> subprocess.Popen | None:
    """Start a detached worker (its own session: it survives the app and the browser). Returns
    None when a worker already holds the queue. A daemon thread waits for the worker, so a
    finished one does not stay a zombie until the app's server stops (a waiting thread does not
    keep the server from exiting, and the worker outlives it either way)."""
    lock = _lock_path(db)
    if lock.exists():
        with open(lock, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                return None
    logdir = db.parent / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    out = open(logdir / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log", "ab")  # noqa: SIM115 (the child owns it)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A fixed argument list: no shell, no user text.
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "worker", "--db", str(db)],
        cwd=str(REPO_ROOT),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    out.close()  # the child has its own copy
    threading.Thread(target=_reap, args=(proc,), name="reap-worker", daemon=True).start()
    return proc


def launch(store: Store, spec: RunSpec) -> str:
    """Queue a run and make sure a background worker will execute it."""
    return launch_group(store, [spec])[0]


def launch_group(store: Store, specs: list[RunSpec]) -> list[str]:
    """Queue series (e.g. `config.sweep_series`) and make sure a background worker will execute
    them. Series that can share one packed pass (`config.pack_groups`) are queued as one group,
    which the worker trains as the CLI's `run` does (`execute_group`): one packed pass where the
    method packs, else one after another on one loaded model. Returns every run id, in order."""
    from .config import pack_groups

    for spec in specs:  # every series is checked before any is stored
        preflight(spec)
    run_ids = [r for group in pack_groups(specs) for r in _store_runs(store, group, "queued")]
    spawn_worker(store.path)
    return run_ids


def cancel(store: Store, run_id: str) -> str:
    """Cancel a queued or running run, and with it the rest of its group (runs queued together
    train together: a stop of one stops them all); returns the resulting status."""
    st = effective_status(store.get_run(run_id))
    if st in ("done", "failed", "cancelled"):
        raise LabError(f"run {run_id} already ended ({st}); nothing to cancel")
    result = "cancelled"
    for r in group_of(store, run_id):
        st = effective_status(store.get_run(r))
        if st in ("queued", "interrupted"):
            store.set_status(r, "cancelled", error="cancelled by the user")
        elif st == "running":
            store.request_cancel(r)
            result = "cancelling"
    return result


def delete_run(store: Store, run_id: str) -> None:
    """Delete a run: its rows (points, evaluations, progress...) and its files (saved adapters,
    checkpoints). Refuses a queued or running run (its worker would write to a run that is gone):
    cancel it first. The one rule for the app's Runs page and `cli delete`."""
    st = effective_status(store.get_run(run_id))
    if st in ("queued", "running"):
        raise LabError(f"run {run_id} is {st}; cancel it before deleting it")
    store.delete_run(run_id)
    discard_run_files(run_id)


def can_resume(run: dict) -> bool:
    """Failed, cancelled or interrupted runs can continue, except those whose settings failed."""
    return effective_status(run) in ("failed", "cancelled", "interrupted") and not str(
        run.get("error") or ""
    ).startswith(SETTINGS_ERROR)


def prepare_resume(store: Store, run_id: str) -> None:
    run = store.get_run(run_id)
    st = effective_status(run)
    if str(run.get("error") or "").startswith(SETTINGS_ERROR):
        raise LabError(
            f"run {run_id} failed on its settings ({run['error'][len(SETTINGS_ERROR) :]}); "
            "resuming would fail again: start a new run with corrected settings"
        )
    if st in ("running", "queued"):
        raise LabError(f"run {run_id} is {st}; it does not need resuming")
    n_done = len(store.finished_points(run_id))
    spec = spec_of(run)
    if st == "done" and n_done >= len(spec.points()):
        raise LabError(f"run {run_id} is complete ({n_done} points); nothing to resume")
    # Failed points are retried; finished ones are kept and skipped.
    store.set_status(run_id, "queued", error=None, cancel_requested=False)


def resume_background(store: Store, run_id: str) -> list[str]:
    """Queue a stopped run again, with the other stopped runs of its group, so the worker
    continues them together (the CLI's `resume RUN RUN ...`: a packed group finds its
    checkpoint again). A member already complete, or queued or running, is left as it is.
    Returns the runs queued."""
    prepare_resume(store, run_id)
    queued = [run_id]
    for r in group_of(store, run_id):
        if r != run_id and _resumable(store, r):
            prepare_resume(store, r)
            queued.append(r)
    spawn_worker(store.path)
    return queued


def _resumable(store: Store, run_id: str) -> bool:
    run = store.get_run(run_id)
    if not can_resume(run):
        return False
    return len(store.finished_points(run_id)) < len(spec_of(run).points())


def run_foreground(
    store: Store, run_id: str, forward: Callable[[Event], None] | None = None
) -> str:
    return run_foreground_group(store, [run_id], forward and (lambda _i, ev: forward(ev)))


def run_foreground_group(
    store: Store, run_ids: list[str], forward: Callable[[int, Event], None] | None = None
) -> str:
    """Runs executed in this process (CLI `run`, `resume`): in one packed pass where they can
    share it."""
    for r in run_ids:
        store.set_status(
            r, "running", pid=os.getpid(), host=socket.gethostname(), cancel_requested=False
        )
    return execute_group(store, run_ids, forward)
