"""The Ray backend on a local Ray (2 CPUs): same rows as the local backend, a killed worker is
retried without losing or duplicating a point, cancel stops the tasks."""

import os
import signal

import pytest
import ray  # installed with the test tools by scripts/setup.sh (extra "distributed")

from core import runner
from core.config import preset
from core.distributed import run_ray, split_units
from core.store import Store

COLS = ["scale", "seed", "status", "general_ppl_after", "degradation_pct", "domain_ppl_after"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _run(store, spec, events=lambda e: None, cancel=lambda: False):
    rid = runner.create_run(store, spec, status="running")
    sink = runner.StoreSink(store, rid, events)
    return rid, run_ray(spec, rid, store, sink, lambda: sink.should_cancel() or cancel())


def test_split_units_balances_work():
    pts = [(s, 0) for s in (50, 100, 150, 250, 500, 1000)]
    units = split_units(pts, 2)
    assert sorted(p for u in units for p in u) == sorted(pts)
    loads = [sum(p[0] for p in u) for u in units]
    assert max(loads) - min(loads) <= 500
    assert split_units(pts[:1], 4) == [[(50, 0)]]


def test_ray_backend_gives_the_local_rows(local_ray, tmp_path):
    spec = preset("tiny-test", seeds=(0, 1), spectral=False)
    local = Store(tmp_path / "local.duckdb")
    lid = runner.create_run(local, spec, status="running")
    assert runner.run_foreground(local, lid) == "done"
    distributed = Store(tmp_path / "ray.duckdb")
    rid, status = _run(
        distributed, preset("tiny-test", seeds=(0, 1), spectral=False, backend="ray")
    )
    assert status == "done"
    a = local.points_df([lid])[COLS].reset_index(drop=True)
    b = distributed.points_df([rid])[COLS].reset_index(drop=True)
    assert len(b) == 6 and list(a.status) == list(b.status)
    for c in COLS[3:]:
        assert b[c].tolist() == pytest.approx(a[c].tolist(), rel=1e-6)
    assert not distributed.generations_df(rid).empty  # base + after generations came through
    assert distributed.progress_df(rid).phase.eq("done").all()  # progress rows, as locally


def test_killed_worker_is_retried_and_no_point_is_lost_or_repeated(local_ray, tmp_path):
    # 400 samples train for seconds: the kill, sent when the driver sees that point start (it
    # drains the board every 0.5 s), must land while it trains, not after (150 was a race)
    spec = preset("tiny-test", scales=(4, 6, 400, 450), backend="ray", ray_units=2, spectral=False)
    units = split_units(list(spec.points()), 2)
    assert [(4, 0), (6, 0), (400, 0)] in units  # the unit whose worker will be killed
    store = Store(tmp_path / "kill.duckdb")
    done_by: list[tuple[int, int]] = []  # (scale, worker pid) per finished point
    killed: list[int] = []

    def on_event(ev):
        if ev["type"] == "point_done":
            done_by.append((ev["scale"], ev["pid"]))
        if ev["type"] == "point_start" and ev["scale"] == 400 and not killed:
            killed.append(ev["pid"])
            os.kill(ev["pid"], signal.SIGKILL)  # dies mid-unit: 4 and 6 done, 400 training

    rid, status = _run(store, spec, on_event)
    assert status == "done" and killed
    df = store.points_df([rid])
    assert sorted(df.scale) == [4, 6, 400, 450] and (df.status == "done").all()
    # nothing computed twice: one finished-point message per point
    assert sorted(s for s, _ in done_by) == [4, 6, 400, 450]
    pid_of = dict(done_by)
    assert pid_of[4] == pid_of[6] == killed[0]  # finished before the kill, not redone
    assert pid_of[400] != killed[0]  # the retry, in another process, trained only this one


def test_cancel_stops_the_ray_tasks(local_ray, tmp_path):
    spec = preset("tiny-test", scales=(4, 6, 100, 150, 200, 250), backend="ray", ray_units=1)
    store = Store(tmp_path / "cancel.duckdb")
    seen = []
    rid, status = _run(
        store, spec, lambda ev: seen.append(ev["type"]), lambda: "point_done" in seen
    )
    assert status == "cancelled"
    assert 1 <= len(store.points_df([rid])) < 6


def test_ray_backend_without_ray_is_a_clear_error(monkeypatch):
    import builtins

    from core.errors import ConfigError
    from core.runner import preflight

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match="distributed"):
        preflight(preset("tiny-test", backend="ray"))
