"""The mitigation planner on constructed points with a known answer; a replay sweep from the CLI
and the Launch form; the Mitigation page on an empty database and on a tiny replay sweep."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import charts, mitigation
from core.config import preset, sweep_series
from core.errors import ConfigError
from core.store import Store
from tests.conftest import ROOT

# Mean degradation (%) and domain improvement (%) per (replay, size) of a constructed family.
DEG = {0.0: {100: 5.0, 1000: 50.0}, 0.1: {100: 5.0, 1000: 20.0}, 0.3: {100: 5.0, 1000: 5.0}}
GAIN = {0.0: {100: 30.0, 1000: 60.0}, 0.1: {100: 28.0, 1000: 50.0}, 0.3: {100: 25.0, 1000: 40.0}}


def points(deg=DEG, gain=GAIN, seeds=(0, 1, 2), spread=0.0, **extra) -> pd.DataFrame:
    """One run per replay fraction; seed k gets mean + spread x (k - middle), so the mean over
    seeds is exactly the table's value."""
    rows = []
    mid = (len(seeds) - 1) / 2
    for r, by_size in deg.items():
        for n, d in by_size.items():
            for k, s in enumerate(seeds):
                rows.append(
                    dict(
                        run_id=f"run-{r:g}",
                        model="m",
                        method="lora",
                        rank=8,
                        learning_rate=1e-4,
                        domain="legal",
                        replay=r,
                        scale=n,
                        seed=s,
                        status="done",
                        degradation_pct=d + spread * (k - mid),
                        domain_improvement_pct=gain[r][n] + spread * (k - mid),
                        **extra,
                    )
                )
    return pd.DataFrame(rows)


def lr(pct):
    return math.log(1 + pct / 100)


def expected(lo_r, hi_r, d_lo, d_hi, level):
    """The fraction where degradation crosses `level`, linear in the log perplexity ratio."""
    t = (lr(level) - lr(d_lo)) / (lr(d_hi) - lr(d_lo))
    return lo_r + t * (hi_r - lo_r), t


def test_families_group_runs_that_differ_in_replay_only():
    a = points()
    other_lr = points().assign(learning_rate=5e-5, run_id="lr-" + a["run_id"])
    single = points(deg={0.0: DEG[0.0]}, gain=GAIN).assign(model="other", run_id="lonely")
    fams = mitigation.families(pd.concat([a, other_lr, single], ignore_index=True))
    assert len(fams) == 2  # the lone replay value of model "other" is no sweep
    assert {f.learning_rate for f in fams} == {1e-4, 5e-5}
    assert all(f.replays == (0.0, 0.1, 0.3) and len(f.run_ids) == 3 for f in fams)
    assert "replay 0, 0.1, 0.3" in fams[0].label() and "lora r8" in fams[0].label()
    ref = a.drop(columns=["replay"])  # the shipped reference sets without a replay column
    assert mitigation.families(ref) == []
    assert mitigation.families(pd.DataFrame()) == []


def test_grid_tables_are_the_means_over_seeds():
    pts = points(spread=2.0)
    g = mitigation.grid(pts, mitigation.families(pts)[0])
    assert g.replays == (0.0, 0.1, 0.3) and g.scales == (100, 1000)
    assert g.degradation.loc[0.1, 1000] == pytest.approx(20.0)
    assert g.improvement.loc[0.3, 1000] == pytest.approx(40.0)
    assert (g.seeds.to_numpy() == 3).all()


def test_plan_interpolates_between_measured_fractions_and_prices_it():
    pts = points(spread=0.0)
    g = mitigation.grid(pts, mitigation.families(pts)[0])
    p = mitigation.plan(g, 10.0, 1000, n_boot=50)
    want, t = expected(0.1, 0.3, 20.0, 5.0, 10.0)
    assert p.status == mitigation.ANSWER and p.bracket == (0.1, 0.3)
    assert p.replay == pytest.approx(want)  # 0.230
    assert p.improvement == pytest.approx(50.0 + t * (40.0 - 50.0))
    assert p.cost == pytest.approx(60.0 - p.improvement) and p.base_replay == 0.0
    # every seed equal: every resample gives the same answer
    assert p.replay_interval == pytest.approx((want, want))
    assert p.sizes == (1000, 1000)
    text = p.sentence()
    assert f"{want:.3g}" in text and "bootstrap over 3 seeds" in text
    assert "between the measured fractions 0.1 (+20.0 %) and 0.3 (+5.0 %)" in text
    assert f"costs {p.cost:.1f} points" in text


def test_plan_interpolates_in_log_size_between_measured_sizes():
    pts = points()
    g = mitigation.grid(pts, mitigation.families(pts)[0])
    n = math.sqrt(100 * 1000)  # halfway in log size
    p = mitigation.plan(g, 10.0, n, n_boot=20)
    # halfway in log size the log ratio is the mean of its two neighbours'
    d = {r: (math.sqrt((1 + v[100] / 100) * (1 + v[1000] / 100)) - 1) * 100 for r, v in DEG.items()}
    assert dict(p.degradation_by_replay) == pytest.approx(d)
    want, _ = expected(0.1, 0.3, d[0.1], d[0.3], 10.0)
    assert p.replay == pytest.approx(want) and p.sizes == (100, 1000)
    assert "between the measured sizes 100 and 1,000 (log size)" in p.sentence()


def test_seed_spread_gives_an_interval_around_the_answer():
    pts = points(spread=4.0)  # seeds at -4, 0, +4 around each mean
    g = mitigation.grid(pts, mitigation.families(pts)[0])
    p = mitigation.plan(g, 10.0, 1000, n_boot=300)
    lo, hi = p.replay_interval
    assert lo < p.replay < hi and lo >= 0.1 and hi <= 0.3
    lo_c, hi_c = p.cost_interval
    assert lo_c < p.cost < hi_c


def test_one_seed_answers_without_an_interval_and_says_so():
    pts = points(seeds=(0,))
    g = mitigation.grid(pts, mitigation.families(pts)[0])
    p = mitigation.plan(g, 10.0, 1000)
    assert p.status == mitigation.ANSWER and p.replay_interval is None
    assert "one seed: no interval" in p.sentence()


def test_no_replay_needed_and_at_most_and_cannot_say():
    pts = points()
    g = mitigation.grid(pts, mitigation.families(pts)[0])
    none = mitigation.plan(g, 10.0, 100)
    assert none.status == mitigation.NONE_NEEDED and none.replay == 0.0
    assert "no replay is needed" in none.sentence()

    low = mitigation.plan(g, 1.0, 1000)  # even replay 0.3 gives 5 %
    assert low.status == mitigation.CANNOT_SAY and low.replay is None
    assert "Cannot say" in low.sentence() and "the largest, 0.3, gives +5.0 %" in low.sentence()

    far = mitigation.plan(g, 10.0, 5000)  # beyond the largest measured size
    assert far.status == mitigation.CANNOT_SAY and "outside the measured sizes" in far.reason

    no_zero = points(deg={r: DEG[r] for r in (0.1, 0.3)})
    g2 = mitigation.grid(no_zero, mitigation.families(no_zero)[0])
    at_most = mitigation.plan(g2, 30.0, 1000)
    assert at_most.status == mitigation.AT_MOST and at_most.replay == 0.1
    assert "no smaller fraction was measured" in at_most.sentence()


def test_non_monotone_degradation_is_flagged():
    deg = {0.0: {100: 40.0}, 0.1: {100: 5.0}, 0.3: {100: 30.0}}
    gain = {r: {100: 10.0} for r in deg}
    pts = points(deg=deg, gain=gain)
    p = mitigation.plan(mitigation.grid(pts, mitigation.families(pts)[0]), 10.0, 100)
    assert p.status == mitigation.ANSWER and 0.0 < p.replay < 0.1
    assert "not monotone" in p.sentence() and "0.3 gives +30.0 %" in p.sentence()


def test_a_measure_in_nats_is_read_as_its_perplexity_ratio_equivalent():
    pts = points()
    pts["kl_to_base"] = np.log1p(pts["degradation_pct"] / 100)  # the same surface in nats
    g = mitigation.grid(pts, mitigation.families(pts)[0], "kl_to_base")
    assert g.degradation.loc[0.1, 1000] == pytest.approx(20.0)
    p = mitigation.plan(g, 10.0, 1000, n_boot=20)
    assert p.replay == pytest.approx(expected(0.1, 0.3, 20.0, 5.0, 10.0)[0])


def test_heatmaps_show_every_cell_and_the_curve_marks_the_answer():
    pts = points()
    g = mitigation.grid(pts, mitigation.families(pts)[0])
    fig = charts.replay_heatmap(g.degradation, "general PPL change", "lower", g.seeds, 10.0)
    hm = fig.data[0]
    assert list(hm.y) == ["0", "0.1", "0.3"] and list(hm.x) == ["100", "1,000"]
    assert hm.text[0][1] == "+50% •" and hm.text[2][1] == "+5.0%"  # at or above the level: •
    p = mitigation.plan(g, 10.0, 1000, n_boot=20)
    curve = charts.replay_curve(list(p.degradation_by_replay), 10.0, (p.replay, p.replay_interval))
    assert list(curve.data[0].x) == [0.0, 0.1, 0.3]
    assert any(s.x0 == pytest.approx(p.replay) for s in curve.layout.shapes)


# -- sweep axes: config, CLI, export, Launch form ------------------------------------------------
def test_sweep_series_gives_one_named_spec_per_combination():
    specs = sweep_series(preset("tiny-test"), replays=(0.0, 0.2), learning_rates=(5e-5, 1e-4))
    assert [(s.replay, s.learning_rate) for s in specs] == [
        (0.0, 5e-5),
        (0.0, 1e-4),
        (0.2, 5e-5),
        (0.2, 1e-4),
    ]
    assert specs[3].name == "tiny-test replay 0.2 lr 0.0001"
    assert sweep_series(preset("tiny-test"))[0].name == "tiny-test"  # nothing swept
    with pytest.raises(ConfigError, match="replay: a replay fraction appears more than once"):
        sweep_series(preset("tiny-test"), replays=(0.1, 0.1))
    with pytest.raises(ConfigError, match="replay: 11.0 is outside"):
        sweep_series(preset("tiny-test"), replays=(0.0, 11.0))
    with pytest.raises(ConfigError, match="learning_rate: 0.0 is outside"):
        sweep_series(preset("tiny-test"), learning_rates=(0.0,))


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "core", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def replay_sweep(lab_home, tmp_path_factory):
    """`run --preset tiny-test --replay 0,0.2` (two seeds, two sizes) from the CLI: (db, out)."""
    db = tmp_path_factory.mktemp("replay") / "lab.duckdb"
    r = cli(
        "run", "--preset", "tiny-test", "--scales", "4,8", "--seeds", "0,1",
        "--replay", "0,0.2", "--db", str(db),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return db, r


def test_replay_sweep_from_the_cli_stores_two_series_and_exports_both(replay_sweep, tmp_path):
    db, r = replay_sweep
    runs = Store(db).list_runs()
    assert sorted(json.loads(s)["replay"] for s in runs.spec_json) == [0.0, 0.2]
    assert sorted(runs.name) == ["tiny-test replay 0", "tiny-test replay 0.2"]
    out = tmp_path / "pts.csv"
    e = cli("export", "--db", str(db), "--format", "csv", "--out", str(out))
    assert e.returncode == 0 and "wrote 8 rows" in e.stdout, e.stderr
    exported = pd.read_csv(out)
    assert sorted(exported.replay.unique()) == [0.0, 0.2]
    assert set(exported.learning_rate) == {preset("tiny-test").learning_rate}
    assert exported.groupby("replay").size().to_dict() == {0.0: 4, 0.2: 4}


def test_lr_sweep_and_bad_replay_lists_from_the_cli(db):
    bad = cli("run", "--preset", "tiny-test", "--replay", "0,x", "--db", str(db))
    assert bad.returncode == 2 and "replay: 'x' is not a number" in bad.stderr
    dup = cli("run", "--preset", "tiny-test", "--lr", "1e-4,1e-4", "--db", str(db))
    assert dup.returncode == 2 and "a learning rate appears more than once" in dup.stderr
    ok = cli(
        "run", "--preset", "tiny-test", "--lr", "5e-5,1e-4", "--scales", "4", "--db", str(db)
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    runs = Store(db).list_runs()
    assert sorted(json.loads(s)["learning_rate"] for s in runs.spec_json) == [5e-5, 1e-4]


def _app(page, db, monkeypatch) -> AppTest:
    monkeypatch.setenv("FORGETTING_LAB_DB", str(db))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(f"pages/{page}.py")
    return at.run()


def test_launch_form_queues_one_run_per_replay_and_learning_rate(tmp_path, monkeypatch):
    import core.runner

    monkeypatch.setattr(core.runner, "spawn_worker", lambda db: None)  # queue only
    db = tmp_path / "f.duckdb"
    at = _app("launch", db, monkeypatch)
    at.selectbox[0].select("tiny-test").run()
    next(t for t in at.text_input if t.label == "Replay fraction(s)").input("0, 0.2")
    next(t for t in at.text_input if t.label == "Learning rate(s)").input("5e-5, 1e-4")
    next(b for b in at.button if b.label == "Queue run").click().run()
    assert not at.exception, at.exception
    specs = [json.loads(s) for s in Store(db).list_runs().spec_json]
    assert sorted((s["replay"], s["learning_rate"]) for s in specs) == [
        (0.0, 5e-5),
        (0.0, 1e-4),
        (0.2, 5e-5),
        (0.2, 1e-4),
    ]


def test_launch_form_names_a_bad_replay_in_its_words(tmp_path, monkeypatch):
    db = tmp_path / "g.duckdb"
    at = _app("launch", db, monkeypatch)
    at.selectbox[0].select("tiny-test").run()
    next(t for t in at.text_input if t.label == "Replay fraction(s)").input("0, 20")
    next(b for b in at.button if b.label == "Queue run").click().run()
    msgs = " ".join(e.value for e in at.error)
    assert "**Replay fraction(s)**: 20.0 is outside" in msgs, msgs
    assert Store(db).list_runs().empty


def test_page_on_an_empty_database_explains_how_to_launch_a_replay_sweep(tmp_path, monkeypatch):
    at = _app("mitigation", tmp_path / "empty.duckdb", monkeypatch)
    assert not at.exception, at.exception
    text = at.info[0].value
    assert "No replay sweep of your own yet" in text and mitigation.planner_command() in text
    # the shipped replay reference answers meanwhile
    assert "legal" in at.selectbox(key="mit_family").format_func(0)
    assert len(at.get("plotly_chart")) == 3


def test_page_answers_the_planner_question_on_a_tiny_replay_sweep(replay_sweep, monkeypatch):
    db, _ = replay_sweep
    at = _app("mitigation", db, monkeypatch)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert "replay 0, 0.2" in at.selectbox(key="mit_family").format_func(0)
    charts_ = at.get("plotly_chart")
    assert len(charts_) == 3  # degradation, improvement, the curve at N
    deg = json.loads(charts_[0].proto.spec)["data"][0]
    assert deg["y"] == ["0", "0.2"] and deg["x"] == ["4", "8"]
    answer = (at.success or at.warning)[0].value
    assert answer.startswith(("At 8 samples", "Cannot say"))
    # a size outside the measured ones: an honest "cannot say"
    at.number_input(key="mit_size").set_value(1000).run()
    assert "outside the measured sizes (4–8)" in at.warning[0].value
    # a level so high that no replay is needed
    at.number_input(key="mit_size").set_value(8).run()
    at.number_input(key="mit_level").set_value(100_000.0).run()
    assert "no replay is needed" in at.success[0].value


def test_export_reads_replay_and_learning_rate_from_the_stored_spec(db):
    import duckdb

    s = Store(db)
    s.create_run("new", preset("tiny-test", replay=0.3, learning_rate=1e-4))
    s.create_run("old", preset("tiny-test"))
    con = duckdb.connect(str(db))
    for run_id in ("new", "old"):
        con.execute(
            "INSERT INTO points (run_id, scale, seed, status) VALUES (?, 4, 0, 'done')", [run_id]
        )
    # a spec stored before replay existed has no such key
    spec = json.loads(con.execute("SELECT spec_json FROM runs WHERE run_id = 'old'").fetchone()[0])
    del spec["replay"]
    con.execute("UPDATE runs SET spec_json = ? WHERE run_id = 'old'", [json.dumps(spec)])
    con.close()
    df = s.points_df().set_index("run_id")
    assert df.loc["new", "replay"] == 0.3 and df.loc["new", "learning_rate"] == 1e-4
    assert df.loc["old", "replay"] == 0.0  # its default, which is what it trained with
    assert df.loc["old", "learning_rate"] == preset("tiny-test").learning_rate


def test_planner_answers_on_the_shipped_replay_reference():
    """The shipped replay reference (legal, 50-1,000, replay 0-0.3, 3 seeds): at 500 samples
    the answer lies between the measured fractions 0 and 0.05, with a seed interval even though
    two runs stopped before all seeds of their largest size."""
    from core import reference

    pts = reference.points()
    (fam,) = [f for f in mitigation.families(pts) if f.source == "replay_smollm2_h200"]
    assert fam.replays == (0.0, 0.05, 0.1, 0.3)
    p = mitigation.plan(mitigation.grid(pts, fam), 10.0, 500)
    assert p.status == "answer" and p.bracket == (0.0, 0.05) and 0 < p.replay < 0.05
    lo, hi = p.replay_interval
    assert lo <= p.replay <= hi
    # at 1,000 samples replay 0.3 was not reached and replay 0 has one seed: no interval, said so
    p = mitigation.plan(mitigation.grid(pts, fam), 10.0, 1000)
    assert p.replay_interval is None and "no two seeds" in p.uncertainty
    assert any("replay 0.3" in n for n in p.notes)
