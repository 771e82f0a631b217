"""The whole-run progress and ETA shown on the Launch page: from measured rates only."""

from datetime import datetime, timedelta

import pandas as pd
import pytest

from core.config import preset
from core.progress import format_eta, point_steps, run_progress
from core.store import Store

T0 = datetime(2026, 1, 1, 12, 0, 0)
SPEC = preset("tiny-test", scales=(10, 20, 40), seeds=(0,))  # 1 epoch, batch size 1


def _points(rows):
    cols = ["scale", "seed", "status", "steps", "train_seconds", "eval_seconds"]
    return pd.DataFrame(rows, columns=cols)


def _progress(rows):
    cols = ["scale", "seed", "phase", "step", "total_steps", "loss", "started_at", "updated_at"]
    return pd.DataFrame(rows, columns=cols)


def test_no_eta_before_any_rate_is_measured():
    rp = run_progress(SPEC, "running", _points([]), _progress([]), {})
    assert rp.eta_s is None and rp.points_done == 0 and rp.points_total == 3
    assert "first measured steps" in format_eta(rp.eta_s)


def test_eta_from_the_point_in_flight_and_the_base_measurement():
    """Before a point has finished: the step time of the point in flight and, as the time of one
    evaluation, the base model's measurement (the same evaluation, run once)."""
    prog = _progress([(10, 0, "training", 4, 10, 2.5, T0, T0 + timedelta(seconds=2))])
    info = {"timing": {"base_s": 3.0}, "stage": {"phase": "measuring the base model"}}
    rp = run_progress(SPEC, "running", _points([]), prog, info)
    # 0.5 s per step; left: 6 + 20 + 40 steps and three evaluations of 3 s
    assert rp.eta_s == pytest.approx(66 * 0.5 + 3 * 3.0)
    assert rp.live[0].step == 4 and "training" in rp.stage
    assert 0 < rp.fraction < 1


def test_eta_uses_finished_points_once_there_are_some():
    pts = _points([(10, 0, "done", 10, 4.0, 2.0)])
    prog = _progress([(20, 0, "evaluating: perplexity (1/3)", 20, 20, 1.0, T0, T0)])
    rp = run_progress(SPEC, "running", pts, prog, {"timing": {"base_s": 99.0}})
    # 0.4 s per step from the finished point; the evaluating point has no steps left
    assert rp.eta_s == pytest.approx(40 * 0.4 + 2 * 2.0)
    assert rp.points_done == 1 and "evaluating" in rp.stage


def test_eta_follows_the_last_stored_point_and_counts_down_an_evaluation():
    """Rates from the point stored last (a machine whose load changed, a first point slowed by
    one-time work), and an evaluation in its second of three parts counts two thirds."""
    pts = _points([(10, 0, "done", 10, 9.0, 6.0), (20, 0, "done", 20, 4.0, 3.0)])
    pts["finished_at"] = [T0, T0 + timedelta(seconds=30)]
    prog = _progress([(40, 0, "evaluating: smoke test (2/3)", 40, 40, 1.0, T0, T0)])
    rp = run_progress(SPEC, "running", pts, prog, {})
    assert rp.eta_s == pytest.approx(0 * 0.2 + (2 / 3) * 3.0)
    prog = _progress([(40, 0, "training", 30, 40, 1.0, T0, T0 + timedelta(seconds=60))])
    rp = run_progress(SPEC, "running", pts, prog, {})
    assert rp.eta_s == pytest.approx(10 * 0.2 + 1 * 3.0)  # 4 s / 20 steps, not 13 s / 30


def test_points_training_together_share_their_steps():
    prog = _progress(
        [
            (10, 0, "training", 5, 10, 1.0, T0, T0 + timedelta(seconds=5)),
            (20, 0, "training", 5, 20, 1.0, T0, T0 + timedelta(seconds=5)),
            (40, 0, "training", 5, 40, 1.0, T0, T0 + timedelta(seconds=5)),
        ]
    )
    rp = run_progress(SPEC, "running", _points([]), prog, {"timing": {"base_s": 1.0}})
    assert rp.eta_s == pytest.approx(35 * 1.0 + 3 * 1.0)  # the longest, not the sum


def test_a_finished_run_is_complete():
    pts = _points([(s, 0, "done", s, 1.0, 1.0) for s in (10, 20, 40)])
    rp = run_progress(SPEC, "done", pts, _progress([]), {})
    assert rp.fraction == 1.0 and rp.points_done == 3 and rp.eta_s is None


def test_point_steps_count_replay_batches_and_epochs():
    spec = preset("tiny-test", replay=0.5, batch_size=4, epochs=2)
    assert point_steps(spec, 10) == 2 * 4  # 15 samples in batches of 4, twice


def test_a_real_run_records_its_stages_and_base_timing(tiny_run):
    path, run_id = tiny_run
    info = Store(path).run_info(run_id)
    assert info["timing"]["base_s"] > 0
    assert info["stage"]["phase"]  # the last run-level stage the engine announced


def test_a_resumed_run_counts_work_not_the_days_it_waited():
    """The bar is work done / (work done + ETA) in measured seconds: a run resumed after days
    is not shown nearly complete."""
    pts = _points([(10, 0, "done", 10, 4.0, 2.0)])
    rp = run_progress(SPEC, "running", pts, _progress([]), {})
    # done: 6 s of work; left: 20 + 40 steps at 0.4 s and two evaluations of 2 s
    assert rp.fraction == pytest.approx(6.0 / (6.0 + 60 * 0.4 + 2 * 2.0))


def test_points_done_counts_measured_points_and_names_the_others():
    """'Done' means what the sidebar and `cli list` count (measured in full); a point that failed
    or diverged ended without a result and is named by its status, not counted as done."""
    pts = _points(
        [
            (10, 0, "done", 10, 1.0, 1.0),
            (20, 0, "failed", 0, None, None),
            (40, 0, "diverged", 5, 1.0, None),
        ]
    )
    rp = run_progress(SPEC, "done", pts, _progress([]), {})
    assert rp.points_done == 1 and rp.unfinished == {"failed": 1, "diverged": 1}
    assert rp.points_text() == "1 of 3 points done (1 diverged, 1 failed)"
    fresh = run_progress(SPEC, "running", _points([]), _progress([]), {})
    assert fresh.points_text() == "0 of 3 points done"
