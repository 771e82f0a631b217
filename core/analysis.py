"""Numbers a user acts on, computed from stored points: per-scale statistics, phases, the
threshold scale, and log-space interpolation for the scale slider. Pure functions over
DataFrames; no streamlit, no SQL."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .states import DONE

# Phase cut-offs on general-knowledge degradation (%). Defaults follow our reading of Martz 2025:
# safe below 10 %, a threshold crossing up to 50 %, catastrophic beyond, exponential growth from
# about +1,000 % (its 2.5K-10K points) and collapse from about +10,000 % (its 25K-50K points).
PHASES = ("safe", "threshold", "catastrophic", "exponential", "collapse")
DEFAULT_CUTOFFS = (10.0, 50.0, 1000.0, 10000.0)
PHASE_COLORS = {  # one hue per phase, far enough apart to tell neighbours apart
    "safe": "#2e7d32",
    "threshold": "#f2c400",
    "catastrophic": "#ef6c00",
    "exponential": "#b71c1c",
    "collapse": "#6a1b9a",
}
# Martz 2025's deployment guidance: alert above 20 %, consider rollback above 50 %.
ALERT_PCT, ROLLBACK_PCT = 20.0, 50.0


def pct_to_ratio(pct):
    """Degradation % -> perplexity ratio after/before (the log axis the charts use)."""
    return 1.0 + np.asarray(pct, dtype=float) / 100.0


def ratio_to_pct(ratio):
    return (np.asarray(ratio, dtype=float) - 1.0) * 100.0


@dataclass(frozen=True)
class Metric:
    """A forgetting measure a threshold can be read from. Thresholds, phases, fits and charts
    work on a percentage of perplexity change; a measure in nats d (a change of mean per-token
    cross-entropy, a KL divergence) enters them as its perplexity-ratio equivalent
    (e^d - 1) * 100 % and its mean over seeds is taken in nats first."""

    name: str
    unit: str  # "%" | "nats"
    title: str
    source: str = ""  # whose measure it is (author and year + title)

    def to_pct(self, v):
        v = np.asarray(v, dtype=float)
        return v if self.unit == "%" else np.expm1(v) * 100.0

    def from_pct(self, pct):
        pct = np.asarray(pct, dtype=float)
        return pct if self.unit == "%" else np.log1p(pct / 100.0)

    def level_text(self, level_pct: float) -> str:
        """The threshold level in the measure's own unit ('10 %', '0.0953 nats (≈ 10 %)')."""
        if self.unit == "%":
            return f"{level_pct:g} %"
        return f"{float(self.from_pct(level_pct)):.3g} nats (≈ {level_pct:g} %)"


METRICS = {
    m.name: m
    for m in (
        Metric("degradation_pct", "%", "general perplexity change (token-weighted)"),
        Metric(
            "degradation_stmt_pct",
            "%",
            "general perplexity change (mean of per-statement perplexities)",
            "Martz 2025, scale-dependent forgetting",
        ),
        Metric(
            "general_ce_delta",
            "nats",
            "change of mean per-token cross-entropy on the general probe",
            "Hugging Face peft's method_comparison benchmark",
        ),
        Metric(
            "kl_to_base",
            "nats",
            "mean per-token KL divergence from the base model on the general probe",
            'Kalajdzievski 2024, "Scaling laws for forgetting when fine-tuning LLMs"',
        ),
    )
}


def metric_of(name: str) -> Metric:
    """The measure called `name`; a ValueError naming the valid ones otherwise."""
    if name not in METRICS:
        raise ValueError(f"unknown forgetting metric '{name}'; one of: {', '.join(METRICS)}")
    return METRICS[name]


def available_metrics(points: pd.DataFrame) -> list[str]:
    """The forgetting measures with at least one value among `points` (older runs and methods
    that cannot provide a measure have none)."""
    return [m for m in METRICS if m in points.columns and points[m].notna().any()]


def runs_without(points: pd.DataFrame, metric: str) -> list[str]:
    """The runs among `points` (in their order) with no value of `metric`: measured before it
    existed, or by a method that cannot provide it."""
    metric_of(metric)
    ids = list(dict.fromkeys(points["run_id"])) if "run_id" in points.columns else []
    if metric not in points.columns:
        return ids
    have = set(points.loc[points[metric].notna(), "run_id"])
    return [r for r in ids if r not in have]


def headline_metric(points: pd.DataFrame, preferred: str = "degradation_pct") -> str:
    """The measure a run's headline uses: `preferred` (its settings' `headline_metric`, e.g.
    the per-statement change for the paper-000 preset) when the points have values of it, else
    the token-weighted change."""
    metric_of(preferred)
    return preferred if preferred in available_metrics(points) else "degradation_pct"


def metric_curves(points: pd.DataFrame, metric: str = "degradation_pct") -> pd.DataFrame:
    """`per_scale` of a forgetting measure, mean and interval in the percentage the charts and
    the threshold use (`Metric.to_pct`; the identity for the % measures). `mean_raw` keeps the
    mean in the measure's own unit."""
    m = metric_of(metric)
    if metric not in points.columns:
        return pd.DataFrame(columns=[*PER_SCALE_COLUMNS, "mean_raw"])
    out = per_scale(points, metric)
    out["mean_raw"] = out["mean"]
    if m.unit != "%":
        for c in ("mean", "min", "max", "ci_low", "ci_high"):
            out[c] = m.to_pct(out[c])
        out["std"] = np.nan  # a spread in nats has no single percentage
    return out


def classify(pct: float, cutoffs=DEFAULT_CUTOFFS) -> str:
    if pct is None or (isinstance(pct, float) and math.isnan(pct)):
        return "unknown"
    for name, cut in zip(PHASES, cutoffs):
        if pct < cut:
            return name
    return PHASES[-1]


def validate_cutoffs(cutoffs) -> tuple[float, ...]:
    c = tuple(float(x) for x in cutoffs)
    if len(c) != len(PHASES) - 1 or any(b <= a for a, b in zip(c, c[1:])):
        raise ValueError("phase cut-offs must be four increasing numbers")
    return c


PER_SCALE_COLUMNS = ["run_id", "scale", "mean", "std", "n", "min", "max", "ci_low", "ci_high"]

# Student's t 97.5 % quantile for 1-30 degrees of freedom (2-31 seeds), as
# `scipy.special.stdtrit(df, 0.975)` gives it (what `scipy.stats.t.ppf` computes), written out:
# importing scipy takes seconds on a small machine, on the first render of every page that draws
# a curve. tests/test_analysis.py checks every entry against scipy.
_T975 = (
    12.706204736174694,
    4.302652729749462,
    3.1824463052837078,
    2.7764451051977934,
    2.5705818356363146,
    2.4469118511449786,
    2.364624251592784,
    2.306004135204166,
    2.262157162798205,
    2.228138851986274,
    2.200985160091639,
    2.1788128296672284,
    2.1603686564627913,
    2.144786687917804,
    2.131449545559776,
    2.1199052992212546,
    2.1098155778333156,
    2.1009220402410382,
    2.0930240544083087,
    2.085963447265864,
    2.0796138447276795,
    2.0738730679040254,
    2.0686576104190486,
    2.0638985616280245,
    2.0595385527532972,
    2.0555294386428735,
    2.0518305164802846,
    2.0484071417952454,
    2.045229642132703,
    2.0422724563012378,
)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (a 95 % interval's)."""
    if 1 <= df <= len(_T975):
        return _T975[df - 1]
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.975))


def per_scale(points: pd.DataFrame, metric: str = "degradation_pct") -> pd.DataFrame:
    """Mean, std, n, min, max and a 95 % t-interval of `metric` per (run, scale), over seeds.
    Only finished points count."""
    ok = points[(points["status"] == DONE) & points[metric].notna()]
    if ok.empty:
        return pd.DataFrame(columns=PER_SCALE_COLUMNS)
    g = ok.groupby(["run_id", "scale"])[metric]
    out = g.agg(["mean", "std", "count", "min", "max"]).reset_index().rename(columns={"count": "n"})
    out["std"] = out["std"].fillna(0.0)
    half = [
        t975(int(n) - 1) * s / math.sqrt(n) if n > 1 else 0.0 for n, s in zip(out["n"], out["std"])
    ]
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out


def _log_ratio(pct: np.ndarray) -> np.ndarray:
    # Interpolating the log of the perplexity ratio keeps -20 % and +20,000 % on one footing.
    return np.log(np.maximum(pct_to_ratio(pct), 1e-9))


def interpolate(scales, pct, x: float) -> dict:
    """Degradation at dataset size x, interpolated linearly in (log scale, log ratio) between the
    two measured neighbours. Returns the value and whether it was measured or interpolated."""
    s = np.asarray(scales, dtype=float)
    v = np.asarray(pct, dtype=float)
    order = np.argsort(s)
    s, v = s[order], v[order]
    if len(s) == 0:
        raise ValueError("no measured points")
    hit = np.isclose(s, x)
    if hit.any():
        i = int(np.argmax(hit))
        return {"value": float(v[i]), "kind": "measured", "lo": float(s[i]), "hi": float(s[i])}
    if x < s[0] or x > s[-1]:
        raise ValueError(f"{x:g} is outside the measured range {s[0]:g}..{s[-1]:g}")
    y = np.interp(np.log(x), np.log(s), _log_ratio(v))
    j = int(np.searchsorted(s, x))
    return {
        "value": float(ratio_to_pct(np.exp(y))),
        "kind": "interpolated",
        "lo": float(s[j - 1]),
        "hi": float(s[j]),
    }


def threshold_scale(scales, pct, level: float = 10.0) -> float | None:
    """The dataset size where degradation first rises above `level`, log-interpolated between the
    last measured point below and the first at or above it. None if it never crosses; the
    smallest scale if it is already above there."""
    t = float(_threshold_scales(scales, np.asarray(pct, dtype=float)[None, :], level)[0])
    return None if math.isinf(t) else t


def _threshold_scales(scales, pct_rows: np.ndarray, level: float) -> np.ndarray:
    """`threshold_scale` of each row of `pct_rows` (one row per bootstrap sample, one column per
    scale) in one step, inf where a row never crosses."""
    s = np.asarray(scales, dtype=float)
    order = np.argsort(s)
    s, v = s[order], np.asarray(pct_rows, dtype=float)[:, order]
    above = v >= level
    j = above.argmax(axis=1)
    out = np.full(len(v), np.inf)
    out[above.any(axis=1) & (j == 0)] = s[0]
    rows = np.nonzero(above.any(axis=1) & (j > 0))[0]
    j = j[rows]
    lo, hi = _log_ratio(v[rows, j - 1]), _log_ratio(v[rows, j])
    target = float(np.log(pct_to_ratio(level)))
    same = hi == lo
    frac = (target - lo) / np.where(same, 1.0, hi - lo)
    frac[same] = 1.0
    out[rows] = np.exp(np.log(s[j - 1]) + frac * (np.log(s[j]) - np.log(s[j - 1])))
    return out


# bootstrap samples computed together: numpy calls on a block instead of one sample at a time
# (the Threshold page draws four runs' intervals of 500 samples on its first render)
_BOOT_BLOCK = 64


def _resamples(rng: np.random.Generator, n: int, n_boot: int):
    """Blocks of resampled indices: the draws of `rng.integers(0, n, n)` once per sample, in
    their order (the intervals stay what a sample-by-sample loop gives for the seed)."""
    for start in range(0, n_boot, _BOOT_BLOCK):
        yield np.stack([rng.integers(0, n, n) for _ in range(min(_BOOT_BLOCK, n_boot - start))])


def largest_safe_scale(scales, pct, level: float = 10.0) -> float | None:
    """The largest measured dataset size before degradation first reaches `level`."""
    s = np.asarray(scales, dtype=float)
    v = np.asarray(pct, dtype=float)
    order = np.argsort(s)
    safe = None
    for sc, val in zip(s[order], v[order]):
        if val >= level:
            break
        safe = float(sc)
    return safe


@dataclass
class PhaseEntry:
    phase: str
    first_scale: float | None


def phase_table(curve: pd.DataFrame, cutoffs=DEFAULT_CUTOFFS) -> pd.DataFrame:
    """Per measured scale of one run's mean curve: the phase it falls in."""
    out = curve[["scale", "mean"]].copy().sort_values("scale")
    out["phase"] = [classify(v, cutoffs) for v in out["mean"]]
    return out


def phase_entries(curve: pd.DataFrame, cutoffs=DEFAULT_CUTOFFS) -> list[PhaseEntry]:
    """Where the run first enters each phase (None when it never does)."""
    t = phase_table(curve, cutoffs)
    return [
        PhaseEntry(p, float(t.loc[t.phase == p, "scale"].min()) if (t.phase == p).any() else None)
        for p in PHASES
    ]


def log_slider_values(lo: float, hi: float, n: int = 41) -> list[int]:
    """Log-spaced whole dataset sizes from lo to hi, measured ends included, duplicates dropped."""
    if lo <= 0 or hi < lo:
        raise ValueError("slider range must be positive and increasing")
    vals = np.unique(np.round(np.geomspace(lo, hi, n)).astype(int))
    vals = sorted(set(vals.tolist()) | {int(lo), int(hi)})
    return vals


def nearest_scale(scales, x: float) -> int:
    s = np.asarray(sorted(set(scales)), dtype=float)
    return int(s[np.argmin(np.abs(np.log(s) - np.log(x)))])


# -- growth fits ---------------------------------------------------------------------------------
@dataclass
class Fit:
    name: str
    params: dict
    r2: float
    aic: float

    def predict(self, n):
        n = np.asarray(n, dtype=float)
        a, b = self.params["a"], self.params["b"]
        if self.name == "linear":
            return a + b * n
        if self.name == "exponential":
            return ratio_to_pct(np.exp(a + b * n))
        return ratio_to_pct(np.exp(a + b * np.log(n)))  # power law


MIN_FIT_POINTS = 3


def fit_growth(scales, pct) -> list[Fit]:
    """Linear (d = a + b n), exponential (ratio = e^(a + b n)) and power-law (ratio = e^a n^b) fits
    of degradation d(n); ratio = 1 + d/100. R^2 and AIC are computed on d itself, so the three are
    comparable; the list is sorted best (lowest AIC) first. Raises ValueError with fewer than
    three distinct scales."""
    n = np.asarray(scales, dtype=float)
    d = np.asarray(pct, dtype=float)
    if len(np.unique(n)) < MIN_FIT_POINTS:
        raise ValueError(f"a growth fit needs at least {MIN_FIT_POINTS} measured dataset sizes")
    ly = np.log(np.maximum(pct_to_ratio(d), 1e-9))
    fits = []
    for name, x, y in (("linear", n, d), ("exponential", n, ly), ("power law", np.log(n), ly)):
        b, a = np.polyfit(x, y, 1)
        fit = Fit(name, {"a": float(a), "b": float(b)}, 0.0, 0.0)
        resid = d - fit.predict(n)
        rss = float(np.sum(resid**2))
        tss = float(np.sum((d - d.mean()) ** 2)) or 1e-12
        fit.r2 = 1 - rss / tss
        fit.aic = len(n) * math.log(max(rss, 1e-12) / len(n)) + 2 * 2
        fits.append(fit)
    return sorted(fits, key=lambda f: f.aic)


# -- uncertainty -----------------------------------------------------------------------------------
def bootstrap_threshold_seeds(
    points: pd.DataFrame,
    level: float = 10.0,
    n_boot: int = 2000,
    seed: int = 0,
    metric: str = "degradation_pct",
) -> dict:
    """95 % bootstrap interval of the threshold scale, resampling whole seeds (each seed is one
    curve). Needs at least two seeds measured at every scale used. `level` is in % (a measure in
    nats is averaged in nats, then converted: `Metric`)."""
    met = metric_of(metric)
    ok = points[(points["status"] == DONE) & points[metric].notna()]
    m = ok.pivot_table(index="seed", columns="scale", values=metric).dropna(axis=1)
    if len(m) < 2 or m.shape[1] < 2:
        raise ValueError("a seed bootstrap needs at least two seeds measured at two or more scales")
    rng = np.random.default_rng(seed)
    scales = m.columns.to_numpy(dtype=float)
    vals = m.to_numpy()
    out = [
        _threshold_scales(scales, met.to_pct(vals[picks].mean(1)), level)
        for picks in _resamples(rng, len(vals), n_boot)
    ]
    return _interval(np.concatenate(out) if out else [], "seeds", len(vals))


def bootstrap_threshold_items(
    items: pd.DataFrame,
    level: float = 10.0,
    n_boot: int = 2000,
    seed: int = 0,
    per_statement: bool = False,
) -> dict:
    """95 % bootstrap interval of the threshold scale for a single-seed run, resampling general
    probe items (the same resample at every scale). `items`: item_nll rows of one seed. The
    perplexity of a resample is token-weighted, or with `per_statement` the mean of its
    statements' perplexities (Martz 2025's aggregation)."""
    piv_a = items.pivot_table(index="item", columns="scale", values="nll_after")
    before = items.groupby("item")[["nll_before", "tokens"]].first().loc[piv_a.index]
    if len(piv_a) < 2 or piv_a.shape[1] < 2:
        raise ValueError("an item bootstrap needs per-item losses at two or more scales")
    a, b, tok = piv_a.to_numpy(), before["nll_before"].to_numpy(), before["tokens"].to_numpy()
    scales = piv_a.columns.to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    out = []
    for pick in _resamples(rng, len(b), n_boot):  # (samples, items)
        if per_statement:
            n = np.maximum(tok[pick], 1)
            ppl_b = np.exp(b[pick] / n).mean(1)
            ppl_a = np.exp(a[pick] / n[:, :, None]).mean(1)
        else:
            t_sum = tok[pick].sum(1)
            ppl_b = np.exp(b[pick].sum(1) / t_sum)
            ppl_a = np.exp(a[pick].sum(1) / t_sum[:, None])
        pct = (ppl_a - ppl_b[:, None]) / ppl_b[:, None] * 100
        out.append(_threshold_scales(scales, pct, level))
    return _interval(np.concatenate(out) if out else [], "probe items", len(b))


def _interval(samples, over: str, n: int) -> dict:
    s = np.asarray(samples, dtype=float)
    finite = s[np.isfinite(s)]
    lo, hi = np.percentile(s, [2.5, 97.5]) if len(finite) else (np.inf, np.inf)
    return {
        "low": float(lo),
        "high": float(hi),
        "over": over,
        "n": n,
        "not_reached_share": float(np.mean(~np.isfinite(s))),
    }


WELCH_COLUMNS = ["scale", "mean_a", "mean_b", "t", "p"]


def welch_by_scale(
    a: pd.DataFrame, b: pd.DataFrame, metric: str = "degradation_pct"
) -> pd.DataFrame:
    """Welch's t-test between two runs' points at every scale both measured with ≥ 2 seeds that
    have a value of `metric` (any measure of `METRICS`, in its own unit: % or nats); empty (with
    `WELCH_COLUMNS`) where either run has no value of it (`runs_without`)."""
    from scipy import stats

    metric_of(metric)
    if metric not in a.columns or metric not in b.columns:
        return pd.DataFrame(columns=WELCH_COLUMNS)
    rows = []
    for sc in sorted(set(a["scale"]) & set(b["scale"])):
        x = a.loc[(a.scale == sc) & a[metric].notna(), metric]
        y = b.loc[(b.scale == sc) & b[metric].notna(), metric]
        if len(x) >= 2 and len(y) >= 2:
            t, p = stats.ttest_ind(x, y, equal_var=False)
            rows.append(
                {"scale": sc, "mean_a": x.mean(), "mean_b": y.mean(), "t": float(t), "p": float(p)}
            )
    return pd.DataFrame(rows, columns=WELCH_COLUMNS)


def analyze(
    points: pd.DataFrame,
    items: pd.DataFrame | None = None,
    level: float = 10.0,
    cutoffs=DEFAULT_CUTOFFS,
    n_boot: int = 1000,
    metric: str = "degradation_pct",
) -> dict:
    """Everything reported about one run's threshold, as a dictionary (`python -m core analyze
    --json`); `threshold_report` is the typed form the page and the CLI's text use. `metric`:
    which forgetting measure (`METRICS`); `level` is in % (`Metric` for the nats measures)."""
    met = metric_of(metric)
    if metric not in points.columns or not points[metric].notna().any():
        raise ValueError(
            f"no point has a value of {metric} ({met.title}): points measured before it existed, "
            "or a method that cannot provide it"
        )
    curve = per_scale(points, metric)
    if curve.empty:
        raise ValueError("the run has no finished points")
    curve = curve.groupby("scale", as_index=False).agg(raw=("mean", "mean"), n=("n", "sum"))
    curve["mean"] = met.to_pct(curve["raw"])
    out: dict = {
        "metric": metric,
        "unit": met.unit,
        "level_pct": level,
        "level": float(met.from_pct(level)),
        "threshold_scale": threshold_scale(curve["scale"], curve["mean"], level),
        "largest_safe_scale": largest_safe_scale(curve["scale"], curve["mean"], level),
        "points": [
            {
                "scale": int(s),
                "mean_degradation_pct": float(m),
                "mean": float(r),
                "seeds": int(n),
                "phase": classify(m, cutoffs),
            }
            for s, m, r, n in zip(curve["scale"], curve["mean"], curve["raw"], curve["n"])
        ],
    }
    try:
        if points["seed"].nunique() >= 2:
            ci = bootstrap_threshold_seeds(points, level, n_boot, metric=metric)
        elif metric == "kl_to_base":
            raise ValueError("KL to the base is not stored per probe item: no single-seed interval")
        elif items is not None and not items.empty:
            # the token-weighted change and the cross-entropy change are one measure (ΔCE =
            # log of the perplexity ratio): both resample the token-weighted perplexity
            stmt = metric == "degradation_stmt_pct"
            ci = bootstrap_threshold_items(items, level, n_boot, per_statement=stmt)
        else:
            raise ValueError("no per-item losses stored for a single-seed interval")
        out["threshold_ci"] = [ci["low"], ci["high"]]
        out["threshold_ci_over"] = ci["over"]
        out["threshold_ci_not_reached_share"] = ci["not_reached_share"]
    except ValueError as e:
        out["threshold_ci"] = None
        out["threshold_ci_note"] = str(e)
    try:
        fits = fit_growth(curve["scale"], curve["mean"])
        out["fits"] = [{"name": f.name, "params": f.params, "r2": f.r2, "aic": f.aic} for f in fits]
        out["best_fit"] = out["fits"][0]
    except ValueError as e:
        out["best_fit"] = None
        out["fit_note"] = str(e)
    return out


# -- methods comparison and spectral summaries (ADAPT-Q, Rathore et al. 2025) ------------------
def method_summary(points: pd.DataFrame, metric: str = "degradation_pct") -> pd.DataFrame:
    """One row per run: what training cost and what it did, averaged over finished points.
    `degradation_at_largest` is forgetting under `metric` (`METRICS`; a nats measure as its %
    equivalent, averaged in nats first); `intruder_dims_at_largest` the intruder dimensions
    there (NaN where not counted)."""
    met = metric_of(metric)
    ok = points[points["status"] == DONE].copy()
    if ok.empty:
        return pd.DataFrame()
    for col in ("model_mem_mb", "disk_mb", "gen_tokens_per_s", "intruder_dims", metric):
        if col not in ok:
            ok[col] = np.nan
    ok["ms_per_step"] = 1000 * ok["train_seconds"] / ok["steps"].where(ok["steps"] > 0)
    ok["trainable_pct"] = 100 * ok["trainable_params"] / ok["total_params"]
    largest = ok.loc[ok.groupby("run_id")["scale"].transform("max") == ok["scale"]]
    g = ok.groupby("run_id", sort=False)
    out = g.agg(
        method=("method", "first"),
        rank=("rank", "first"),
        trainable_params=("trainable_params", "median"),
        trainable_pct=("trainable_pct", "median"),
        model_mem_mb=("model_mem_mb", "median"),
        disk_mb=("disk_mb", "median"),
        peak_mem_mb=("peak_mem_mb", "max"),
        ms_per_step=("ms_per_step", "median"),
        gen_tokens_per_s=("gen_tokens_per_s", "median"),
    )
    big = largest.groupby("run_id").agg(
        largest_scale=("scale", "first"),
        degradation_at_largest=(metric, "mean"),
        domain_gain_at_largest=("domain_improvement_pct", "mean"),
        intruder_dims_at_largest=("intruder_dims", "mean"),
    )
    big["degradation_at_largest"] = met.to_pct(big["degradation_at_largest"])
    return out.join(big).reset_index()


def spectral_totals(spectral: pd.DataFrame) -> pd.DataFrame:
    """Per (run, scale): the whole update's ||dW||_F (root of the sum of squares over matrices),
    the mean effective rank, the mean top-k cosine and the intruder dimensions summed over
    matrices (NaN where not counted: reference rows, runs before schema 6), averaged over
    seeds."""
    cols = ["run_id", "scale", "method", "rank", "fro_norm", "eff_rank", "topk_cos"]
    if spectral.empty:
        return pd.DataFrame(columns=[*cols, "intruder_dims"])
    if "intruder_dims" not in spectral:
        spectral = spectral.assign(intruder_dims=np.nan)
    per_point = (
        spectral.assign(fro2=spectral["fro_norm"] ** 2)
        .groupby(["run_id", "scale", "seed"], sort=False)
        .agg(
            method=("method", "first"),
            rank=("rank", "first"),
            fro2=("fro2", "sum"),
            eff_rank=("eff_rank", "mean"),
            topk_cos=("topk_cos", "mean"),
            intruder_dims=("intruder_dims", lambda x: x.sum(min_count=1)),
        )
        .reset_index()
    )
    per_point["fro_norm"] = np.sqrt(per_point["fro2"])
    return (
        per_point.groupby(["run_id", "scale"], sort=False)
        .agg(
            method=("method", "first"),
            rank=("rank", "first"),
            fro_norm=("fro_norm", "mean"),
            eff_rank=("eff_rank", "mean"),
            topk_cos=("topk_cos", "mean"),
            intruder_dims=("intruder_dims", "mean"),
        )
        .reset_index()
    )


def layer_matrix(spectral: pd.DataFrame, value: str = "topk_cos") -> pd.DataFrame:
    """Layer x module-type table of `value` (mean over seeds) for one run and scale."""
    if spectral.empty:
        return pd.DataFrame()
    return spectral.pivot_table(index="layer", columns="module", values=value, aggfunc="mean")


# -- smoke tests ------------------------------------------------------------------------------
def smoke_table(gens: pd.DataFrame) -> pd.DataFrame:
    """One row per smoke-test prompt of a point: the verdict on the fine-tuned model's answer
    (ok, new tokens, why it failed) first, then the base model's answer and the fine-tuned one.
    `gens` holds a point's 'before' and 'after' rows of the generations table."""
    cols = ["prompt", "ok", "new_tokens", "reason", "base_output", "after_output"]
    before = gens[gens["stage"] == "before"].set_index("idx")
    after = gens[gens["stage"] == "after"].set_index("idx")
    rows = []
    for i in before.index:
        a = after.loc[i] if i in after.index else None
        reason = a.get("reason") if a is not None else None
        rows.append(
            {
                "prompt": before.loc[i, "prompt"],
                "ok": bool(a["ok"]) if a is not None else None,
                "new_tokens": int(a["new_tokens"]) if a is not None else None,
                "reason": reason if isinstance(reason, str) and reason else None,
                "base_output": before.loc[i, "output"],
                "after_output": a["output"] if a is not None else None,
            }
        )
    return pd.DataFrame(rows, columns=cols)


NO_REASON = "smoke test failed (this run stored no reasons)"


def smoke_failed_points(points: pd.DataFrame, failures: pd.DataFrame | None) -> pd.DataFrame:
    """Finished points whose smoke test failed, one row per (run, scale): the failing seeds and
    the reasons, one line per failing answer ("seed 1, 'The capital of…': repetition loop …").
    `failures` are the failing answers (run_id, scale, seed, prompt, reason); reference runs and
    runs stored before reasons have none."""
    cols = ["run_id", "scale", "seeds", "reasons"]
    if points.empty or "smoke_ok" not in points:
        return pd.DataFrame(columns=cols)
    bad = points[(points["status"] == DONE) & (points["smoke_ok"] == False)]  # noqa: E712
    if bad.empty:
        return pd.DataFrame(columns=cols)
    failures = failures if failures is not None else pd.DataFrame()
    rows = []
    for (run_id, scale), g in bad.groupby(["run_id", "scale"], sort=True):
        lines = []
        for seed in sorted(g["seed"]):
            f = (
                failures[
                    (failures["run_id"] == run_id)
                    & (failures["scale"] == scale)
                    & (failures["seed"] == seed)
                ]
                if not failures.empty
                else failures
            )
            if f.empty:
                lines.append(f"seed {seed}: {NO_REASON}")
            for prompt, reason in zip(f.get("prompt", []), f.get("reason", [])):
                why = reason if isinstance(reason, str) and reason else "failed (no reason stored)"
                lines.append(f"seed {seed}, '{str(prompt)[:30]}': {why}")
        rows.append(
            {
                "run_id": run_id,
                "scale": int(scale),
                "seeds": sorted(int(s) for s in g["seed"]),
                "reasons": lines,
            }
        )
    return pd.DataFrame(rows, columns=cols)


def describe_interval(
    ci: list[float] | tuple[float, float], over: str, threshold: float, smallest: float
) -> str:
    """The threshold's 95 % bootstrap interval in words. An interval whose ends print alike
    ('61 – 61') reads as a bug: it gets the decimals that tell them apart, and an interval pinned
    at the smallest measured size says the threshold lies somewhere below it."""
    lo, hi = float(ci[0]), float(ci[1])
    # a bound the resamples did not place (some never cross the level in the measured range,
    # so the quantile is undefined) reads as not reached, never as "nan"
    lo, hi = (math.inf if math.isnan(v) else v for v in (lo, hi))
    head = f"95 % bootstrap interval over {over}"
    if math.isinf(hi) and math.isinf(lo):
        return f"{head}: no resample crosses the level in the measured range"
    if lo <= smallest and hi <= smallest:
        return (
            f"{head}: every resample is already above the level at the smallest measured size "
            f"({smallest:,.0f}); the threshold lies at or below it, only smaller sizes can place it"
        )
    if math.isinf(hi):
        return f"{head}: {lo:,.0f} – not reached in the measured range"
    digits = 0
    while digits < 3 and f"{lo:,.{digits}f}" == f"{hi:,.{digits}f}":
        digits += 1
    text = f"{head}: {lo:,.{digits}f} – {hi:,.{digits}f}"
    if hi - lo < 0.02 * threshold:
        text += " (resampling hardly moves it: the seeds agree where the curve crosses the level)"
    return text


# -- what the pages and the CLI report -----------------------------------------------------------
def threshold_verdict(
    threshold: float | None, smallest: float, level: float, strong="", level_text: str = ""
) -> str:
    """The threshold in one sentence: never crossed, crossed already at the smallest measured
    size, or where. `strong` wraps the number (the app passes '**' for bold); `level_text` says
    the level in another unit than % (`Metric.level_text`)."""
    lv = level_text or f"{level:g} %"
    if threshold is None:
        return f"never crosses {lv} in the measured range"
    if threshold <= smallest:
        return f"already above {lv} at the smallest measured size ({threshold:,.0f})"
    return f"threshold ({lv}): {strong}{threshold:,.0f}{strong} samples"


@dataclass
class ThresholdReport:
    """Everything said about one run's threshold at one level: the Threshold page's card and
    `python -m core analyze` print the same sentences from it."""

    level: float
    threshold: float | None
    largest_safe: float | None
    smallest_scale: float
    points: list[dict]  # scale, mean_degradation_pct, seeds, phase
    interval: tuple[float, float] | None  # 95 % bootstrap interval of the threshold
    interval_over: str  # what was resampled ("seeds", "probe items")
    interval_note: str  # why there is no interval
    fit: Fit | None  # best growth fit (lowest AIC)
    fit_note: str  # why there is no fit
    fits: list[Fit]
    raw: dict  # `analyze`'s dictionary (the CLI's --json)
    metric: str = "degradation_pct"  # which forgetting measure (`METRICS`)

    def verdict(self, strong: str = "") -> str:
        lv = metric_of(self.metric).level_text(self.level)
        return threshold_verdict(self.threshold, self.smallest_scale, self.level, strong, lv)

    def interval_text(self) -> str:
        if not self.interval:
            return self.interval_note
        return describe_interval(
            self.interval,
            self.interval_over,
            self.threshold or self.smallest_scale,
            self.smallest_scale,
        )

    def safe_text(self, strong: str = "") -> str:
        if not self.largest_safe:
            return "no measured size below the level"
        return f"largest measured size below it: {strong}{self.largest_safe:,.0f}{strong}"

    def fit_text(self, r2_digits: int = 2) -> str:
        f = self.fit
        if f is None:
            return self.fit_note
        return f"best growth fit: {f.name} (R² {f.r2:.{r2_digits}f}, AIC {f.aic:.1f})"


def threshold_report(
    points: pd.DataFrame,
    items: pd.DataFrame | None = None,
    level: float = 10.0,
    cutoffs=DEFAULT_CUTOFFS,
    n_boot: int = 1000,
    metric: str = "degradation_pct",
) -> ThresholdReport:
    """`analyze` of one run as a typed result. Raises ValueError without finished points or
    without values of `metric`."""
    res = analyze(points, items, level, cutoffs, n_boot, metric)
    fits = [Fit(f["name"], f["params"], f["r2"], f["aic"]) for f in res.get("fits", [])]
    ci = res.get("threshold_ci")
    return ThresholdReport(
        level=level,
        threshold=res["threshold_scale"],
        largest_safe=res["largest_safe_scale"],
        smallest_scale=float(min(p["scale"] for p in res["points"])),
        points=res["points"],
        interval=(float(ci[0]), float(ci[1])) if ci else None,
        interval_over=res.get("threshold_ci_over", ""),
        interval_note=res.get("threshold_ci_note", ""),
        fit=fits[0] if fits else None,
        fit_note=res.get("fit_note", ""),
        fits=fits,
        raw=res,
        metric=metric,
    )


@dataclass(frozen=True)
class MeasureAgreement:
    """Do the forgetting measures agree? One run's threshold and phases under each measure it
    has, side by side (`table`: one row per measure; `phases`: sizes x measures)."""

    table: pd.DataFrame  # metric, measure, threshold, interval_low, interval_high, largest_safe
    phases: pd.DataFrame  # index: scale; one column per measure title


def measure_agreement(
    points: pd.DataFrame,
    items: pd.DataFrame | None = None,
    level: float = 10.0,
    cutoffs=DEFAULT_CUTOFFS,
    n_boot: int = 300,
) -> MeasureAgreement:
    """`threshold_report` of one run under every measure of `METRICS` it has values of."""
    rows, phases = [], {}
    for name in available_metrics(points):
        rep = threshold_report(points, items, level, cutoffs, n_boot, name)
        lo, hi = rep.interval if rep.interval else (None, None)
        title = METRICS[name].title
        rows.append(
            dict(
                metric=name,
                measure=title,
                threshold=rep.threshold,
                interval_low=lo,
                interval_high=hi,
                largest_safe=rep.largest_safe,
            )
        )
        phases[title] = {p["scale"]: p["phase"] for p in rep.points}
    cols = ["metric", "measure", "threshold", "interval_low", "interval_high", "largest_safe"]
    ph = pd.DataFrame(phases)
    ph.index.name = "scale"
    return MeasureAgreement(pd.DataFrame(rows, columns=cols), ph.sort_index())


def curve_verdicts(curves: pd.DataFrame, by: str, level: float = 10.0) -> dict[str, str]:
    """One threshold sentence per curve of a per-scale table (`by`: its run column, `mean`: the
    mean degradation per scale), e.g. for the shipped reference sets."""
    out = {}
    for r, t in curves.groupby(by, sort=False):
        t = t.sort_values("scale")
        thr = threshold_scale(t["scale"], t["mean"], level)
        out[r] = threshold_verdict(thr, float(t["scale"].iloc[0]), level)
    return out


@dataclass
class McCurves:
    """Multiple-choice accuracy (%) per run and scale, and each run's accuracy before training."""

    per_scale: pd.DataFrame  # `per_scale` of accuracy in %
    before: pd.Series  # run_id -> accuracy before fine-tuning, %

    @property
    def empty(self) -> bool:
        return self.per_scale.empty


def mc_curves(points: pd.DataFrame) -> McCurves:
    """Accuracy on the multiple-choice questions in percent, over seeds, for every run that has
    it (runs without the metric contribute nothing)."""
    if "mc_acc_after" not in points:
        return McCurves(pd.DataFrame(columns=PER_SCALE_COLUMNS), pd.Series(dtype=float))
    mc = points.assign(mc_acc_pct=points["mc_acc_after"] * 100)
    before = mc.groupby("run_id")["mc_acc_before"].first().mul(100)
    return McCurves(per_scale(mc, "mc_acc_pct"), before.dropna())


def cross_domain_matrix(evals: pd.DataFrame, scale: int) -> pd.DataFrame:
    """Training domain × evaluation set: mean perplexity change (%) at one dataset size, over
    runs and seeds; the general probe first, then the domains alphabetically."""
    sub = evals[evals["scale"] == scale].copy()
    sub["eval"] = sub["eval_set"].str.replace("domain:", "", regex=False)
    m = sub.pivot_table(index="train_domain", columns="eval", values="change_pct", aggfunc="mean")
    cols = ["general"] + sorted(c for c in m.columns if c != "general")
    return m[[c for c in cols if c in m.columns]]


def run_summary(points: pd.DataFrame) -> pd.DataFrame:
    """One row per run for the Runs page: points stored, worst degradation, failed smoke tests,
    training time, and `method_summary`'s cost figures where the run has finished points."""
    if points.empty:
        return pd.DataFrame(
            columns=[
                "run_id",
                "points",
                "max_degradation",
                "smoke_failures",
                "train_seconds",
                "peak_mem_mb",
            ]
        )
    out = points.groupby("run_id").agg(
        points=("scale", "size"),
        max_degradation=("degradation_pct", "max"),
        smoke_failures=("smoke_ok", lambda s: int((s == False).sum())),  # noqa: E712
        train_seconds=("train_seconds", "sum"),
        peak_mem_mb=("peak_mem_mb", "max"),
    )
    cost = method_summary(points)
    cols = ["model_mem_mb", "disk_mb", "trainable_pct", "ms_per_step", "gen_tokens_per_s"]
    if not cost.empty:
        out = out.join(cost.set_index("run_id")[cols])
    return out.reset_index()


def percent_change(before: float, after: float) -> float:
    """(after - before) / before in percent."""
    return 100 * (after / before - 1)
