"""Where finished points go on their way to the database: `PointWriter` stores each one as it
finishes and, while the database refuses writes (disk full, file unwritable), keeps them in
memory, retries, pauses the run at its end and finally spills them to JSON files under
`pending/` that `resume` imports first. The local engine and the Ray driver both write through
it. No SQL here: it calls `Store.save_point`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from .errors import StoreError
from .paths import lab_home
from .store import PointResult, Store

Event = dict  # what the engine reports as it goes ({"type": "step", ...})
STORE_RETRY_S = 600.0  # how long a run waits for an unwritable database before spilling


def spill_dir() -> Path:
    return lab_home() / "pending"


def spill_points(run_id: str, results: list[PointResult]) -> Path:
    """Write finished points the database did not take to a JSON file (imported on resume)."""
    spill_dir().mkdir(parents=True, exist_ok=True)
    path = spill_dir() / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([dataclasses.asdict(r) for r in results]))
    tmp.replace(path)
    return path


def import_spilled(store: Store, run_id: str) -> int:
    """Store points an earlier attempt had to spill; returns how many. A file is removed only
    after all its points are in the database."""
    n = 0
    for path in sorted(spill_dir().glob(f"{run_id}-*.json")):
        for d in json.loads(path.read_text()):
            d["checks"] = [tuple(c) for c in d.get("checks", [])]
            store.save_point(run_id, PointResult(**d))
            n += 1
        path.unlink()
    return n


class PointWriter:
    """Stores finished points; when the database cannot be written (disk full, file
    unwritable), keeps them in memory and tries again with the next point and at the end."""

    def __init__(self, store, run_id: str, events: Callable[[Event], None]):
        self.store, self.run_id, self.events = store, run_id, events
        self.pending: list[PointResult] = []

    def save(self, result: PointResult) -> None:
        self.pending.append(result)
        self.flush()

    def flush(self) -> bool:
        while self.pending:
            try:
                self.store.save_point(self.run_id, self.pending[0])
            except StoreError as e:
                self.events(
                    {"type": "storage_error", "message": str(e), "pending": len(self.pending)}
                )
                return False
            self.pending.pop(0)
        return True

    def close(self) -> None:
        """Write what is still buffered: retry for up to STORE_RETRY_S (the run pauses, e.g.
        while disk space is freed), then spill it to a JSON file that `resume` imports, and
        fail with one clear sentence. Finished points are never dropped silently."""
        deadline = time.monotonic() + STORE_RETRY_S
        delay = 1.0
        while not self.flush():
            if time.monotonic() >= deadline:
                break
            self.events({"type": "phase", "phase": "paused: the database cannot be written"})
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 30.0)
        if not self.pending:
            return
        n = len(self.pending)
        try:
            path = spill_points(self.run_id, self.pending)
        except OSError as e:
            raise StoreError(
                f"the database cannot be written and {n} finished point(s) could not be saved "
                f"anywhere ({e.strerror or e}); they are lost"
            ) from None
        self.pending = []
        raise StoreError(
            f"the database cannot be written: {n} finished point(s) are kept in {path}; free "
            "space or fix the file, then `resume` the run: it imports them first"
        )
