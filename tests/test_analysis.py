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


def _welch_by_hand(x, y) -> tuple[float, float]:
    """Welch's t and its Welch-Satterthwaite degrees of freedom, written out."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    t = (x.mean() - y.mean()) / np.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return t, df


def test_welch_by_scale_tests_the_chosen_measure_in_its_own_unit():
    """Under KL to the base the test compares the KL values (nats), not the token-weighted
    change the points also carry; t and p as the formula gives them."""
    from scipy import stats

    kl_a, kl_b = [0.010, 0.014, 0.019], [0.030, 0.026, 0.041]
    a = pd.DataFrame({"scale": [50] * 3, "degradation_pct": [1.0, 2.0, 3.0], "kl_to_base": kl_a})
    b = pd.DataFrame({"scale": [50] * 3, "degradation_pct": [1.0, 2.0, 3.0], "kl_to_base": kl_b})
    assert analysis.welch_by_scale(a, b).loc[0, "p"] == pytest.approx(1.0)  # same token change
    w = analysis.welch_by_scale(a, b, "kl_to_base")
    t, df = _welch_by_hand(kl_a, kl_b)
    row = w.iloc[0]
    assert row["mean_a"] == pytest.approx(np.mean(kl_a)) and row["mean_b"] == pytest.approx(
        np.mean(kl_b)
    )
    assert row["t"] == pytest.approx(t, rel=1e-9)
    assert row["p"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert row["p"] < 0.05


def test_welch_by_scale_on_a_measure_a_run_lacks_is_empty():
    """An older run has no column (or only missing values) of a newer measure: no test, no
    error; `runs_without` names it."""
    new = pd.DataFrame(
        {"run_id": "new", "scale": [50] * 3, "degradation_pct": [1.0, 2, 3], "kl_to_base": 0.1}
    )
    old = pd.DataFrame({"run_id": "old", "scale": [50] * 3, "degradation_pct": [4.0, 5, 6]})
    w = analysis.welch_by_scale(new, old, "kl_to_base")
    assert w.empty and list(w.columns) == analysis.WELCH_COLUMNS
    both = pd.concat([new, old], ignore_index=True)
    assert analysis.runs_without(both, "kl_to_base") == ["old"]
    assert analysis.runs_without(both, "degradation_pct") == []
    assert analysis.runs_without(old, "kl_to_base") == ["old"]  # no such column at all
    w = analysis.welch_by_scale(
        both[both.run_id == "new"], both[both.run_id == "old"], "kl_to_base"
    )
    assert w.empty
    with pytest.raises(ValueError, match="unknown forgetting metric"):
        analysis.welch_by_scale(new, old, "bogus")


def _points(run_id, curve, seeds=(0,), **extra):
    return pd.DataFrame(
        [
            {"run_id": run_id, "scale": sc, "seed": s, "status": "done", "degradation_pct": v}
            | {k: f(sc, s) for k, f in extra.items()}
            for s in seeds
            for sc, v in curve.items()
        ]
    )


def test_threshold_report_says_what_the_page_and_the_cli_print():
    pts = _points("r", {100: 0.0, 400: 21.0, 1600: 80.0, 6400: 400.0}, seeds=(0, 1))
    rep = analysis.threshold_report(pts, level=10.0, n_boot=50)
    assert rep.threshold == pytest.approx(200, rel=1e-6) and rep.largest_safe == 100
    assert rep.verdict() == "threshold (10 %): 200 samples"
    assert rep.verdict(strong="**") == "threshold (10 %): **200** samples"
    assert rep.safe_text() == "largest measured size below it: 100"
    assert rep.interval is not None and rep.interval_over == "seeds"
    assert rep.interval_text().startswith("95 % bootstrap interval over seeds")
    assert (
        rep.fit is not None
        and rep.fit is rep.fits[0]
        and rep.fit_text().startswith(f"best growth fit: {rep.fit.name} (R² ")
    )
    assert [p["phase"] for p in rep.points] == ["safe", "threshold", "catastrophic", "catastrophic"]


def test_threshold_report_explains_missing_interval_and_fit():
    rep = analysis.threshold_report(_points("r", {100: 30.0, 200: 60.0}), level=10.0)
    assert rep.verdict() == "already above 10 % at the smallest measured size (100)"
    assert rep.safe_text() == "no measured size below the level"
    assert rep.interval is None and rep.interval_text() == rep.interval_note != ""
    assert rep.fit is None and rep.fit_text() == rep.fit_note and "at least 3" in rep.fit_note
    low = analysis.threshold_report(_points("r", {100: 1.0, 200: 2.0}), level=10.0)
    assert low.verdict() == "never crosses 10 % in the measured range"
    with pytest.raises(ValueError):
        analysis.threshold_report(
            _points("r", {}).reindex(
                columns=["run_id", "scale", "seed", "status", "degradation_pct"]
            )
        )


def test_curve_verdicts_match_the_report():
    curves = pd.DataFrame(
        {
            "run": ["a"] * 2 + ["b"] * 2 + ["c"] * 2,
            "scale": [100, 400] * 3,
            "mean": [0.0, 21.0, 30.0, 40.0, 1.0, 2.0],
        }
    )
    assert analysis.curve_verdicts(curves, "run", 10.0) == {
        "a": "threshold (10 %): 200 samples",
        "b": "already above 10 % at the smallest measured size (100)",
        "c": "never crosses 10 % in the measured range",
    }


def test_mc_curves_are_percent_and_skip_runs_without_the_metric():
    pts = _points(
        "r",
        {100: 1.0, 200: 2.0},
        seeds=(0, 1),
        mc_acc_after=lambda sc, s: 0.5 - sc / 1000 + s / 100,
        mc_acc_before=lambda sc, s: 0.6,
    )
    mc = analysis.mc_curves(pts)
    assert mc.per_scale.set_index("scale")["mean"].to_dict() == pytest.approx(
        {100: 40.5, 200: 30.5}
    )
    assert mc.before.to_dict() == pytest.approx({"r": 60.0})
    assert analysis.mc_curves(pts.drop(columns=["mc_acc_after", "mc_acc_before"])).empty
    none = pts.assign(mc_acc_after=float("nan"), mc_acc_before=float("nan"))
    assert analysis.mc_curves(none).empty and analysis.mc_curves(none).before.empty


def test_cross_domain_matrix_puts_general_first_and_averages():
    ev = pd.DataFrame(
        {
            "scale": [10, 10, 10, 10, 20],
            "train_domain": ["med", "med", "med", "law", "med"],
            "eval_set": ["domain:med", "general", "general", "domain:law", "general"],
            "change_pct": [-50.0, 10.0, 20.0, -40.0, 99.0],
        }
    )
    m = analysis.cross_domain_matrix(ev, 10)
    assert list(m.columns) == ["general", "law", "med"]
    assert m.loc["med", "general"] == 15.0 and m.loc["law", "law"] == -40.0
    assert np.isnan(m.loc["law", "general"])


def test_run_summary_joins_the_cost_figures():
    pts = _points(
        "r",
        {100: 5.0, 200: 50.0},
        train_seconds=lambda sc, s: sc / 10,
        steps=lambda sc, s: sc,
        trainable_params=lambda sc, s: 10,
        total_params=lambda sc, s: 1000,
        peak_mem_mb=lambda sc, s: sc,
        smoke_ok=lambda sc, s: sc < 200,
        method=lambda sc, s: "lora",
        rank=lambda sc, s: 8,
        domain_improvement_pct=lambda sc, s: 1.0,
    )
    row = analysis.run_summary(pts).set_index("run_id").loc["r"]
    assert row["points"] == 2 and row["max_degradation"] == 50.0 and row["smoke_failures"] == 1
    assert row["train_seconds"] == 30.0 and row["peak_mem_mb"] == 200
    assert row["trainable_pct"] == 1.0 and row["ms_per_step"] == 100.0
    assert analysis.run_summary(pts.iloc[0:0]).empty
    assert analysis.percent_change(4.0, 5.0) == 25.0


def test_every_forgetting_metric_reads_a_threshold_in_its_own_unit():
    """A measure in nats enters as its perplexity-ratio equivalent: the change of mean per-token
    cross-entropy d = log(1 + pct/100) places the threshold exactly where the token-weighted
    perplexity change does, and the report says the level in nats."""
    pct = {100: 0.0, 400: 21.0, 1600: 80.0, 6400: 400.0}
    pts = _points(
        "r", pct, seeds=(0, 1), general_ce_delta=lambda sc, s: float(np.log1p(pct[sc] / 100))
    )
    a = analysis.threshold_report(pts, level=10.0, n_boot=50)
    b = analysis.threshold_report(pts, level=10.0, n_boot=50, metric="general_ce_delta")
    assert b.threshold == pytest.approx(a.threshold) == pytest.approx(200, rel=1e-6)
    assert b.verdict() == "threshold (0.0953 nats (≈ 10 %)): 200 samples"
    assert [p["mean"] for p in b.points] == pytest.approx(
        [0.0, np.log(1.21), np.log(1.8), np.log(5)]
    )
    assert [p["phase"] for p in b.points] == [p["phase"] for p in a.points]
    assert b.raw["metric"] == "general_ce_delta" and b.raw["level"] == pytest.approx(np.log(1.1))
    curves = analysis.metric_curves(pts, "general_ce_delta")
    assert curves["mean"].to_numpy() == pytest.approx(list(pct.values()))
    assert curves["mean_raw"].to_numpy() == pytest.approx(
        np.log1p(np.array(list(pct.values())) / 100)
    )


def test_a_metric_without_values_or_unknown_is_a_clear_error():
    pts = _points("r", {100: 1.0, 200: 30.0}, kl_to_base=lambda sc, s: None)
    assert analysis.available_metrics(pts) == ["degradation_pct"]
    with pytest.raises(ValueError, match="no point has a value of kl_to_base"):
        analysis.threshold_report(pts, metric="kl_to_base")
    with pytest.raises(
        ValueError, match="unknown forgetting metric 'bogus'; one of: degradation_pct"
    ):
        analysis.threshold_report(pts, metric="bogus")
    assert analysis.metric_curves(pts, "degradation_stmt_pct").empty


def test_kl_has_no_single_seed_interval():
    pts = _points("r", {100: 1.0, 200: 30.0, 400: 60.0}, kl_to_base=lambda sc, s: sc / 1000)
    items = pd.DataFrame(
        [
            {"item": i, "scale": sc, "nll_before": 10.0, "nll_after": 11.0, "tokens": 5}
            for i in range(3)
            for sc in (100, 200, 400)
        ]
    )
    rep = analysis.threshold_report(pts, items, metric="kl_to_base", n_boot=20)
    assert rep.interval is None and "not stored per probe item" in rep.interval_note


def test_item_bootstrap_per_statement_is_the_mean_of_statement_perplexities():
    """With one resample, the interval is that resample's threshold, computed here by hand with
    Martz 2025's aggregation (which differs from the token-weighted one on these items)."""
    rows = []
    toks = [2, 10, 30]
    for item, t in enumerate(toks):
        for sc, bump in ((50, 0.0), (100, 0.05 * (item + 1)), (200, 0.5 / (item + 1))):
            rows.append(
                {
                    "item": item,
                    "scale": sc,
                    "nll_before": 2.0 * t,
                    "nll_after": (2 + bump) * t,
                    "tokens": t,
                }
            )
    df = pd.DataFrame(rows)
    pick = np.random.default_rng(7).integers(0, 3, 3)
    t = np.array(toks)[pick]
    before = np.exp(2.0 * t / t).mean()
    after = [
        np.mean([np.exp(2 + f(i)) for i in pick])
        for f in (lambda i: 0.0, lambda i: 0.05 * (i + 1), lambda i: 0.5 / (i + 1))
    ]
    want = analysis.threshold_scale([50, 100, 200], (np.array(after) - before) / before * 100, 10.0)
    ci = analysis.bootstrap_threshold_items(df, 10.0, n_boot=1, seed=7, per_statement=True)
    assert ci["low"] == pytest.approx(want) and ci["high"] == pytest.approx(want)
    token = analysis.bootstrap_threshold_items(df, 10.0, n_boot=1, seed=7)
    assert token["low"] != pytest.approx(want)


def test_measure_agreement_puts_each_measures_threshold_and_phases_side_by_side():
    """Two measures that disagree: the per-statement change crosses 10 % between 100 and 400
    samples, the token-weighted one only between 400 and 1,600."""
    tok = {100: 0.0, 400: 5.0, 1600: 80.0}
    stmt = {100: 0.0, 400: 40.0, 1600: 90.0}
    pts = _points(
        "r",
        tok,
        seeds=(0, 1),
        degradation_stmt_pct=lambda sc, s: stmt[sc],
        kl_to_base=lambda sc, s: None,
    )
    agree = analysis.measure_agreement(pts, level=10.0, n_boot=20)
    t = agree.table.set_index("metric")
    assert list(t.index) == ["degradation_pct", "degradation_stmt_pct"]  # no KL values: absent
    assert t.loc["degradation_pct", "threshold"] == pytest.approx(
        analysis.threshold_report(pts, level=10.0, n_boot=20).threshold
    )
    assert (
        100
        < t.loc["degradation_stmt_pct", "threshold"]
        < 400
        < t.loc["degradation_pct", "threshold"]
        < 1600
    )
    assert t.loc["degradation_stmt_pct", "largest_safe"] == 100
    assert t.loc["degradation_pct", "largest_safe"] == 400
    ph = agree.phases
    assert list(ph.index) == [100, 400, 1600] and len(ph.columns) == 2
    tok_col, stmt_col = (analysis.METRICS[m].title for m in t.index)
    assert ph.loc[400, tok_col] != ph.loc[400, stmt_col]  # 5 % vs 40 %: different phases


def test_headline_metric_is_the_runs_setting_when_it_has_values():
    pts = _points("r", {100: 1.0, 200: 30.0}, degradation_stmt_pct=lambda sc, s: 2.0 * sc)
    assert analysis.headline_metric(pts, "degradation_stmt_pct") == "degradation_stmt_pct"
    assert analysis.headline_metric(pts) == "degradation_pct"
    # a run measured before the per-statement change existed falls back to the token-weighted
    old = _points("r", {100: 1.0, 200: 30.0})
    assert analysis.headline_metric(old, "degradation_stmt_pct") == "degradation_pct"
    with pytest.raises(ValueError, match="unknown forgetting metric"):
        analysis.headline_metric(pts, "bogus")


def test_method_summary_and_spectral_totals_carry_the_measure_and_intruder_dimensions():
    """At the largest size: forgetting under the chosen measure (a nats measure as its %
    equivalent of the mean over seeds) and the intruder dimensions beside it; per point the
    intruder dimensions are the sum over matrices, then the mean over seeds."""
    pts = _points(
        "r",
        {100: 5.0, 200: 50.0},
        seeds=(0, 1),
        train_seconds=lambda sc, s: 1.0,
        steps=lambda sc, s: sc,
        trainable_params=lambda sc, s: 10,
        total_params=lambda sc, s: 1000,
        peak_mem_mb=lambda sc, s: 1.0,
        method=lambda sc, s: "lora",
        rank=lambda sc, s: 8,
        domain_improvement_pct=lambda sc, s: 1.0,
        general_ce_delta=lambda sc, s: [0.1, 0.3][s],
        intruder_dims=lambda sc, s: sc // 100 + s,
    )
    row = analysis.method_summary(pts, "general_ce_delta").set_index("run_id").loc["r"]
    assert row["largest_scale"] == 200
    assert row["degradation_at_largest"] == pytest.approx((np.exp(0.2) - 1) * 100)
    assert row["intruder_dims_at_largest"] == pytest.approx(2.5)  # seeds: 2 and 3
    plain = analysis.method_summary(pts).set_index("run_id").loc["r"]
    assert plain["degradation_at_largest"] == 50.0
    spectral = pd.DataFrame(
        [
            dict(run_id="r", scale=100, seed=s, name=n, method="lora", rank=8, fro_norm=1.0)
            | dict(eff_rank=1.0, topk_cos=0.9, intruder_dims=d)
            for s, per in ((0, (1, 2)), (1, (3, 4)))
            for n, d in zip(("a", "b"), per)
        ]
    )
    t = analysis.spectral_totals(spectral).iloc[0]
    assert t["intruder_dims"] == pytest.approx(5.0)  # (1 + 2 + 3 + 4) / 2 seeds
    older = analysis.spectral_totals(spectral.drop(columns="intruder_dims")).iloc[0]
    assert np.isnan(older["intruder_dims"])  # reference rows counted none


def test_per_scale_interval_is_the_student_t_interval():
    """per_scale's t quantile comes from a table (importing scipy costs seconds on a page's
    first render); the interval is still mean ± t(0.975, n-1) · s / sqrt(n), scipy's t."""
    from scipy import stats

    rng = np.random.default_rng(3)
    rows = [
        ("r", sc, sd, "done", v) for sc in (10, 100) for sd, v in enumerate(rng.normal(5, 2, 7))
    ]
    rows += [("r", 1000, 0, "done", 3.0)]  # one seed: no interval
    pts = pd.DataFrame(rows, columns=["run_id", "scale", "seed", "status", "degradation_pct"])
    out = analysis.per_scale(pts).set_index("scale")
    for sc in (10, 100):
        v = pts[pts.scale == sc].degradation_pct
        half = stats.t.ppf(0.975, len(v) - 1) * v.std() / np.sqrt(len(v))
        assert out.loc[sc, "ci_high"] - out.loc[sc, "mean"] == pytest.approx(half, rel=1e-12)
        assert out.loc[sc, "mean"] - out.loc[sc, "ci_low"] == pytest.approx(half, rel=1e-12)
    assert out.loc[1000, "ci_low"] == out.loc[1000, "ci_high"] == 3.0
    for df in range(1, 40):  # the table's entries, and scipy past its end
        assert analysis.t975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-13)


def test_block_bootstraps_give_the_sample_by_sample_intervals():
    """The bootstraps compute their samples in blocks (for speed); the thresholds are those of
    `threshold_scale` on each sample, drawn in the same order as one sample at a time."""
    rng = np.random.default_rng(5)
    scales = np.array([50, 100, 200, 400, 800])
    rows = np.cumsum(rng.normal(4, 9, (300, len(scales))), axis=1)
    rows[7] = [30, 40, 50, 60, 70]  # above from the first size
    rows[8] = [1, 1, 1, 1, 1]  # never crosses
    want = [analysis.threshold_scale(scales, r, 10.0) for r in rows]
    got = analysis._threshold_scales(scales, rows, 10.0)
    assert list(got) == [np.inf if w is None else w for w in want]

    pts = pd.DataFrame(
        [("r", int(sc), sd, "done", v) for sd in range(4) for sc, v in zip(scales, rows[sd])],
        columns=["run_id", "scale", "seed", "status", "degradation_pct"],
    )
    vals = pts.pivot_table(index="seed", columns="scale", values="degradation_pct").to_numpy()
    draw = np.random.default_rng(0)
    loop = []
    for _ in range(150):
        t = analysis.threshold_scale(scales, vals[draw.integers(0, 4, 4)].mean(0), 10.0)
        loop.append(np.inf if t is None else t)
    np.testing.assert_equal(  # NaN-aware: never-crossing samples can make the bound NaN
        analysis.bootstrap_threshold_seeds(pts, 10.0, 150), analysis._interval(loop, "seeds", 4)
    )
