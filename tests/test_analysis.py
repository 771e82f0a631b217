import numpy as np
import pandas as pd
import pytest

from core import analysis


def test_interpolation_is_log_space_and_labelled():
    s, d = [100, 1000], [0.0, 900.0]  # ratio 1 -> 10
    mid = analysis.interpolate(s, d, 316.2278)
    assert mid["kind"] == "interpolated" and mid["value"] == pytest.approx(
        216.2, abs=0.5
    )  # ratio sqrt(10)
    assert analysis.interpolate(s, d, 1000)["kind"] == "measured"
    with pytest.raises(ValueError):
        analysis.interpolate(s, d, 5000)


def test_threshold_lands_where_log_interpolation_says():
    # ratio 1.0 at 100, 1.21 at 400: ratio 1.1 is halfway in log ratio, so at sqrt(100*400) = 200
    assert analysis.threshold_scale([100, 400], [0.0, 21.0], 10.0) == pytest.approx(200, rel=1e-6)
    assert analysis.threshold_scale([50, 100], [1.0, 2.0], 10.0) is None
    assert analysis.threshold_scale([50, 100], [30.0, 60.0], 10.0) == 50
    assert analysis.largest_safe_scale([50, 100, 150], [1, 5, 40], 10.0) == 100


@pytest.mark.parametrize(
    "pct, phase",
    [
        (-13, "safe"),
        (9.9, "safe"),
        (38, "threshold"),
        (163, "catastrophic"),
        (3671, "exponential"),
        (17768, "collapse"),
    ],
)
def test_phases_follow_seed_000_defaults(pct, phase):
    assert analysis.classify(pct) == phase


def test_cutoffs_must_increase():
    with pytest.raises(ValueError):
        analysis.validate_cutoffs((10, 5, 100, 1000))


def test_pure_exponential_is_fitted_as_exponential():
    n = np.array([50, 100, 200, 400, 800, 1600])
    d = (np.exp(0.1 + 0.002 * n) - 1) * 100
    best = analysis.fit_growth(n, d)[0]
    assert best.name == "exponential" and best.r2 > 0.999
    assert best.params["b"] == pytest.approx(0.002, rel=1e-6)


def test_power_law_and_linear_are_recognised():
    n = np.array([10, 30, 100, 300, 1000, 3000])
    assert analysis.fit_growth(n, (n**0.5 - 1) * 100)[0].name == "power law"
    assert analysis.fit_growth(n, 5 + 0.3 * n)[0].name == "linear"


def test_fit_refuses_too_few_points():
    with pytest.raises(ValueError, match="at least 3"):
        analysis.fit_growth([50, 100], [1, 2])


def test_seed_bootstrap_covers_truth_at_about_the_nominal_rate():
    """Simulated seeds around a known curve: the 95 % interval holds the true threshold in most
    repetitions (coarse check of calibration, small bootstrap for speed)."""
    rng = np.random.default_rng(1)
    scales = np.array([50, 100, 200, 400, 800])
    true = np.array([2.0, 6.0, 14.0, 30.0, 60.0])
    t_true = analysis.threshold_scale(scales, true, 10.0)
    hits, reps = 0, 60
    for r in range(reps):
        rows = [
            {"seed": s, "scale": sc, "status": "done", "degradation_pct": v + rng.normal(0, 2.0)}
            for s in range(5)
            for sc, v in zip(scales, true)
        ]
        ci = analysis.bootstrap_threshold_seeds(pd.DataFrame(rows), 10.0, n_boot=300, seed=r)
        hits += ci["low"] <= t_true <= ci["high"]
    assert 0.8 <= hits / reps <= 1.0


def test_item_bootstrap_brackets_point_estimate():
    rng = np.random.default_rng(0)
    rows = []
    for item in range(40):
        nb = rng.uniform(2, 4)
        for sc, bump in ((50, 0.0), (100, 0.1), (200, 0.3)):
            rows.append(
                {
                    "item": item,
                    "scale": sc,
                    "nll_before": nb * 5,
                    "nll_after": (nb + bump) * 5,
                    "tokens": 5,
                }
            )
    df = pd.DataFrame(rows)
    ci = analysis.bootstrap_threshold_items(df, 10.0, n_boot=300)
    tok = df.groupby("scale")["tokens"].sum()
    ppl_b = np.exp(df.groupby("scale")["nll_before"].sum() / tok)
    ppl_a = np.exp(df.groupby("scale")["nll_after"].sum() / tok)
    point = analysis.threshold_scale(ppl_a.index, ((ppl_a - ppl_b) / ppl_b * 100).to_numpy(), 10.0)
    assert ci["over"] == "probe items" and ci["n"] == 40
    assert ci["low"] <= point <= ci["high"]


def test_welch_by_scale():
    a = pd.DataFrame({"scale": [50] * 3 + [100] * 3, "degradation_pct": [1, 2, 3, 50, 51, 52]})
    b = pd.DataFrame({"scale": [50] * 3 + [100] * 3, "degradation_pct": [1, 2, 3, 10, 11, 12]})
    w = analysis.welch_by_scale(a, b)
    assert (
        w.set_index("scale").loc[50, "p"] == pytest.approx(1.0)
        and w.set_index("scale").loc[100, "p"] < 1e-3
    )
