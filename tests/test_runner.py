"""The background worker's process lifecycle as seen from the app's process."""

import time
from pathlib import Path

from core import runner


def _state(pid: int) -> str | None:
    """The process state letter from /proc (Z = zombie), None when the pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def test_finished_worker_is_reaped_not_left_a_zombie(tmp_path):
    """A worker with nothing to do exits at once; the app never waits for it, yet it must not
    stay a zombie until the server stops."""
    db = tmp_path / "lab.duckdb"
    proc = runner.spawn_worker(db)
    assert proc is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and _state(proc.pid) not in (None,):
        time.sleep(0.2)
    assert _state(proc.pid) is None, f"worker {proc.pid} left in state {_state(proc.pid)}"
    deadline = time.monotonic() + 5  # the reaper thread sets it just after the wait returns
    while proc.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.returncode == 0  # collected by the reaper thread, not by this test
