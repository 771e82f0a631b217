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
