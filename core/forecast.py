"""Forecast a run's forgetting beyond its largest measured dataset size — a projection, never a
measurement. Pure functions over the stored points; no streamlit, no SQL.

Four growth forms are fitted to the per-scale means of any metric column (default
`degradation_pct`); for a percent change the fit is on y = log(1 + pct/100), the log of the
perplexity ratio the charts use, otherwise on the value itself:

- power law, y = a + b·ln n: Kalajdzievski 2024 (forgetting is a power law in fine-tuning steps
  and parameters); at a fixed recipe steps are proportional to n;
- exponential, y = a + b·n: the exponential phase claimed by Martz 2025, scale-dependent
  forgetting;
- saturating, y = E − A·n^(−α): the form of Zhang et al. 2024's fine-tuning law
  L = A·X^(−α)·D^(−β) + E, with one size axis;
- rise and fall, y = a + b·ln n + c·(ln n)²: can peak and come down (our financial reference
  peaks at 1,000 samples and falls).

The form is chosen by out-of-sample error (fit without the last one and last two measured sizes,
predict them), not by in-sample fit. The 95 % interval combines three sources of error, by Monte
Carlo over a fixed-seed RNG (deterministic):

- noise: a bootstrap that resamples seeds (or, with one seed, the fit's residuals);
- the choice of form: every bootstrap replicate chooses its form anew;
- the extrapolation error of the whole procedure (the wrong form, a bend past the fitted range),
  measured on the run's own sizes with a rolling origin (Tashman 2000): fit and choose on the
  first k sizes, predict every larger measured size, for every k that allows a choice. Each
  residual (log ratio) is divided by its distance in decades, log10(n / s_k); the band assumes
  the error grows linearly with the distance, with a scale estimated as the root mean square of
  those per-decade residuals and a Student-t law with as many degrees of freedom as residuals
  (too few for a split-conformal quantile, Vovk et al. 2005, at 95 %). Each replicate adds one
  such draw times its distance past the last measured size. The residuals overlap (one origin
  predicts several sizes), so the t law is, if anything, too light.

With fewer than MIN_RESIDUALS rolling-origin forecasts the extrapolation error is not measured:
the result says so (`interval.extrapolation.note`, `interval_note`) and the interval covers noise
and the choice of form only, too narrow by construction. `backtest` runs the whole procedure with
the last sizes held out and reports its error next to every forecast."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import sources
from .analysis import pct_to_ratio, ratio_to_pct
from .states import DONE

MODELS = ("power law", "exponential", "saturating", "rise and fall")
MODEL_SOURCES = {
    "power law": sources.cite("004"),
    "exponential": sources.cite("000") + " (its claimed exponential phase)",
    "saturating": sources.cite("005"),
    "rise and fall": "ours: a peak then a fall (the financial reference)",
}
N_PARAMS = {"power law": 2, "exponential": 2, "saturating": 3, "rise and fall": 3}
MIN_SIZES = 4  # fit on >= 3 sizes with one held out
MIN_RESIDUALS = 3  # rolling-origin forecasts needed to measure the extrapolation error
Y_CAP = 30.0  # log ratio e^30: keeps runaway extrapolations finite


class ForecastError(ValueError):
    """The run cannot be forecast (too few sizes, bad target): the message says why."""


def is_pct(metric: str) -> bool:
    return metric.endswith("_pct")


def to_y(v, metric: str) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return np.log(np.maximum(pct_to_ratio(v), 1e-9)) if is_pct(metric) else v


def from_y(y, metric: str) -> np.ndarray:
    y = np.clip(np.asarray(y, dtype=float), -Y_CAP, Y_CAP)
    return ratio_to_pct(np.exp(y)) if is_pct(metric) else y


@dataclass
class Curve:
    name: str
    p: tuple

    def y(self, n) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        ln = np.log(n)
        if self.name == "power law":
            a, b = self.p
            out = a + b * ln
        elif self.name == "exponential":
            a, b = self.p
            out = a + b * n
        elif self.name == "saturating":
            e, a, alpha = self.p
            out = e - a * n ** (-alpha)
        else:
            a, b, c = self.p
            out = a + b * ln + c * ln**2
        return np.clip(out, -Y_CAP, Y_CAP)


def fit_curve(name: str, n, y) -> Curve | None:
    """Least-squares fit of one form to (n, y); None when it cannot be fitted."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(np.unique(n)) < N_PARAMS[name]:
        return None
    if name == "power law":
        b, a = np.polyfit(np.log(n), y, 1)
        return Curve(name, (float(a), float(b)))
    if name == "exponential":
        b, a = np.polyfit(n, y, 1)
        return Curve(name, (float(a), float(b)))
    if name == "rise and fall":
        if len(np.unique(n)) < 3:
            return None
        c, b, a = np.polyfit(np.log(n), y, 2)
        return Curve(name, (float(a), float(b), float(c)))
    from scipy.optimize import minimize_scalar

    # For a fixed exponent the form is linear in (E, A): profile the exponent out.
    design = np.ones((len(n), 2))

    def solve(alpha: float):
        design[:, 1] = -(n ** (-alpha))
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        return coef, float(np.sum((design @ coef - y) ** 2))

    res = minimize_scalar(
        lambda al: solve(al)[1], bounds=(0.01, 3.0), method="bounded", options={"xatol": 1e-6}
    )
    if not res.success:
        return None
    (e, amp), _ = solve(float(res.x))
    return Curve(name, (float(e), float(amp), float(res.x)))


def oos_errors(n, y, holdouts=(1, 2)) -> dict[str, float]:
    """Each form's root-mean-square out-of-sample error (in fitting space) when fitted without the
    last k measured sizes and asked to predict them, averaged over k in `holdouts` (only those
    that leave enough sizes to fit). Forms that cannot be fitted get inf."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    order = np.argsort(n)
    n, y = n[order], y[order]
    out = {}
    for m in MODELS:
        errs = []
        for k in holdouts:
            if len(n) - k < N_PARAMS[m] + 1:
                continue
            c = fit_curve(m, n[:-k], y[:-k])
            if c is None:
                continue
            errs.append(float(np.sqrt(np.mean((c.y(n[-k:]) - y[-k:]) ** 2))))
        out[m] = float(np.mean(errs)) if errs else math.inf
    return out


def choose(n, y) -> tuple[str, dict[str, float]]:
    """The form with the lowest out-of-sample error, and every form's error."""
    errs = oos_errors(n, y)
    best = min(MODELS, key=lambda m: (errs[m], N_PARAMS[m]))
    if not math.isfinite(errs[best]):
        raise ForecastError(f"no growth form could be fitted with {len(n)} measured sizes")
    return best, errs


def _mean_curve(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    if metric not in points.columns:
        raise ForecastError(f"--metric: the run has no column {metric!r}")
    ok = points[(points["status"] == DONE) & points[metric].notna()]
    return ok.groupby("scale", as_index=False)[metric].mean().sort_values("scale")


def _seed_matrix(points: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    ok = points[(points["status"] == DONE) & points[metric].notna()]
    if ok["seed"].nunique() < 2:
        return None
    m = ok.pivot_table(index="seed", columns="scale", values=metric).dropna(axis=1)
    return m if len(m) >= 2 and m.shape[1] >= MIN_SIZES else None


def _replicates(points: pd.DataFrame, metric: str, n_boot: int, seed: int):
    """(scales, y) per bootstrap replicate, and what was resampled."""
    rng = np.random.default_rng(seed)
    m = _seed_matrix(points, metric)
    if m is not None:
        scales = m.columns.to_numpy(dtype=float)
        vals = m.to_numpy()
        reps = []
        for _ in range(n_boot):
            pick = rng.integers(0, len(vals), len(vals))
            reps.append(to_y(vals[pick].mean(0), metric))
        return scales, reps, f"seeds ({len(vals)})"
    c = _mean_curve(points, metric)
    scales = c["scale"].to_numpy(dtype=float)
    y = to_y(c[metric], metric)
    best, _ = choose(scales, y)
    fit = fit_curve(best, scales, y).y(scales)
    resid = y - fit
    resid = resid - resid.mean()
    # residuals shrink with the fit's parameters; inflate them back (the usual df correction)
    dof = max(len(y) - N_PARAMS[best], 1)
    resid = resid * math.sqrt(len(y) / dof)
    reps = [fit + rng.choice(resid, len(resid), replace=True) for _ in range(n_boot)]
    return scales, reps, f"fit residuals ({len(y)} sizes, one seed)"


def target_sizes(last: float, to: float) -> list[float]:
    """The sizes forecast: the 1-2.5-5 series past the last measured size, and `to` itself."""
    series = [m * 10**e for e in range(1, 9) for m in (1.0, 2.5, 5.0)]
    return sorted({s for s in series if last < s < to} | {float(to)})


def extrapolation_error(n, y) -> dict:
    """The whole procedure's extrapolation error measured on the run's own sizes (a rolling
    origin): for every origin k >= MIN_SIZES, choose and fit a form on the first k sizes exactly as
    `forecast` does and predict every larger measured size; each residual (fitting space) is
    divided by its distance log10(n / s_k) in decades. `per_decade` is the root mean square of
    those per-decade errors (mean zero assumed, so a systematic bias widens the band too), None
    with fewer than MIN_RESIDUALS of them: then the error is not measured, and `note` says so."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    order = np.argsort(n)
    n, y = n[order], y[order]
    z, dist = [], []
    for k in range(MIN_SIZES, len(n)):
        try:
            m, _ = choose(n[:k], y[:k])
        except ForecastError:
            continue
        d = np.log10(n[k:] / n[k - 1])
        z.extend((y[k:] - fit_curve(m, n[:k], y[:k]).y(n[k:])) / d)
        dist.extend(d)
    out = {
        "method": "rolling origin inside the measured range, Student-t on per-decade residuals",
        "residuals": len(z),
        "max_distance_decades": float(max(dist)) if dist else 0.0,
        "per_decade": None,
        "bias_per_decade": None,
        "measured": len(z) >= MIN_RESIDUALS,
    }
    if out["measured"]:
        zs = np.asarray(z)
        out["per_decade"] = float(np.sqrt(np.mean(zs**2)))
        out["bias_per_decade"] = float(np.mean(zs))
    else:
        out["note"] = (
            f"too few measured sizes ({len(n)}) to measure the extrapolation error out of sample "
            f"({len(z)} rolling-origin forecasts, {MIN_RESIDUALS} needed): the interval covers "
            "seed noise and the choice of form only and is too narrow; measure more sizes"
        )
    return out


def _model_draws(ext: dict, n_boot: int, seed: int) -> np.ndarray:
    """Per replicate, one draw of the extrapolation error per decade: the measured scale times a
    Student-t variate with as many degrees of freedom as residuals (the predictive law of a new
    residual when the scale is estimated from them); zeros when the error is not measured."""
    if not ext.get("measured"):
        return np.zeros(n_boot)
    rng = np.random.default_rng(seed + 1)
    return ext["per_decade"] * rng.standard_t(ext["residuals"], n_boot)


def _boot_curves(points: pd.DataFrame, metric: str, n_boot: int, seed: int):
    """The seed (or residual) bootstrap with the form chosen anew in every replicate: the fitted
    curve and the form of each replicate that could be fitted, and what was resampled."""
    bs_scales, reps, over = _replicates(points, metric, n_boot, seed)
    curves = []
    for yr in reps:
        try:
            m, _ = choose(bs_scales, yr)
        except ForecastError:
            continue
        curves.append(fit_curve(m, bs_scales, yr))
    return curves, over


def _band(curves, draws, last: float, sizes) -> np.ndarray:
    """Replicate predictions (fitting space) at `sizes`: each replicate's curve plus its model
    error draw times the distance in decades past the last measured size."""
    sizes = np.asarray(sizes, dtype=float)
    dist = np.log10(np.maximum(sizes, last) / last)
    return np.array([cv.y(sizes) + dr * dist for cv, dr in zip(curves, draws)])


def _crossing(curve: Curve, lo: float, hi: float, level_y: float) -> float:
    grid = np.geomspace(lo, hi, 400)
    above = np.nonzero(curve.y(grid) >= level_y)[0]
    return float(grid[above[0]]) if len(above) else math.inf


def _threshold(point: Curve, curves, draws, last: float, to: float, level: float, metric: str):
    """The projected threshold crossing and its 95 % interval over the replicates, or a note."""
    level_y = float(to_y([level], metric)[0])
    grid = np.geomspace(last, to, 400)
    cross = []
    for yg in _band(curves, draws, last, grid):
        above = np.nonzero(yg >= level_y)[0]
        cross.append(float(grid[above[0]]) if len(above) else math.inf)
    t = _crossing(point, last, to, level_y)
    arr = np.asarray(cross, dtype=float)
    if not (math.isfinite(t) or np.isfinite(arr).any()):
        return None, f"not reached below {to:,.0f} in any replicate"
    big = np.where(np.isfinite(arr), arr, 1e300)  # inf - inf would make percentiles NaN
    lo_t, hi_t = (
        [v if v < 1e300 else math.inf for v in np.percentile(big, [2.5, 97.5])]
        if len(arr)
        else (math.inf, math.inf)
    )
    return {
        "level": level,
        "scale": t if math.isfinite(t) else None,
        "lo": float(lo_t) if math.isfinite(lo_t) else None,
        "hi": float(hi_t) if math.isfinite(hi_t) else None,
        "not_reached_share": float(np.mean(~np.isfinite(arr))) if len(arr) else 1.0,
    }, None


def forecast(
    points: pd.DataFrame,
    metric: str = "degradation_pct",
    to: float = 50000,
    level: float = 10.0,
    n_boot: int = 200,
    seed: int = 0,
    with_backtest: bool = True,
) -> dict:
    """Forecast `metric` from the run's measured sizes up to `to`: the chosen form, predictions
    with 95 % intervals (seeds, the choice of form and the extrapolation error measured on the
    run's own sizes), the threshold crossing (for `degradation_pct`-like metrics, when not yet
    crossed) and the backtest of the same procedure with the last sizes held out."""
    c = _mean_curve(points, metric)
    scales = c["scale"].to_numpy(dtype=float)
    if len(scales) < MIN_SIZES:
        raise ForecastError(
            f"a forecast needs at least {MIN_SIZES} measured dataset sizes; the run has "
            f"{len(scales)}"
        )
    last = float(scales.max())
    if not (isinstance(to, int | float) and math.isfinite(to)) or to <= last:
        raise ForecastError(
            f"--to must be larger than the largest measured size ({last:,.0f}); got {to}"
        )
    y = to_y(c[metric], metric)
    best, errs = choose(scales, y)
    point = fit_curve(best, scales, y)
    targets = target_sizes(last, float(to))
    ext = extrapolation_error(scales, y)
    curves, over = _boot_curves(points, metric, n_boot, seed)
    draws = _model_draws(ext, len(curves), seed)
    preds = _band(curves, draws, last, targets)
    lo = from_y(np.percentile(preds, 2.5, axis=0), metric)
    hi = from_y(np.percentile(preds, 97.5, axis=0), metric)
    mid = from_y(point.y(targets), metric)
    chosen = [cv.name for cv in curves]
    out: dict = {
        "metric": metric,
        "model": best,
        "model_source": MODEL_SOURCES[best],
        "params": list(point.p),
        "oos_error": {m: (e if math.isfinite(e) else None) for m, e in errs.items()},
        "measured": [{"scale": int(s), "value": float(v)} for s, v in zip(c["scale"], c[metric])],
        "predictions": [
            {"scale": int(s), "pct": float(p), "lo": float(a), "hi": float(b)}
            for s, p, a, b in zip(targets, mid, lo, hi)
        ],
        "interval": {
            "level": 0.95,
            "over": over,
            "replicates": len(preds),
            "model_share": {m: chosen.count(m) / max(len(chosen), 1) for m in MODELS},
            "extrapolation": ext,
        },
        "threshold": None,
        "projection": True,
    }
    out["interval_note"] = interval_text(out)
    if (c[metric] >= level).any():
        out["threshold_note"] = f"already measured at or above {level:g} (no forecast needed)"
    else:
        out["threshold"], note = _threshold(point, curves, draws, last, float(to), level, metric)
        if note:
            out["threshold_note"] = note
    if with_backtest:
        out["backtest"] = backtest(points, metric, n_boot=n_boot, seed=seed)
    return out


def backtest(
    points: pd.DataFrame,
    metric: str = "degradation_pct",
    upto: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict:
    """Run the forecast on the sizes <= `upto` (default: all but the last two measured sizes) and
    compare with what was measured beyond: per held-out size the forecast, interval and
    measurement; the median absolute error in log-ratio (or value) space and in points of the
    metric, and the share of measurements inside the 95 % interval."""
    c = _mean_curve(points, metric)
    scales = c["scale"].to_numpy(dtype=float)
    if upto is None:
        if len(scales) < MIN_SIZES + 1:
            return {"note": f"too few measured sizes to hold any out ({len(scales)})"}
        upto = float(scales[-3] if len(scales) >= MIN_SIZES + 2 else scales[-2])
    train = points[points["scale"] <= upto]
    held = c[c["scale"] > upto]
    if held.empty:
        return {"note": f"nothing measured beyond {upto:,.0f}"}
    try:
        f = forecast(
            train,
            metric,
            to=float(held["scale"].max()),
            n_boot=n_boot,
            seed=seed,
            with_backtest=False,
        )
    except ForecastError as e:
        return {"note": f"cannot backtest: {e}"}
    # predictions exactly at the held-out sizes
    rows = []
    sub = _refit_at(train, metric, held["scale"].to_numpy(dtype=float), n_boot, seed)
    for (s, v), (p, lo, hi) in zip(zip(held["scale"], held[metric]), sub):
        rows.append(
            {
                "scale": int(s),
                "measured": float(v),
                "pct": float(p),
                "lo": float(lo),
                "hi": float(hi),
                "inside": bool(lo <= v <= hi),
            }
        )
    yv = to_y([r["measured"] for r in rows], metric)
    yp = to_y([r["pct"] for r in rows], metric)
    return {
        "fit_upto": int(upto),
        "model": f["model"],
        "held_out": rows,
        "abs_error_log": float(np.median(np.abs(yp - yv))),
        "abs_error_points": float(np.median([abs(r["pct"] - r["measured"]) for r in rows])),
        "coverage": float(np.mean([r["inside"] for r in rows])),
        "space": "log perplexity ratio" if is_pct(metric) else metric,
        "extrapolation": f["interval"]["extrapolation"],
        "interval_note": f["interval_note"],
    }


def _refit_at(points, metric, sizes, n_boot, seed):
    """Forecast and 95 % interval at exactly `sizes` (same procedure as `forecast`)."""
    c = _mean_curve(points, metric)
    scales = c["scale"].to_numpy(dtype=float)
    y = to_y(c[metric], metric)
    best, _ = choose(scales, y)
    mid = from_y(fit_curve(best, scales, y).y(sizes), metric)
    curves, _ = _boot_curves(points, metric, n_boot, seed)
    draws = _model_draws(extrapolation_error(scales, y), len(curves), seed)
    preds = _band(curves, draws, float(scales.max()), sizes)
    lo = from_y(np.percentile(preds, 2.5, axis=0), metric)
    hi = from_y(np.percentile(preds, 97.5, axis=0), metric)
    return list(zip(mid, lo, hi))


def interval_text(out: dict) -> str:
    """One line: what the 95 % interval covers, and a warning when the extrapolation error could
    not be measured on the run's own sizes (then the interval is too narrow)."""
    iv = out.get("interval") or {}
    ext = iv.get("extrapolation") or {}
    base = f"95 % interval over {iv.get('over', '?')} and the choice of form"
    if not ext.get("measured"):
        return f"{base}; WARNING: {ext.get('note', 'extrapolation error not measured')}"
    space = "log ratio" if is_pct(out.get("metric", "")) else out.get("metric", "")
    return (
        f"{base}, plus the extrapolation error measured on {ext['residuals']} rolling-origin "
        f"forecasts inside the measured range (±{ext['per_decade']:.2f} {space} per decade, "
        f"Student-t, measured up to {ext['max_distance_decades']:.1f} decade ahead; farther, "
        "its linear growth is assumed), growing with the distance past the last measured size"
    )


def backtest_text(bt: dict | None, short: bool = False) -> str:
    """How the same procedure did on this run's own held-out largest sizes: one line, or with
    `short` a few words (the chart's legend entry and hover)."""
    if not bt or "held_out" not in bt:
        return "backtest: " + str((bt or {}).get("note") or "not run")
    if short:
        n = len(bt["held_out"])
        return (
            f"backtest from ≤ {bt['fit_upto']:,}: median error {bt['abs_error_points']:,.0f} pts, "
            f"{round(bt['coverage'] * n)}/{n} inside the interval"
        )
    sizes = ", ".join(f"{r['scale']:,}" for r in bt["held_out"])
    return (
        f"backtest (fit on sizes <= {bt['fit_upto']:,}, predict {sizes}): median error "
        f"{bt['abs_error_points']:,.1f} points ({bt['abs_error_log']:.2f} in {bt['space']}), "
        f"{bt['coverage']:.0%} of the measurements inside the 95 % interval"
    )


def threshold_text(out: dict) -> str:
    """Where the forecast crosses the threshold level, with its 95 % interval; else why there is
    no crossing (`threshold_note`); empty when neither."""
    t = out.get("threshold")
    if t:
        at = f"{t['scale']:,.0f} samples" if t["scale"] is not None else "beyond the range"
        lo = f"{t['lo']:,.0f}" if t["lo"] is not None else "?"
        hi = f"{t['hi']:,.0f}" if t["hi"] is not None else "beyond the range"
        return f"threshold {t['level']:g} % projected at {at} (95 %: {lo}–{hi})"
    if out.get("threshold_note"):
        return f"threshold: {out['threshold_note']}"
    return ""


def summary(out: dict, sep: str = ". ") -> str:
    """The forecast in a few sentences: the form and why it was chosen, the threshold crossing
    (or why none), the backtest and what the interval covers, joined by `sep` (one line each
    with "\\n"). The one wording of a forecast: the Threshold page's caption and the command
    line's `describe` both use it."""
    parts = [
        f"{out['model']} form ({out['model_source']}), chosen by out-of-sample error",
        threshold_text(out),
        backtest_text(out.get("backtest")),
        out.get("interval_note") or interval_text(out),
    ]
    return sep.join(p for p in parts if p)


def describe(out: dict) -> str:
    """The forecast as text for the command line (`summary`, one line each, then the projected
    values); says that it is a projection."""
    head = f"PROJECTION (not a measurement) of {out['metric']} with the "
    lines = [head + summary(out, "\n")]
    for p in out["predictions"]:
        lines.append(f"  {p['scale']:>8,}  {p['pct']:+10.1f}   [{p['lo']:+.1f}, {p['hi']:+.1f}]")
    return "\n".join(lines)
