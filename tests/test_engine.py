import os
import signal
import time

import pandas as pd
import pytest
import torch

from core import data, runner
from core.config import preset
from core.engine import adapter_abspath
from core.errors import LabError
from core.store import Store


def test_tiny_sweep_writes_expected_rows(tiny_run):
    path, run_id = tiny_run
    s = Store(path)
    run = s.get_run(run_id)
    assert run["status"] == "done" and not run["error"]
    pts = s.points_df([run_id])
    assert sorted(zip(pts.scale, pts.seed)) == [(4, 0), (4, 1), (8, 0), (8, 1), (16, 0), (16, 1)]
    assert (pts.status == "done").all()
    assert pts.general_ppl_before.nunique() == 1  # the base is measured once
    assert pts.degradation_pct.notna().all() and pts.domain_improvement_pct.notna().all()
    assert pts.mc_acc_before.between(0, 1).all() and pts.mc_acc_after.notna().all()
    # domain perplexity falls after training on the domain
    assert (pts.domain_ppl_after < pts.domain_ppl_before).all()
    losses = s.losses_df(run_id)
    assert len(losses) == sum(pts.scale)  # 1 epoch, batch size 1: one loss per sample
    gens = s.generations_df(run_id)
    assert set(gens.stage) == {"before", "after"}
    assert len(gens[gens.stage == "after"]) == 6 * 4
    evals = s.evals_df([run_id])
    assert {"general", "domain:legal", "domain:financial", "domain:medical", "domain:code"} <= set(
        evals.eval_set
    )
    assert len(s.item_nll_df(run_id)) == 6 * 8  # paper-8 probe, one row per item per point


NEW_MEASURES = [
    "general_ppl_stmt_before",
    "general_ppl_stmt_after",
    "degradation_stmt_pct",
    "kl_to_base",
    "general_ce_delta",
]


def test_sweep_stores_the_other_forgetting_measures_consistent_with_item_losses(tiny_run, tmp_path):
    """Per-statement perplexity (Martz 2025), KL to base and ΔCE are finite for every point,
    exported, and the per-statement change equals the one recomputed from the stored per-item
    losses; ΔCE equals log(ppl_after / ppl_before) (the same tokens before and after)."""
    import math

    import numpy as np
    import pandas as pd

    path, run_id = tiny_run
    s = Store(path)
    pts = s.points_df([run_id]).set_index(["scale", "seed"])
    for col in NEW_MEASURES:
        assert np.isfinite(pts[col].to_numpy(dtype=float)).all(), col
    assert (pts.kl_to_base > 0).all()
    items = s.item_nll_df(run_id)
    for (scale, seed), g in items.groupby(["scale", "seed"]):
        b = np.exp(g.nll_before / g.tokens).mean()
        a = np.exp(g.nll_after / g.tokens).mean()
        p = pts.loc[(scale, seed)]
        assert p.general_ppl_stmt_before == pytest.approx(b, rel=1e-6)
        assert p.degradation_stmt_pct == pytest.approx((a - b) / b * 100, rel=1e-6)
        want = math.log(p.general_ppl_after / p.general_ppl_before)
        assert p.general_ce_delta == pytest.approx(want, rel=1e-6, abs=1e-9)
    out = tmp_path / "export.csv"
    s.export(out, "csv", [run_id])
    assert set(NEW_MEASURES) <= set(pd.read_csv(out).columns)


def test_sweep_stores_intruder_dimensions_and_each_questions_answer(tiny_run, tmp_path):
    """Every point of a tiny sweep counts intruder dimensions (Shuttleworth et al. 2024) per
    matrix, the point's number is their sum and is exported; each multiple-choice question's
    right/wrong before and after is stored and agrees with the stored accuracies."""
    import pandas as pd

    path, run_id = tiny_run
    s = Store(path)
    spec = s.get_spec(run_id)
    pts = s.points_df([run_id]).set_index(["scale", "seed"])
    spectral = s.spectral_df([run_id])
    assert spectral.intruder_dims.notna().all()
    assert spectral.intruder_dims.between(0, spec.intruder_k).all()
    sums = spectral.groupby(["scale", "seed"]).intruder_dims.sum()
    assert (pts.intruder_dims.loc[sums.index].astype(int) == sums.astype(int)).all()
    out = tmp_path / "export.csv"
    s.export(out, "csv", [run_id])
    assert pd.read_csv(out).intruder_dims.notna().all()
    mc = s.mc_items_df(run_id)
    asked = data.spread(len(data.load_mc()), spec.mc_items)  # tiny-test: 16 of the set
    assert len(asked) == 16 and sorted(mc.item.unique()) == asked
    assert len(mc) == len(pts) * len(asked)  # every question asked, at every point
    for (scale, seed), g in mc.groupby(["scale", "seed"]):
        p = pts.loc[(scale, seed)]
        assert g.correct_before.mean() == pytest.approx(p.mc_acc_before)
        assert g.correct_after.mean() == pytest.approx(p.mc_acc_after)


def test_before_is_measured_on_the_untouched_base(tiny_run):
    """peft PR #3419's third pitfall: 'before' must come from the base model as loaded, not from
    a model that already carries (or once carried) an adapter."""
    from core import data, evaluate
    from core.methods import get_method

    path, run_id = tiny_run
    spec = Store(path).get_spec(run_id)
    probe = data.load_probe(spec.probe)
    texts = [probe[i] for i in data.spread(len(probe), spec.probe_items)]
    lm = get_method(spec.method).load(spec, torch.device("cpu"))
    fresh = evaluate.perplexity(
        lm.model, lm.tokenizer, texts, spec.eval_batch_size, spec.max_length
    )
    pts = Store(path).points_df([run_id])
    assert pts.general_ppl_before.to_numpy() == pytest.approx(fresh.ppl, rel=1e-5)
    stmt = evaluate.stmt_perplexity(fresh.item_nll, fresh.item_tokens)
    assert pts.general_ppl_stmt_before.to_numpy() == pytest.approx(stmt, rel=1e-5)


def test_saved_adapter_loads_with_peft(tiny_run):
    from peft import PeftModel

    from core.models import load_model

    path, run_id = tiny_run
    row = Store(path).points_df([run_id]).iloc[-1]
    rel = (
        Store(path)
        .query_df(
            "SELECT adapter_path FROM points WHERE run_id = ? AND scale = ? AND seed = ?",
            [run_id, int(row.scale), int(row.seed)],
        )
        .iloc[0, 0]
    )
    d = adapter_abspath(rel)
    assert (d / "adapter_model.safetensors").is_file()
    lm = load_model("tiny", "cpu")
    model = PeftModel.from_pretrained(lm.model, d)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_same_seed_same_numbers(db):
    spec = preset("tiny-test", scales=(6,))
    s = Store(db)
    a, b = (runner.create_run(s, spec, "running") for _ in range(2))
    runner.run_foreground(s, a)
    runner.run_foreground(s, b)
    pa, pb = s.points_df([a]), s.points_df([b])
    assert pa.degradation_pct[0] == pytest.approx(pb.degradation_pct[0], rel=1e-6)


def test_probe_and_question_subsets_measure_only_their_items(db):
    """A run measuring part of the probe stores each measured statement under its index in the
    whole probe; the base and every point use the same statements."""
    from core import data

    spec = preset("tiny-test", scales=(4,), probe_items=3, mc_items=5)
    s = Store(db)
    rid = runner.create_run(s, spec, "running")
    assert runner.run_foreground(s, rid) == "done"
    items = s.item_nll_df(rid)
    assert sorted(items["item"]) == [1, 4, 6] == data.spread(8, 3)  # paper-8: 8 statements
    probe = data.load_probe("paper-8")
    from core import evaluate
    from core.models import load_model

    lm = load_model("tiny", "cpu")
    whole = evaluate.perplexity(lm.model, lm.tokenizer, probe, 8, spec.max_length)
    assert list(items.sort_values("item")["nll_before"]) == pytest.approx(
        [whole.item_nll[i] for i in (1, 4, 6)], rel=1e-5
    )
    # five questions scored: accuracy is a multiple of 1/5
    acc = float(s.points_df([rid]).mc_acc_before[0])
    assert acc * 5 == pytest.approx(round(acc * 5))


def test_spread_keeps_every_topic():
    from core import data

    assert data.spread(10, 0) == list(range(10)) == data.spread(10, 10) == data.spread(10, 99)
    idx = data.spread(213, 100)
    assert len(idx) == len(set(idx)) == 100 and idx == sorted(idx)
    cats = data.probe_categories("general")
    assert {cats[i] for i in idx} == set(cats)


@pytest.mark.parametrize("batch", [1, 3])
def test_packed_sweep_stores_the_same_numbers_as_sequential(db, batch):
    """The engine's packed path (default on CUDA) writes the same points as the reference loop,
    at batch size 1 and with larger per-run batches."""
    s = Store(db)
    ids = {}
    for trainer in ("sequential", "packed"):
        spec = preset(
            "tiny-test",
            seeds=(0, 1),
            lora_dropout=0.0,
            learning_rate=1e-3,
            trainer=trainer,
            batch_size=batch,
        )
        ids[trainer] = runner.create_run(s, spec, "running")
        assert runner.run_foreground(s, ids[trainer]) == "done"
    a = s.points_df([ids["sequential"]]).set_index(["scale", "seed"])
    b = s.points_df([ids["packed"]]).set_index(["scale", "seed"])
    assert len(a) == len(b) == 6
    for col in (
        "general_ppl_after",
        "domain_ppl_after",
        "final_loss",
        "degradation_stmt_pct",
        "general_ce_delta",
        "kl_to_base",
    ):
        assert b[col].to_numpy() == pytest.approx(a[col].to_numpy(), rel=1e-3, abs=1e-5), col
    adapters = s.query_df("SELECT adapter_path FROM points WHERE run_id = ?", [ids["packed"]])
    assert all(
        (adapter_abspath(p) / "adapter_model.safetensors").is_file() for p in adapters.adapter_path
    )


def test_packed_run_stopped_mid_point_resumes_from_its_checkpoint(db, monkeypatch):
    """A packed run stopped after 5 packed steps continues from the checkpoint its stop saved
    (step 5; a crash would fall back to the periodic one of step 4) and stores exactly the
    points of an uninterrupted run; the checkpoint is gone when the run is done, and deleting a
    run removes its files."""
    import core.engine
    from core.engine import run_sweep
    from core.packed import Checkpoint
    from core.paths import adapters_dir, checkpoints_dir, discard_run_files

    monkeypatch.setattr(core.engine, "CHECKPOINT_EVERY_STEPS", 4)
    s = Store(db)
    spec = preset("tiny-test", seeds=(0, 1), trainer="packed", pack_slots=6)
    whole = runner.create_run(s, spec, "running")
    assert run_sweep(spec, whole, s) == "done"
    cut = runner.create_run(s, spec, "running")
    calls = [0]

    def stop_after_5():
        calls[0] += 1
        return calls[0] > 5

    assert run_sweep(spec, cut, s, should_cancel=stop_after_5) == "cancelled"
    ck = Checkpoint(checkpoints_dir() / cut)
    assert ck.exists() and ck.load_meta()["step"] == 5
    # the 4-sample points finished (and were stored) at step 4; 8 and 16 were in flight
    assert s.finished_points(cut) == {(4, 0), (4, 1)}
    phases = []
    assert run_sweep(spec, cut, s, events=phases.append) == "done"
    assert {"type": "phase", "phase": "resuming from the last checkpoint"} in phases
    assert not ck.exists()
    cols = ["scale", "seed", "general_ppl_after", "domain_ppl_after", "final_loss", "steps"]
    a = s.points_df([whole]).sort_values(["scale", "seed"])[cols].reset_index(drop=True)
    b = s.points_df([cut]).sort_values(["scale", "seed"])[cols].reset_index(drop=True)
    assert len(a) == 6 and a.equals(b)
    (checkpoints_dir() / f"{cut}.json").write_text("{}")
    assert (adapters_dir() / cut).is_dir()
    discard_run_files(cut)
    assert not (adapters_dir() / cut).exists() and not list(checkpoints_dir().glob(f"{cut}*"))
    assert (adapters_dir() / whole).is_dir()  # other runs' files stay


def test_deleting_any_run_of_a_group_removes_the_group_checkpoint(tmp_path, monkeypatch):
    """A group checkpoint is named after its first run id; deleting another of its runs
    removes it too (it could never be resumed without that run), and a checkpoint saved before
    the runs were recorded is found by its runs in flight. Other groups' checkpoints stay."""
    import json

    from core.paths import checkpoints_dir, discard_run_files

    monkeypatch.setenv("FORGETTING_LAB_HOME", str(tmp_path))
    ck = checkpoints_dir()
    ck.mkdir(parents=True)

    def group(name, runs=None, live=()):
        meta = {"version": 1, "step": 3, "live": [{"key": [r, 4, 0]} for r in live] + [None]}
        if runs is not None:
            meta["runs"] = runs
        (ck / f"{name}.json").write_text(json.dumps(meta))
        (ck / f"{name}.safetensors").write_bytes(b"x")

    group("a-group-111", runs=["a", "b", "c"], live=["a"])
    group("a-group-222", live=["a", "c"])  # saved before "runs" was written
    group("d-group-333", runs=["d", "e"], live=["d", "e"])
    (ck / "b.json").write_text("{}")  # the run's own checkpoint
    (ck / "x-group-444.json").write_text("not json")  # unreadable: left alone
    discard_run_files("b")
    left = sorted(f.name for f in ck.iterdir())
    assert "a-group-111.json" not in left and "a-group-111.safetensors" not in left
    assert "b.json" not in left and "a-group-222.json" in left and "d-group-333.json" in left
    discard_run_files("c")
    assert not list(ck.glob("a-group-222*"))
    discard_run_files("e")
    assert sorted(f.name for f in ck.iterdir()) == ["x-group-444.json"]


def test_series_of_several_domains_and_rates_train_in_one_packed_pass(db, monkeypatch):
    """Four series (legal/financial x two learning rates) train in ONE packed pass, each point
    as it trains apart; stopped mid-pass and resumed with the runs named in another order, the
    group continues from its checkpoint and stores the same numbers."""
    import core.engine
    import core.packed
    from core.config import sweep_series
    from core.engine import run_group
    from core.packed import Checkpoint
    from core.paths import checkpoints_dir, discard_run_files

    monkeypatch.setattr(core.engine, "CHECKPOINT_EVERY_STEPS", 4)
    s = Store(db)
    base = preset("tiny-test", trainer="packed", pack_slots=12, lora_dropout=0.0)
    specs = sweep_series(base, domains=("legal", "financial"), learning_rates=(5e-3, 2e-2))
    assert [(x.domain, x.learning_rate) for x in specs] == [
        ("legal", 5e-3),
        ("legal", 2e-2),
        ("financial", 5e-3),
        ("financial", 2e-2),
    ]
    apart = _trained_apart(s, specs)
    passes = _count_passes(monkeypatch)
    together = [runner.create_run(s, x, "running") for x in specs]
    calls = [0]

    def stop_after_5():
        calls[0] += 1
        return calls[0] > 5

    group = [(x, r, lambda e: None) for x, r in zip(specs, together)]
    assert run_group(group, s, stop_after_5) == "cancelled"
    assert passes == [12]  # 4 series x 3 scales, one pass
    ck = sorted(checkpoints_dir().glob(f"{sorted(together)[0]}-group-*.json"))
    meta = Checkpoint(ck[0].with_suffix("")).load_meta()
    assert len(ck) == 1 and meta["step"] == 5 and sorted(meta["runs"]) == sorted(together)
    assert all(s.finished_points(r) == {(4, 0)} for r in together)
    phases = []
    back = [(x, r, phases.append) for x, r in reversed(list(zip(specs, together)))]
    assert run_group(back, s) == "done"
    assert passes == [12, 8]  # the 4-sample points were stored before the stop
    assert {"type": "phase", "phase": "resuming from the last checkpoint"} in phases
    assert not list(checkpoints_dir().glob("*group*"))
    _assert_same_points(s, apart, together, 3)
    # the learning rate reached each series: the two rates end differently
    finals = [float(s.points_df([r]).final_loss.iloc[-1]) for r in together]
    assert finals[0] != pytest.approx(finals[1], rel=1e-3)
    discard_run_files(sorted(together)[0])


def test_a_group_queued_from_the_app_trains_in_one_pass_as_the_runs_apart(db, monkeypatch):
    """The Launch form's path: `runner.launch_group` queues a 2-domain sweep as one group, the
    worker claims both runs together and trains them in ONE packed pass (`execute_group`, as
    the CLI), storing the numbers each run gets apart. Stopped mid-pass, the app's resume of
    one run queues the group again and it continues from the group's checkpoint."""
    import core.engine
    import core.packed
    from core.config import sweep_series
    from core.paths import checkpoints_dir

    monkeypatch.setattr(core.engine, "CHECKPOINT_EVERY_STEPS", 4)
    monkeypatch.setattr(runner, "spawn_worker", lambda db: None)  # the worker runs here
    s = Store(db)
    base = preset("tiny-test", scales=(4, 8), trainer="packed", lora_dropout=0.0)
    specs = sweep_series(base, domains=("legal", "financial"))
    apart = _trained_apart(s, specs)
    passes = _count_passes(monkeypatch)
    queued = runner.launch_group(s, specs)
    assert len(queued) == 2 and [s.get_run(r)["status"] for r in queued] == ["queued"] * 2
    assert runner.group_of(s, queued[1]) == queued
    polls = [0]
    real_poll = runner.StoreSink.should_cancel

    def stop_after_5_steps(sink):  # each step asks both series' sinks
        polls[0] += 1
        return polls[0] > 10 or real_poll(sink)

    monkeypatch.setattr(runner.StoreSink, "should_cancel", stop_after_5_steps)
    assert runner.worker_main(db) == 0
    assert passes == [4]  # 2 series x 2 sizes, one pass
    assert [s.get_run(r)["status"] for r in queued] == ["cancelled"] * 2
    assert len(list(checkpoints_dir().glob(f"{sorted(queued)[0]}-group-*.json"))) == 1
    monkeypatch.setattr(runner.StoreSink, "should_cancel", real_poll)
    assert runner.resume_background(s, queued[1]) == [queued[1], queued[0]]
    assert runner.worker_main(db) == 0
    assert [s.get_run(r)["status"] for r in queued] == ["done"] * 2
    assert passes == [4, 2]  # the 4-sample points were stored before the stop
    assert not list(checkpoints_dir().glob("*group*"))
    _assert_same_points(s, apart, queued, 2)


def test_a_queued_group_is_claimed_and_cancelled_as_one(db, monkeypatch):
    """Runs queued together are claimed together (a run queued alone stays alone) and a cancel
    of one member cancels the group; series that cannot share a pass (two ranks) are queued as
    groups of their own."""
    from core.config import sweep_series

    s = Store(db)
    alone = runner.create_run(s, preset("tiny-test"), "queued")
    specs = sweep_series(preset("tiny-test"), domains=("legal", "financial"), ranks=(2, 4))
    monkeypatch.setattr(runner, "spawn_worker", lambda db: None)
    ids = runner.launch_group(s, specs)
    assert [(x.domain, x.lora_rank) for x in map(s.get_spec, ids)] == [
        ("legal", 2),
        ("financial", 2),
        ("legal", 4),
        ("financial", 4),
    ]
    groups = [runner.group_of(s, r) for r in ids]
    assert groups[0] == groups[1] == ids[:2] and groups[2] == groups[3] == ids[2:]
    assert runner.group_of(s, alone) == [alone]
    assert s.claim_next_group(os.getpid()) == [alone]
    assert s.claim_next_group(os.getpid()) == ids[:2]
    assert runner.cancel(s, ids[3]) == "cancelled"
    assert {s.get_run(r)["status"] for r in ids[2:]} == {"cancelled"}
    assert s.claim_next_group(os.getpid()) == []


def _wait_for(pred, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_killed_worker_resumes_without_recomputing(db):
    """SIGKILL the background worker mid-sweep: finished points stay, the run shows interrupted,
    resume skips them and no point is duplicated."""
    s = Store(db)
    spec = preset("tiny-test", scales=(4, 8, 1500))
    run_id = runner.create_run(s, spec, "queued")
    proc = runner.spawn_worker(db)
    assert proc is not None
    assert _wait_for(lambda: len(s.finished_points(run_id)) >= 2), "worker made no progress"
    assert _wait_for(lambda: not s.progress_df(run_id).query("scale == 1500").empty)
    first = s.points_df([run_id]).set_index("scale").finished_at.to_dict()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert runner.effective_status(s.get_run(run_id)) == "interrupted"
    runner.prepare_resume(s, run_id)
    assert runner.run_foreground(s, run_id) == "done"
    pts = s.points_df([run_id])
    assert sorted(pts.scale) == [4, 8, 1500]
    after = pts.set_index("scale").finished_at.to_dict()
    assert after[4] == first[4] and after[8] == first[8]
    assert s.get_run(run_id)["status"] == "done"


def test_cancel_stops_a_running_worker(db):
    s = Store(db)
    run_id = runner.launch(s, preset("tiny-test", scales=(4, 1000)))
    assert _wait_for(lambda: len(s.finished_points(run_id)) >= 1)
    assert runner.cancel(s, run_id) in ("cancelling", "cancelled")
    assert _wait_for(lambda: s.get_run(run_id)["status"] == "cancelled", 60)
    assert len(s.points_df([run_id])) == 1
    with pytest.raises(LabError, match="already ended"):
        runner.cancel(s, run_id)
    # resume finishes the rest
    runner.prepare_resume(s, run_id)
    assert runner.run_foreground(s, run_id) == "done"
    assert len(s.points_df([run_id])) == 2


def test_queued_run_cancels_at_once_and_done_run_cannot_resume(db):
    s = Store(db)
    run_id = runner.create_run(s, preset("tiny-test", scales=(4,)), "queued")
    assert runner.cancel(s, run_id) == "cancelled"
    runner.prepare_resume(s, run_id)
    runner.run_foreground(s, run_id)
    with pytest.raises(LabError, match="nothing to resume"):
        runner.prepare_resume(s, run_id)


def test_nan_loss_marks_point_diverged_packed(db, monkeypatch):
    import core.packed.scheduler

    real = core.packed.scheduler.init_from_peft  # as the scheduler calls it
    monkeypatch.setattr(core.packed.scheduler, "init_from_peft", lambda *a: real(*a) * float("nan"))
    s = Store(db)
    run_id = runner.create_run(s, preset("tiny-test", scales=(4, 6), trainer="packed"), "running")
    runner.run_foreground(s, run_id)
    pts = s.query_df(
        "SELECT status, degradation_pct, steps, error FROM points WHERE run_id = ?", [run_id]
    )
    assert (pts.status == "diverged").all() and pts.degradation_pct.isna().all()
    assert (pts.steps == 1).all() and pts.error.str.contains("nan").all()


def test_nan_loss_marks_point_diverged(db, monkeypatch):
    from core import train

    real = train.train_point

    def poisoned(model, *a, **k):
        p = next(x for x in model.parameters() if x.requires_grad)
        with torch.no_grad():
            p.fill_(float("nan"))
        return real(model, *a, **k)

    monkeypatch.setattr("core.engine.train_point", poisoned)
    s = Store(db)
    run_id = runner.create_run(s, preset("tiny-test", scales=(4,), trainer="sequential"), "running")
    runner.run_foreground(s, run_id)
    pts = s.query_df("SELECT status, degradation_pct, error FROM points WHERE run_id = ?", [run_id])
    assert pts.status[0] == "diverged" and pts.degradation_pct.isna()[0] and "nan" in pts.error[0]


def test_worker_is_its_own_session(db):
    s = Store(db)
    runner.create_run(s, preset("tiny-test", scales=(4,)), "queued")
    proc = runner.spawn_worker(db)
    try:
        assert os.getsid(proc.pid) == proc.pid  # survives the app's process group ending
    finally:
        proc.wait(timeout=120)


def test_a_group_measures_the_base_once_per_distinct_input(db, monkeypatch):
    """Two domains in one group: the general probe, the smoke-test answers and the multiple
    choice are measured on the base once; each domain's own text once; every number equals the
    one a run measured alone stores."""
    import core.engine
    from core.config import sweep_series
    from core.engine import run_group, run_sweep

    s = Store(db)
    base = preset("tiny-test", scales=(4,), eval_all_domains=False)
    specs = sweep_series(base, domains=("legal", "financial"))
    apart = [runner.create_run(s, x, "running") for x in specs]
    for x, r in zip(specs, apart):
        assert run_sweep(x, r, s) == "done"

    measured, generated, mc = [], [], []
    real_measure, real_generate, real_mc = (
        core.engine.measure,
        core.engine.evaluate.generate,
        core.engine.evaluate.mc_accuracy,
    )

    def measure(model, tok, spec, sets, before=None):
        if before is None:  # the base
            measured.append(sorted(sets))
        return real_measure(model, tok, spec, sets, before)

    def generate(model, tok, prompts, *a, **k):
        generated.append(len(prompts))
        return real_generate(model, tok, prompts, *a, **k)

    def mc_accuracy(*a, **k):
        mc.append(1)
        return real_mc(*a, **k)

    monkeypatch.setattr(core.engine, "measure", measure)
    monkeypatch.setattr(core.engine.evaluate, "generate", generate)
    monkeypatch.setattr(core.engine.evaluate, "mc_accuracy", mc_accuracy)
    together = [runner.create_run(s, x, "running") for x in specs]
    events = [[], []]
    group = [(x, r, e.append) for x, r, e in zip(specs, together, events)]
    assert run_group(group, s) == "done"
    assert measured == [["domain:legal", "general"], ["domain:financial"]]
    # base smoke test once; each point's own smoke test after training: 2 points
    assert len(generated) == 1 + 2
    assert len(mc) == 1 + 2 if base.mc_eval else mc == []
    # a series that reuses the base reports its full time (the first ETA of an evaluation)
    done = [next(ev["seconds"] for ev in e if ev["type"] == "base_done") for e in events]
    assert done[1] > 0
    cols = ["general_ppl_before", "domain_ppl_before", "mc_acc_before", "general_ppl_stmt_before"]
    for a, b in zip(apart, together):
        x = s.points_df([a])[cols].reset_index(drop=True)
        y = s.points_df([b])[cols].reset_index(drop=True)
        pd.testing.assert_frame_equal(x, y)
        ga = s.generations_df(a)
        gb = s.generations_df(b)
        assert ga[ga.stage == "before"].output.tolist() == gb[gb.stage == "before"].output.tolist()


def _trained_apart(s, specs) -> list[str]:
    """Each series trained on its own (the reference a packed group must reproduce)."""
    from core.engine import run_sweep

    apart = [runner.create_run(s, x, "running") for x in specs]
    for x, r in zip(specs, apart):
        assert run_sweep(x, r, s) == "done"
    return apart


def _count_passes(monkeypatch) -> list[int]:
    """The packed trainer's passes from now on, each as its number of runs."""
    import core.packed

    passes = []
    real = core.packed.train_packed

    def counted(*args, **kwargs):
        passes.append(len(args[3]))  # the runs of this pass
        return real(*args, **kwargs)

    monkeypatch.setattr(core.packed, "train_packed", counted)
    return passes


def _assert_same_points(s, apart, together, n: int) -> None:
    """Each series stored the same n points packed in a group as trained on its own."""
    cols = ["scale", "general_ppl_after", "domain_ppl_after", "final_loss"]
    for a, b in zip(apart, together):
        x = s.points_df([a]).sort_values("scale")[cols].reset_index(drop=True)
        y = s.points_df([b]).sort_values("scale")[cols].reset_index(drop=True)
        assert len(x) == n
        pd.testing.assert_frame_equal(x, y, rtol=1e-5)
