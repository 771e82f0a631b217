"""The Pareto explorer: the front of known points, generic metric columns, the page on an empty
database (reference only) and a populated one."""

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import charts, pareto, reference
from tests.conftest import ROOT


def test_front_keeps_only_points_no_other_point_beats_on_both():
    df = pd.DataFrame(
        {
            "degradation_pct": [10, 20, 30, 25, 10, None],  # lower is better
            "domain_improvement_pct": [5, 40, 50, 30, 2, 99],  # higher is better
        }
    )
    front = pareto.pareto_front(df, "degradation_pct", "domain_improvement_pct")
    # (25, 30) is beaten by (20, 40); (10, 2) by (10, 5); the row missing x is never on it
    assert front.tolist() == [True, True, True, False, False, False]
    flipped = pareto.pareto_front(df, "domain_improvement_pct", "degradation_pct")
    assert flipped.tolist() == front.tolist()  # the directions belong to the metrics


def test_assemble_averages_seeds_and_reads_new_metric_columns_generically():
    pts = pd.DataFrame(
        {
            "run_id": ["a", "a", "a"],
            "method": "lora",
            "rank": 8,
            "domain": "legal",
            "scale": [50, 50, 100],
            "seed": [0, 1, 0],
            "status": "done",
            "degradation_pct": [10.0, 20.0, 40.0],
            "kl_to_base": [0.1, 0.3, 0.5],
            "brand_new_delta": [1.0, 1.0, 2.0],
        }
    )
    out = pareto.assemble(pts, None, {"a": "run a"})
    row = out[out.scale == 50].iloc[0]
    assert row["degradation_pct"] == 15.0 and row["kl_to_base"] == pytest.approx(0.2)
    assert row["seeds"] == 2 and row["label"] == "run a" and row["source"] == "yours"
    cols = pareto.metric_columns(out)
    assert cols[:2] == ["degradation_pct", "kl_to_base"] and "brand_new_delta" in cols
    assert pareto.metric_label("kl_to_base") == "KL to the base model"


def test_front_table_tells_rows_of_one_run_and_size_apart_by_their_seeds_and_replay():
    pts = pd.DataFrame(
        {
            "run_id": ["a", "a", "a", "b", "b"],
            "method": "lora",
            "rank": 8,
            "domain": "legal",
            "scale": [50, 50, 100, 50, 50],
            "seed": [0, 1, 0, 2, 3],
            "status": "done",
            "replay": [0.0, 0.0, 0.0, 0.1, 0.1],
            "degradation_pct": [10.0, 20.0, 40.0, 5.0, 6.0],
            "domain_improvement_pct": [1.0, 1.0, 2.0, 1.0, 1.0],
        }
    )
    data = pareto.assemble(pts, None, {"a": "run a", "b": "run a"})
    front = pd.Series(True, index=data.index)
    t = pareto.front_table(data, front, "degradation_pct", "domain_improvement_pct")
    assert t["seed_ids"].tolist() == ["2, 3", "0, 1", "0"]
    assert t["replay"].tolist() == [0.1, 0.0, 0.0]
    assert list(t.columns[-2:]) == ["degradation_pct", "domain_improvement_pct"]
    # replay is shown only where the points differ in it; the same metric twice is one column
    same = pareto.front_table(data[data.run_id == "a"], front, "degradation_pct", "degradation_pct")
    assert "replay" not in same.columns and list(same.columns).count("degradation_pct") == 1
    # the symbol key names the replay fraction only when the points differ in it
    row = data.iloc[0]
    assert pareto.series_name(row) == "lora r8"
    assert pareto.series_name(data[data.run_id == "b"].iloc[0], True) == "lora r8 · replay 0.1"
    assert pareto.differs_in_replay(data) and not pareto.differs_in_replay(data[data.run_id == "a"])
    fig = charts.pareto_figure(data, "degradation_pct", "domain_improvement_pct", front)
    assert {t.name for t in fig.data} >= {"lora r8 · replay 0", "lora r8 · replay 0.1"}


def _app(db, monkeypatch) -> AppTest:
    monkeypatch.setenv("FORGETTING_LAB_DB", str(db))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/pareto.py")
    return at.run()


def test_page_on_an_empty_database_shows_the_reference_and_its_front(tmp_path, monkeypatch):
    at = _app(tmp_path / "empty.duckdb", monkeypatch)
    assert not at.exception, at.exception
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in fig["data"]]
    assert "Pareto front" in names and any(n and n.startswith("lora") for n in names)
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("general degradation")
    assert "on the front" in " ".join(c.value for c in at.caption)
    at.selectbox(key="pareto_y").set_value("peak_mem_mb").run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert fig["layout"]["yaxis"]["title"]["text"] == "peak memory (MB)"
    # the front's table names the seeds each row averages, and drops what makes it too wide
    front = at.dataframe[0].value
    assert {"seed_ids", "scale", "run", "degradation_pct"} <= set(front.columns)
    assert "run_id" not in front.columns and "source" not in front.columns
    # the reference's replay sets differ in replay: the symbols say so
    assert any("· replay 0.1" in (n or "") for n in names)
    at.multiselect(key="pareto_method").set_value(["full"]).run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t.get("name") for t in fig["data"]} <= {"full", "Pareto front"}
    assert at.get("download_button")


def test_page_on_a_populated_database_includes_your_runs(tiny_run, monkeypatch):
    db, run_id = tiny_run
    at = _app(db, monkeypatch)
    assert not at.exception, at.exception
    at.multiselect(key="pareto_source").set_value(["yours"]).run()
    assert not at.exception, at.exception
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    labels = [c[0] for t in fig["data"] for c in t.get("customdata", [])]
    assert labels and not any(lab.startswith("reference") for lab in labels)


def test_a_clicked_point_is_looked_up_by_its_run_and_size():
    data = pareto.assemble(
        pd.DataFrame(
            {
                "run_id": ["a", "a", "a"],
                "method": "lora",
                "rank": 8,
                "domain": "legal",
                "scale": [50, 50, 100],
                "seed": [1, 0, 0],
                "status": "done",
                "degradation_pct": [10.0, 20.0, 40.0],
            }
        ),
        pd.DataFrame(
            {
                "run_id": ["ref:r"],
                "method": "full",
                "domain": "legal",
                "scale": [50],
                "seed": [3],
                "status": "done",
                "degradation_pct": [5.0],
                "ref_set": ["some_set"],
            }
        ),
        {"a": "run a"},
    )

    def sel(*points):
        return {"selection": {"points": list(points), "point_indices": [], "box": [], "lasso": []}}

    own = pareto.picked_point(data, sel({"x": 1, "y": 2}, {"customdata": ["run a", 50, "a"]}))
    # the front line's point (no customdata) is skipped; the seeds are the point's, sorted
    assert own == pareto.PickedPoint("a", "run a", "yours", None, 50, (0, 1))
    ref = pareto.picked_point(data, sel({"customdata": ["ref:r", 50.0, "ref:r"]}))
    assert (ref.source, ref.ref_set, ref.scale, ref.seeds) == ("reference", "some_set", 50, (3,))
    assert pareto.picked_point(data, sel()) is None
    assert pareto.picked_point(data, None) is None
    # a point filtered away since the click names nothing
    assert (
        pareto.picked_point(data[data.run_id != "a"], sel({"customdata": ["x", 50, "a"]})) is None
    )


def _click(at: AppTest, run_id: str, scale: int) -> AppTest:
    """What a click on a point sends: AppTest cannot click a Plotly chart, so the chart's
    selection state is injected as the browser would report it."""
    chart = at.get("plotly_chart")[0]
    states = at._tree.get_widget_states()
    w = states.widgets.add()
    w.id = chart.proto.id
    w.string_value = json.dumps(
        {
            "selection": {
                "points": [
                    {"curve_number": 0, "point_index": 0, "customdata": ["", scale, run_id]}
                ],
                "point_indices": [0],
                "box": [],
                "lasso": [],
            }
        }
    )
    return at._run(states)


def _texts(at: AppTest) -> str:
    return " ".join(m.value for m in [*at.markdown, *at.caption])


def test_a_clicked_reference_point_shows_its_generations(tmp_path, monkeypatch):
    at = _app(tmp_path / "empty.duckdb", monkeypatch)
    assert "Click a point in the chart" in _texts(at) and not at.table
    pts = reference.points()
    row = pts[pts.ref_set == "paper000_smollm2_h200"].sort_values("scale").iloc[0]
    at = _click(at, row.run_id, int(row.scale))
    assert not at.exception, at.exception
    assert "Stored smoke-test generations" in _texts(at)
    assert "Martz 2025 protocol re-measured" in _texts(at)  # the set's title, not its file name
    shown = at.table[0].value
    assert len(shown) > 0 and shown.index[0] == "The capital of France is"
    # a reference set measured before answers were stored says so instead
    old = pts[pts.ref_set == "rank_smollm2_h100"].iloc[0]
    at = _click(at, old.run_id, int(old.scale))
    assert not at.exception, at.exception
    assert "No smoke-test answers are stored" in _texts(at) and not at.table


def test_a_clicked_point_of_your_run_shows_its_generations_per_seed(tiny_run, monkeypatch):
    db, run_id = tiny_run
    at = _app(db, monkeypatch)
    at = _click(at, run_id, 8)
    assert not at.exception, at.exception
    assert "your run" in _texts(at) and "8 samples" in _texts(at)
    assert at.selectbox(key="pareto_seed").options == ["0", "1"]
    assert len(at.table[0].value) > 0
    at.selectbox(key="pareto_seed").set_value(1).run()
    assert not at.exception, at.exception
    assert len(at.table[0].value) > 0
