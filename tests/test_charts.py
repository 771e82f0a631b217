"""Chart builders: what the figure holds, not how it looks (looks: tests/test_browser.py)."""

import pandas as pd
import pytest

from core import analysis, charts


def _points():
    rows = [("r1", sc, sd, "done", d, None) for sc, d in ((50, 5.0), (100, 40.0)) for sd in (1, 2)]
    rows += [
        ("r1", 150, 1, "stopped", None, "stopped: silent failure at step 90 (empty answers)"),
        ("r1", 150, 2, "diverged", None, "loss became nan at step 12"),
    ]
    return pd.DataFrame(
        rows, columns=["run_id", "scale", "seed", "status", "degradation_pct", "error"]
    )


def test_unfinished_points_are_marked_not_drawn_into_the_curve():
    pts = _points()
    curves = analysis.per_scale(pts)
    assert list(curves.scale) == [50, 100]  # only finished points make the curve
    fig = charts.threshold_figure(curves, {"r1": "run one"}, unfinished=pts[pts.status != "done"])
    marks = {t.name: t for t in fig.data if t.name and "not in the curve" in t.name}
    assert set(marks) == {"stopped: not in the curve", "diverged: not in the curve"}
    stopped = marks["stopped: not in the curve"]
    assert list(stopped.x) == [150] and stopped.marker.symbol == "triangle-down"
    assert "silent failure at step 90" in stopped.hovertext[0] and "run one" in stopped.hovertext[0]
    assert max(fig.layout.xaxis.tickvals) >= 150  # the ticks reach the marked size
    # without unfinished points nothing extra is drawn
    plain = charts.threshold_figure(curves, {"r1": "run one"})
    assert not any(t.name and "not in the curve" in t.name for t in plain.data)


@pytest.mark.parametrize("lo, hi", [(0.8, 300.0), (0.9, 1.4), (0.4, 2.0), (0.95, 60000.0)])
def test_ratio_ticks_never_crowd_and_keep_zero(lo, hi):
    """Tick labels of the degradation axis stay a label's height apart (they used to print
    0 %, +10 % and +20 % on top of each other on a long axis)."""
    import math

    from core.charts import _min_gap, _ratio_ticks

    vals, text = _ratio_ticks(lo, hi)
    assert "0%" in text and len(vals) >= 3
    ys = [math.log10(v) for v in vals]
    assert all(b - a >= _min_gap(lo, hi) - 1e-12 for a, b in zip(ys, ys[1:]))


def _two_runs():
    rows = [
        ("a", sc, sd, "done", d, True)
        for sc, d in ((50, 20.0), (100, 110.0), (150, 150.0))
        for sd in (1, 2)
    ]
    rows += [
        ("b", sc, sd, "done", d, sc != 150 or sd == 2)
        for sc, d in ((50, -6.0), (100, 60.0), (150, 115.0))
        for sd in (1, 2)
    ]
    return pd.DataFrame(
        rows, columns=["run_id", "scale", "seed", "status", "degradation_pct", "smoke_ok"]
    )


LABELS = {
    "a": "reference · paper-000-legal · smollm2-135m · GPU, 3 seed(s)",
    "b": "reference · paper-000-financial · smollm2-135m · GPU, 3 seed(s)",
}


def test_claimed_curves_are_told_apart_and_name_their_domain():
    from core import reference

    pts = _two_runs()
    fig = charts.threshold_figure(analysis.per_scale(pts), LABELS, paper=reference.paper_claims())
    claimed = [t for t in fig.data if t.name and t.name.startswith("claimed")]
    assert sorted(t.name.split(" (")[0] for t in claimed) == [
        "claimed, financial",
        "claimed, legal",
    ]
    styles = {(t.line.dash, t.line.color, t.marker.symbol) for t in claimed}
    assert len({s[0] for s in styles}) == len(claimed)  # every claimed curve its own dash
    assert len({s[1] for s in styles}) == len(claimed)  # and its own colour
    assert all("Martz 2025" in t.name and "seed" not in t.name for t in claimed)


def test_legend_names_keep_what_differs_and_hover_keeps_the_full_label():
    fig = charts.threshold_figure(analysis.per_scale(_two_runs()), LABELS)
    mains = [t for t in fig.data if t.mode == "lines+markers" and t.legendgroup in ("a", "b")]
    assert [t.name for t in mains] == ["paper-000-legal", "paper-000-financial"]
    assert LABELS["a"] in mains[0].hovertemplate
    assert charts.short_names([LABELS["a"]]) == ["paper-000-legal"]


def test_threshold_labels_close_together_go_to_different_rows():
    curves = analysis.per_scale(_two_runs())
    fig = charts.threshold_figure(curves, LABELS, threshold={"a": 50.0, "b": 61.0})
    notes = [a for a in fig.layout.annotations if "≈" in a.text or "≤" in a.text]
    assert len(notes) == 2 and notes[0].yshift != notes[1].yshift
    assert any(a.text.startswith("≤ 50") for a in notes)
    far = charts.threshold_figure(curves, LABELS, threshold={"a": 50.0, "b": 5000.0})
    notes = [a for a in far.layout.annotations if "≈" in a.text or "≤" in a.text]
    assert notes[0].yshift == notes[1].yshift  # far apart: one row


def test_domain_improvement_is_drawn_solid_unlike_the_fits():
    pts = _two_runs().assign(domain_improvement_pct=90.0)
    curves = analysis.per_scale(pts)
    fits = {"a": analysis.fit_growth(curves[curves.run_id == "a"].scale, [20, 110, 150])[0]}
    fig = charts.threshold_figure(
        curves, LABELS, domain_curves=analysis.per_scale(pts, "domain_improvement_pct"), fits=fits
    )
    domain = [t for t in fig.data if t.name and t.name.endswith("(domain)")]
    fit = [t for t in fig.data if t.name and " fit " in t.name]
    assert domain and all(t.line.dash in (None, "solid") for t in domain)
    assert fit and all(t.line.dash == "dash" for t in fit)


def test_failed_smoke_tests_are_marked_on_the_curve_with_the_reason():
    pts = _two_runs()
    failures = pd.DataFrame(
        [("b", 150, 1, 0, "The capital of France is", "repetition loop: 'the trial court' ×3")],
        columns=["run_id", "scale", "seed", "idx", "prompt", "reason"],
    )
    failed = analysis.smoke_failed_points(pts, failures)
    assert failed[["run_id", "scale"]].values.tolist() == [["b", 150]]
    curves = analysis.per_scale(pts)
    fig = charts.threshold_figure(curves, LABELS, smoke_failed=failed)
    mark = next(t for t in fig.data if t.name == "smoke test failed")
    mean = curves[(curves.run_id == "b") & (curves.scale == 150)]["mean"].iloc[0]
    assert list(mark.x) == [150] and mark.y[0] == pytest.approx(analysis.pct_to_ratio(mean))
    assert mark.marker.symbol not in ("circle", None)  # a distinct marker
    assert "repetition loop" in mark.hovertext[0] and "seed 1" in mark.hovertext[0]
    # a point without stored reasons (a reference run, an older run) still says why it is marked
    bare = analysis.smoke_failed_points(pts, None)
    assert analysis.NO_REASON in bare.reasons[0][0]


def test_smoke_table_puts_the_verdict_next_to_both_answers():
    gens = pd.DataFrame(
        [
            ("before", 0, "p0", " Paris.", 2, True, None),
            ("before", 1, "p1", " four.", 2, True, None),
            ("after", 0, "p0", " the the the the the the", 6, False, "one word repeated"),
        ],
        columns=["stage", "idx", "prompt", "output", "new_tokens", "ok", "reason"],
    )
    t = analysis.smoke_table(gens)
    assert list(t.columns[:4]) == ["prompt", "ok", "new_tokens", "reason"]  # visible first
    assert t.loc[0, "reason"] == "one word repeated" and not t.loc[0, "ok"]
    assert t.loc[1, "ok"] is None and t.loc[0, "base_output"] == " Paris."


def test_loss_sparkline_ticks_only_its_range():
    losses = pd.DataFrame({"step": range(1, 41), "loss": [2.31 - 0.03 * i for i in range(40)]})
    fig = charts.loss_sparkline(losses)
    assert list(fig.layout.yaxis.tickvals) == pytest.approx([2.31 - 0.03 * 39, 2.31])
    assert list(fig.layout.yaxis.ticktext) == ["1.14", "2.31"]


def test_multiple_choice_figure_has_chance_and_before_lines():
    acc = analysis.per_scale(
        pd.DataFrame(
            [("a", sc, 1, "done", v) for sc, v in ((50, 60.0), (100, 55.0))],
            columns=["run_id", "scale", "seed", "status", "mc"],
        ),
        "mc",
    )
    fig = charts.mc_figure(acc, {"a": "run a"}, {"a": 63.9})
    assert any(s.y0 == 25 and s.y1 == 25 for s in fig.layout.shapes)  # chance level
    assert any("chance" in a.text for a in fig.layout.annotations)
    before = next(t for t in fig.data if t.name and "before" in t.name)
    assert list(before.y) == [63.9, 63.9] and before.line.dash == "dot"
    assert fig.layout.yaxis.range[0] == 0


def test_phase_legend_runs_in_severity_order_with_distinct_colours():
    tables = {
        "late": pd.DataFrame(
            {
                "scale": [500, 5000],
                "mean": [300.0, 2000.0],
                "phase": ["catastrophic", "exponential"],
            }
        ),
        "early": pd.DataFrame(
            {"scale": [50, 100], "mean": [5.0, 20.0], "phase": ["safe", "threshold"]}
        ),
    }
    fig = charts.phase_timeline(tables)
    shown = [t.name for t in fig.data if t.showlegend]
    assert shown == ["safe", "threshold", "catastrophic", "exponential"]

    def rgb(h):
        return [int(h[i : i + 2], 16) for i in (1, 3, 5)]

    cols = [rgb(analysis.PHASE_COLORS[p]) for p in analysis.PHASES]
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            assert sum((a - b) ** 2 for a, b in zip(cols[i], cols[j])) ** 0.5 > 80, (i, j)


@pytest.mark.parametrize(
    "ci, t, fragment",
    [
        ((60.61, 61.30), 61.0, "60.6 – 61.3"),
        ((50.0, 50.0), 50.0, "at or below it"),
        ((120.0, float("inf")), 150.0, "not reached"),
        ((100.0, 400.0), 200.0, "100 – 400"),
        ((11.0, float("nan")), 13.0, "11 – not reached"),  # a run with 3 of 5 points
        ((float("nan"), float("nan")), 13.0, "no resample crosses"),
    ],
)
def test_threshold_interval_never_reads_like_a_bug(ci, t, fragment):
    text = analysis.describe_interval(ci, "seeds", t, 50.0)
    assert fragment in text
    assert "61 – 61" not in text and "50 – 50" not in text and "nan" not in text


def test_item_heatmap_marks_where_each_statement_first_crossed():
    import pandas as pd

    from core import charts, forgotten

    m = pd.DataFrame({10: [30.0, 1.0], 100: [200.0, 5.0]}, index=[0, 1])
    fig = charts.item_heatmap(m, forgotten.first_crossing(m, 10.0), {0: "Paris", 1: "water"})
    heat, marks = fig.data
    assert list(heat.y) == ["Paris", "water"] and list(heat.x) == ["10", "100"]
    assert list(marks.x) == ["10"] and list(marks.y) == ["Paris"]  # 'water' never crossed


def test_cross_domain_and_replay_heatmaps_share_one_signed_log_colour_scale():
    """Both heatmaps colour a percentage by sign(v)·log10(1 + |v|): the same values give the
    same colour range, and a label both colourbars show stands at the same place."""
    import math

    values = [[-40.0, 3.0], [250.0, float("nan")]]
    cross = charts.heatmap(pd.DataFrame(values, index=["a", "b"], columns=["a", "b"]), "t", "PPL")
    replay = charts.replay_heatmap(
        pd.DataFrame(values, index=[0.0, 0.1], columns=[100, 1000]), "PPL"
    )
    c, r = cross.data[0], replay.data[0]
    span = math.log10(251)  # the largest |value|, 250 %, on the signed-log scale
    for h in (c, r):
        assert (h.zmid, h.zmin, h.zmax) == (0, pytest.approx(-span), pytest.approx(span))
        assert h.z[0][0] == pytest.approx(-math.log10(41)) and h.z[1][0] == pytest.approx(span)
        assert h.colorbar.title.text == "PPL"
    at_c = dict(zip(c.colorbar.ticktext, c.colorbar.tickvals))
    at_r = dict(zip(r.colorbar.ticktext, r.colorbar.tickvals))
    assert {"0", "+10%", "+100%"} <= set(at_c) & set(at_r)
    assert all(at_c[k] == pytest.approx(at_r[k]) for k in set(at_c) & set(at_r))
    assert "+1,000%" not in at_c and "+1,000%" not in at_r  # beyond the range: no label


@pytest.mark.parametrize("rows", [1, 2])
def test_overlay_adds_what_plotlys_own_calls_add(rows):
    """The Threshold chart adds its lines, bands and labels in one step (`charts._Overlay`, for
    speed); the layout must hold what plotly's add_vline / add_hline / add_hrect /
    add_annotation on row 1 would have added, in the same order, none of the lines on an empty
    panel."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    def fig():
        return make_subplots(rows=rows, cols=1, subplot_titles=("a", "b")[:rows])

    calls = [
        ("vline", dict(x=50.0, line=dict(color="#1565c0", dash="dot", width=1.5))),
        ("hrect", dict(y0=0.7, y1=1.1, fillcolor="#2e7d32", opacity=0.07, line=dict(width=0))),
        ("annotation", dict(x=1, xref="x domain", y=0.1, text="safe", showarrow=False)),
        ("hline", dict(y=1.2, line=dict(color="#9e9e9e", width=1, dash="dashdot"))),
        ("annotation", dict(x=1.7, y=1, yref="y domain", yanchor="top", text="t", yshift=-19)),
        ("annotation", dict(x=2.0, y=0.3, text="forecast")),
    ]
    for with_data in (True, False):
        plain, fast = fig(), fig()
        if with_data:
            for f in (plain, fast):
                f.add_trace(go.Scatter(x=[10, 100], y=[1.0, 2.0]), row=1, col=1)
        ov = charts._Overlay(fast)
        for kind, kw in calls:
            kw = dict(kw)
            getattr(plain, f"add_{kind}")(**kw, row=1, col=1)
            if kind == "annotation":
                ov.annotation(**kw)
            else:
                pos = [kw.pop(k) for k in ("x", "y", "y0", "y1") if k in kw]
                getattr(ov, kind)(*pos, **kw)
        ov.apply()
        assert fast.to_plotly_json()["layout"] == plain.to_plotly_json()["layout"]
        assert len(fast.layout.shapes) == (3 if with_data else 0)


def test_a_few_sizes_are_the_ticks_themselves():
    """quick-cpu's sizes (4 … 64) are read off at their own ticks; many sizes get 1-2-5 ticks."""
    few = charts.log_x_ticks([4, 8, 16, 32, 64, 8])
    assert few["tickvals"] == [4, 8, 16, 32, 64] and few["ticktext"][-1] == "64"
    grid = [50, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000]
    many = charts.log_x_ticks(grid)
    assert 50 in many["tickvals"] and 150 not in many["tickvals"]  # 1-2-5 per decade
    assert many["ticktext"][-1] == "50,000"


def test_the_ratio_axis_ends_on_a_labelled_tick():
    """A curve reaching +348 % gets a +500 % tick inside the axis (the walk saw +200 % on top)."""
    import math

    ax = charts._ratio_axis(0.8, 4.48 * 1.25)
    top = 10 ** ax["range"][1]
    assert max(ax["tickvals"]) == pytest.approx(6.0) and top >= 6.0
    assert ax["ticktext"][-1] == charts.pct_label(500)
    assert 10 ** ax["range"][0] <= min(ax["tickvals"]) and math.isfinite(ax["range"][0])
