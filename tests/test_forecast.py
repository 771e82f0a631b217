"""The forecast: fits recover known curves, the out-of-sample choice picks the true form, the
intervals cover, and the CLI gives its JSON shape and clear errors."""

import json

import numpy as np
import pandas as pd
import pytest

from core import forecast as F
from core.analysis import ratio_to_pct
from core.cli import main

SCALES = [50, 100, 150, 250, 500, 1000]


def synthetic(fn, scales=SCALES, seeds=3, noise=0.0, rng_seed=0) -> pd.DataFrame:
    """Points whose log perplexity ratio follows fn(n), with per-seed noise in log space."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for s in scales:
        for k in range(seeds):
            y = fn(s) + rng.normal(0, noise)
            rows.append(
                {"run_id": "r", "scale": s, "seed": k, "status": "done", "degradation_pct": y}
            )
    df = pd.DataFrame(rows)
    df["degradation_pct"] = ratio_to_pct(np.exp(df["degradation_pct"]))
    return df


def power(n):
    return -1.0 + 0.5 * np.log(n)


def saturating(n):
    return 2.0 - 8.0 * np.asarray(n, float) ** -0.5


@pytest.mark.parametrize(
    "name, fn, params",
    [
        ("power law", power, (-1.0, 0.5)),
        ("exponential", lambda n: 0.1 + 0.002 * np.asarray(n, float), (0.1, 0.002)),
        ("saturating", saturating, (2.0, 8.0, 0.5)),
        ("rise and fall", lambda n: -3 + 1.5 * np.log(n) - 0.1 * np.log(n) ** 2, (-3, 1.5, -0.1)),
    ],
)
def test_each_form_recovers_its_own_noiseless_curve(name, fn, params):
    n = np.array(SCALES, float)
    c = F.fit_curve(name, n, fn(n))
    assert np.allclose(c.p, params, rtol=1e-3, atol=1e-6)
    assert np.allclose(c.y([2000, 8000]), fn(np.array([2000, 8000])), rtol=1e-3)


@pytest.mark.parametrize("truth, fn", [("power law", power), ("saturating", saturating)])
def test_model_choice_is_by_out_of_sample_error(truth, fn):
    n = np.array(SCALES, float)
    best, errs = F.choose(n, fn(n))
    assert best == truth
    assert errs[truth] == min(errs.values())
    # the choice is not by in-sample fit: the 3-parameter forms fit a power law just as well
    # in-sample, but the choice goes by error on held-out largest sizes


def test_intervals_cover_a_known_noisy_power_law():
    """Over repeated noisy draws of a known curve, the 95 % interval at 2,500-10,000 holds the
    truth most of the time (bootstrap intervals with three seeds are not exact)."""
    hits = []
    for k in range(8):
        pts = synthetic(power, seeds=3, noise=0.05, rng_seed=k)
        out = F.forecast(pts, to=10000, n_boot=60, with_backtest=False)
        for p in out["predictions"]:
            truth = float(ratio_to_pct(np.exp(power(p["scale"]))))
            hits.append(p["lo"] <= truth <= p["hi"])
    assert np.mean(hits) >= 0.75


def bends(n):
    """A power law (0.5 ln n) up to about a thousand samples that saturates beyond: the form
    switches past the fitted range, so no form fitted on <= 1,000 extrapolates it right."""
    n = np.asarray(n, float)
    return -1.0 + 0.5 * np.log(n / (1 + n / BEND))


BEND = 2000.0  # the bend shows a little inside 50-1,000; at 5,000 it would not, and the band
# would miss too: the rolling origin measures only what the measured sizes show


def _log_width(p) -> float:
    return float(np.log((1 + p["hi"] / 100) / (1 + p["lo"] / 100)))


def test_interval_covers_a_curve_that_bends_past_the_fitted_range_where_seeds_alone_do_not():
    """Fitted on 50-1,000, predicting 2,500-10,000 of a power law that saturates: the seed (and
    choice-of-form) bootstrap alone misses the truth; adding the extrapolation error measured on
    the run's own sizes (rolling origin) covers it."""
    pts = synthetic(bends, seeds=3, noise=0.01)
    targets = [2500.0, 5000.0, 10000.0]
    out = F.forecast(pts, to=10000, n_boot=200, with_backtest=False)
    ext = out["interval"]["extrapolation"]
    assert ext["measured"] and ext["residuals"] == 3 and ext["per_decade"] > 0
    assert "rolling-origin" in out["interval_note"] and "WARNING" not in out["interval_note"]
    truth = ratio_to_pct(np.exp(bends(targets)))
    preds = {p["scale"]: p for p in out["predictions"]}
    for s, t in zip(targets, truth):
        assert preds[s]["lo"] <= t <= preds[s]["hi"], (s, t, preds[s])
    # the same bootstrap without the extrapolation term (what the interval was before)
    curves, _ = F._boot_curves(pts, "degradation_pct", 200, 0)
    seeds_only = F._band(curves, np.zeros(len(curves)), 1000.0, targets)
    lo = F.from_y(np.percentile(seeds_only, 2.5, axis=0), "degradation_pct")
    hi = F.from_y(np.percentile(seeds_only, 97.5, axis=0), "degradation_pct")
    assert not all(a <= t <= b for a, t, b in zip(lo, truth, hi))


def test_intervals_widen_with_the_extrapolation_distance_and_are_deterministic():
    pts = synthetic(bends, seeds=3, noise=0.01)
    out = F.forecast(pts, to=100000, n_boot=100, with_backtest=False)
    widths = [_log_width(p) for p in out["predictions"]]
    assert all(b > a for a, b in zip(widths, widths[1:])), widths
    assert widths[-1] > 3 * widths[0]
    again = F.forecast(pts, to=100000, n_boot=100, with_backtest=False)
    assert again["predictions"] == out["predictions"]


def test_too_few_sizes_to_measure_the_extrapolation_error_is_said_not_invented():
    pts = synthetic(power, scales=[50, 100, 250, 500, 1000], noise=0.02)
    out = F.forecast(pts, to=10000, n_boot=60, with_backtest=False)
    ext = out["interval"]["extrapolation"]
    assert not ext["measured"] and ext["per_decade"] is None and ext["residuals"] == 1
    assert "too few measured sizes" in ext["note"] and "WARNING" in out["interval_note"]
    assert out["interval_note"] in F.describe(out)


def test_forecast_threshold_crossing_when_not_yet_crossed():
    pts = synthetic(power, noise=0.02)  # +18 % at 1,000 (log ratio 2.45)... level far above it
    out = F.forecast(pts, to=50000, level=3000, n_boot=60, with_backtest=False)
    truth = float(np.exp((np.log(31) + 1.0) / 0.5))  # log(1 + 3000/100) = -1 + 0.5 ln n
    t = out["threshold"]
    assert t is not None and t["lo"] <= truth <= t["hi"]
    assert abs(t["scale"] - truth) / truth < 0.1
    crossed = F.forecast(pts, to=50000, level=10, n_boot=30, with_backtest=False)
    assert crossed["threshold"] is None and "already" in crossed["threshold_note"]
    # one wording (`summary`) for the page and the command line, the crossing or its note in it
    assert f"projected at {t['scale']:,.0f} samples" in F.summary(out)
    assert f"threshold: {crossed['threshold_note']}" in F.summary(crossed)
    for o in (out, crossed):
        assert F.summary(o, "\n") in F.describe(o) and "backtest: not run" in F.summary(o)


def test_other_metric_columns_are_forecast_in_their_own_units():
    pts = synthetic(power).assign(kl_to_base=lambda d: 0.01 * d["scale"] ** 0.5)
    out = F.forecast(pts, metric="kl_to_base", to=4000, level=1e9, n_boot=30)
    p4000 = out["predictions"][-1]
    assert out["metric"] == "kl_to_base" and p4000["scale"] == 4000
    assert p4000["lo"] <= p4000["pct"] <= p4000["hi"]
    assert abs(p4000["pct"] - 0.01 * 4000**0.5) < 0.1


def test_backtest_holds_out_the_largest_sizes_and_scores_them():
    pts = synthetic(power, scales=SCALES + [2500, 5000], noise=0.02)
    bt = F.backtest(pts, upto=1000, n_boot=40)
    assert [r["scale"] for r in bt["held_out"]] == [2500, 5000]
    assert bt["model"] == "power law" and bt["abs_error_log"] < 0.1
    assert 0.0 <= bt["coverage"] <= 1.0


def test_too_few_sizes_and_a_bad_target_are_refused():
    with pytest.raises(F.ForecastError, match="at least 4"):
        F.forecast(synthetic(power, scales=[50, 100, 150]))
    with pytest.raises(F.ForecastError, match="--to"):
        F.forecast(synthetic(power), to=500)
    with pytest.raises(F.ForecastError, match="--metric"):
        F.forecast(synthetic(power), metric="nope")


REF_LEGAL = "ref:20261123-164355-f38670"


def test_cli_json_shape_on_a_reference_run(capsys, db):
    assert (
        main(["forecast", REF_LEGAL, "--to", "50000", "--json", "--boot", "20", "--db", str(db)])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert {"run_id", "metric", "model", "predictions", "threshold", "backtest"} <= set(out)
    assert out["run_id"] == REF_LEGAL and out["metric"] == "degradation_pct"
    assert out["predictions"][-1]["scale"] == 50000
    assert all({"scale", "pct", "lo", "hi"} == set(p) for p in out["predictions"])
    assert out["interval"]["extrapolation"]["measured"] and out["interval_note"]
    assert out["threshold"] is None  # legal is above 10 % from its first size
    assert out["backtest"]["fit_upto"] == 2500 and len(out["backtest"]["held_out"]) == 2


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["nope"], "no run with id 'nope'"),
        (["ref:nope"], "no reference run"),
        ([REF_LEGAL, "--to", "abc"], "--to must be a number"),
        ([REF_LEGAL, "--to", "500"], "--to must be larger"),
        ([REF_LEGAL, "--metric", "foo"], "--metric"),
    ],
)
def test_cli_bad_input_gives_one_clear_line(capsys, db, args, fragment):
    assert main(["forecast", *args, "--boot", "20", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and fragment in err and "\n" not in err


def test_threshold_page_draws_a_labelled_forecast_band_with_its_backtest(tmp_path, monkeypatch):
    """On an empty database the page shows the reference runs; ticking the forecast adds a band
    labelled "forecast" beyond the last measured size, with the backtest's error beside it."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    monkeypatch.setenv("FORGETTING_LAB_DB", str(tmp_path / "empty.duckdb"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/threshold.py")
    at.run()
    at.checkbox(key="fc_show").check().run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Forecast (a projection, not measured)" in captions and "backtest (fit on" in captions
    import json as _json

    fig = _json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name", "") for t in fig["data"]]
    assert any("forecast (" in n and "backtest" in n for n in names)
    notes = [a.get("text", "") for a in fig["layout"].get("annotations", [])]
    assert any(n.startswith("forecast") for n in notes)
    xs = [x for t in fig["data"] if "forecast (" in t.get("name", "") for x in t["x"]]
    assert max(xs) == 50000
