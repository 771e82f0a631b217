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


def test_machine_busy_says_so_only_above_the_share_of_cores(monkeypatch):
    """The Launch page warns when other programs already load the cores (a run then takes longer
    than the times quoted), from the 1-minute load average against the core count."""
    from core import runner

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (1.4, 0.0, 0.0))
    assert runner.machine_busy() is None  # 0.7 per core: not busy
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (7.9, 0.0, 0.0))
    assert "busy (load 7.9 on 2 cores)" in runner.machine_busy()

    def unavailable():
        raise OSError

    monkeypatch.setattr(runner.os, "getloadavg", unavailable)
    assert runner.machine_busy() is None
