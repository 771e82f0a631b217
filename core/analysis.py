"""Numbers a user acts on, computed from stored points: per-scale statistics, phases, the
threshold scale, and log-space interpolation for the scale slider. Pure functions over
DataFrames; no streamlit, no SQL."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Phase cut-offs on general-knowledge degradation (%). Defaults follow our reading of seed 000:
# safe below 10 %, a threshold crossing up to 50 %, catastrophic beyond, exponential growth from
# about +1,000 % (its 2.5K-10K points) and collapse from about +10,000 % (its 25K-50K points).
PHASES = ("safe", "threshold", "catastrophic", "exponential", "collapse")
DEFAULT_CUTOFFS = (10.0, 50.0, 1000.0, 10000.0)
PHASE_COLORS = {
    "safe": "#2e7d32",
    "threshold": "#f9a825",
    "catastrophic": "#ef6c00",
    "exponential": "#c62828",
    "collapse": "#6a1b9a",
}
# Seed 000's deployment guidance: alert above 20 %, consider rollback above 50 %.
ALERT_PCT, ROLLBACK_PCT = 20.0, 50.0


def pct_to_ratio(pct):
    """Degradation % -> perplexity ratio after/before (the log axis the charts use)."""
    return 1.0 + np.asarray(pct, dtype=float) / 100.0


def ratio_to_pct(ratio):
    return (np.asarray(ratio, dtype=float) - 1.0) * 100.0


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


def per_scale(points: pd.DataFrame, metric: str = "degradation_pct") -> pd.DataFrame:
    """Mean, std, n, min, max and a 95 % t-interval of `metric` per (run, scale), over seeds.
    Only finished points count."""
    from scipy import stats

    ok = points[(points["status"] == "done") & points[metric].notna()]
    if ok.empty:
        return pd.DataFrame(
            columns=["run_id", "scale", "mean", "std", "n", "min", "max", "ci_low", "ci_high"]
        )
    g = ok.groupby(["run_id", "scale"])[metric]
    out = g.agg(["mean", "std", "count", "min", "max"]).reset_index().rename(columns={"count": "n"})
    out["std"] = out["std"].fillna(0.0)
    half = [
        stats.t.ppf(0.975, n - 1) * s / math.sqrt(n) if n > 1 else 0.0
        for n, s in zip(out["n"], out["std"])
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
    s = np.asarray(scales, dtype=float)
    v = np.asarray(pct, dtype=float)
    order = np.argsort(s)
    s, v = s[order], v[order]
    above = np.nonzero(v >= level)[0]
    if len(above) == 0:
        return None
    j = int(above[0])
    if j == 0:
        return float(s[0])
    lr = _log_ratio(np.array([v[j - 1], v[j]]))
    target = float(np.log(pct_to_ratio(level)))
    frac = (target - lr[0]) / (lr[1] - lr[0]) if lr[1] != lr[0] else 1.0
    return float(np.exp(np.log(s[j - 1]) + frac * (np.log(s[j]) - np.log(s[j - 1]))))


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
