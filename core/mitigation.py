"""The mitigation planner: how much replay (general sentences mixed into training, Johnson 2025,
silent forgetting) keeps forgetting below a level at a dataset size, and what it costs in domain
improvement. Read from the user's own measured points, never extrapolated.

- `families`: groups of runs that differ in their replay fraction only, as far as the export
  tells (same model, method, domain, LoRA rank, learning rate and source), with two or more
  replay fractions among their finished points.
- `grid`: a family's (replay x size) tables of mean degradation and mean domain improvement over
  seeds (seeds of runs with the same fraction are pooled).
- `plan`: the smallest replay fraction that keeps degradation below X % at N samples, and its
  cost in domain improvement (points of the domain perplexity drop, against the smallest measured
  fraction, normally 0). Degradation is interpolated in (log size, log perplexity ratio), as
  `analysis.interpolate` reads a curve, and then linearly in the replay fraction; domain
  improvement linearly in log size and in the fraction. Its uncertainty is a 95 % bootstrap
  interval resampling whole seeds (a seed is one measured surface; the same resample in every
  cell), so it needs two or more seeds measured in every cell; with fewer there is no interval
  and the answer says so. When the measured fractions or sizes do not bracket the question the
  answer is "cannot say", with the reason.

Pure functions over the export's columns (`run_id`, `model`, `method`, `rank`, `learning_rate`,
`domain`, `replay`, `scale`, `seed`, `status`, the metric, `domain_improvement_pct`); no
streamlit, no SQL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .analysis import interpolate, metric_of, pct_to_ratio
from .states import DONE

IMPROVEMENT = "domain_improvement_pct"
N_BOOT = 1000
# What makes runs one family besides the replay fraction (columns of the export; `source` is
# "yours" or the shipped reference set, so a user's runs never mix with the reference).
FAMILY_KEYS = ("source", "model", "method", "domain", "rank", "learning_rate")
# The planner's outcomes.
ANSWER = "answer"  # interpolated between two measured fractions (or measured exactly)
NONE_NEEDED = "no replay needed"  # without replay degradation is already below the level
AT_MOST = "at most"  # the smallest measured fraction (> 0) suffices; smaller ones not measured
CANNOT_SAY = "cannot say"  # the measured fractions or sizes do not bracket the question


@dataclass(frozen=True)
class Family:
    """Runs that differ in their replay fraction only (as far as the export tells)."""

    source: str
    model: str
    method: str
    domain: str
    rank: float | None
    learning_rate: float | None
    replays: tuple[float, ...]
    run_ids: tuple[str, ...]

    def label(self) -> str:
        rank = f" r{int(self.rank)}" if self.rank is not None else ""
        lr = f" · lr {self.learning_rate:g}" if self.learning_rate is not None else ""
        fractions = ", ".join(f"{r:g}" for r in self.replays)
        own = f"{self.model} · {self.method}{rank} · {self.domain}{lr} — replay {fractions}"
        if self.source == "yours":
            return own
        from .reference import set_title

        return f"reference: {set_title(self.source)} · {own}"


@dataclass(frozen=True)
class ReplayGrid:
    """A family's measured surface. `degradation` and `improvement`: replay (rows) x size
    (columns), means over seeds (degradation in % of perplexity change; a measure in nats is
    averaged in nats and shown as its perplexity-ratio equivalent); `seeds`: how many seeds each
    cell has (0: not measured). `cells`: one row per (replay, scale, seed) with the metric in its
    own unit and the domain improvement, what the bootstrap resamples."""

    family: Family
    metric: str
    replays: tuple[float, ...]
    scales: tuple[int, ...]
    degradation: pd.DataFrame
    improvement: pd.DataFrame
    seeds: pd.DataFrame
    cells: pd.DataFrame = field(repr=False)


@dataclass(frozen=True)
class Plan:
    """The planner's answer to "the smallest replay fraction that keeps degradation below
    `level` % at `scale` samples, and what it costs in domain improvement"."""

    status: str  # ANSWER | NONE_NEEDED | AT_MOST | CANNOT_SAY
    level: float
    scale: float
    metric: str
    replay: float | None = None
    replay_interval: tuple[float, float] | None = None  # 95 %; high = inf: beyond the measured
    beyond_share: float = 0.0  # resamples in which no measured fraction sufficed
    improvement: float | None = None  # domain improvement (%) at (replay, scale)
    improvement_base: float | None = None  # ... at the smallest measured fraction
    base_replay: float | None = None
    cost: float | None = None  # improvement_base - improvement, points (positive = lost)
    cost_interval: tuple[float, float] | None = None
    bracket: tuple[float, float] | None = None  # measured fractions the answer lies between
    sizes: tuple[float, float] | None = None  # measured sizes around `scale`
    degradation_by_replay: tuple[tuple[float, float], ...] = ()  # (fraction, % at `scale`)
    uncertainty: str = ""
    reason: str = ""  # why CANNOT_SAY
    notes: tuple[str, ...] = ()

    def interval_text(self) -> str:
        if self.replay_interval is None:
            return self.uncertainty
        lo, hi = self.replay_interval
        if math.isinf(lo):
            return (
                f"95 % interval: beyond the largest measured fraction in most resamples "
                f"({self.uncertainty})"
            )
        top = f"{hi:.2g}" if math.isfinite(hi) else "beyond the largest measured fraction"
        share = (
            f"; in {self.beyond_share:.0%} of resamples no measured fraction sufficed"
            if self.beyond_share > 0
            else ""
        )
        return f"95 % interval {lo:.2g}–{top}, {self.uncertainty}{share}"

    def cost_text(self) -> str:
        if self.cost is None:
            return "its cost in domain improvement cannot be read (not measured in every cell)"
        what = "costs" if self.cost >= 0 else "gains"
        base = f"replay {self.base_replay:g}"
        head = f"it {what} {abs(self.cost):.1f} points of domain improvement"
        if abs(self.cost) < 0.05:  # "gains 0.0 points" read as a finding
            head = "it leaves the domain improvement as it was"
        text = f"{head} ({self.improvement_base:+.1f} % at {base} → {self.improvement:+.1f} %"
        if self.cost_interval is not None:
            lo, hi = self.cost_interval
            text += f"; cost 95 % interval {lo:+.1f} to {hi:+.1f} points"
        return text + ")"

    def where_text(self) -> str:
        if self.sizes is None:
            return ""
        a, b = self.sizes
        size = (
            f"at the measured size {a:,.0f}"
            if a == b
            else f"between the measured sizes {a:,.0f} and {b:,.0f} (log size)"
        )
        if self.bracket is None or self.bracket[0] == self.bracket[1]:
            return f"Read {size}."
        d = dict(self.degradation_by_replay)
        lo, hi = self.bracket
        return (
            f"Interpolated between the measured fractions {lo:g} ({d[lo]:+.1f} %) and "
            f"{hi:g} ({d[hi]:+.1f} %), {size}."
        )

    def sentence(self) -> str:
        """The answer in one paragraph, with its uncertainty and where it was read."""
        n = f"{self.scale:,.0f}"
        measure = metric_of(self.metric).title
        if self.status == CANNOT_SAY:
            return f"Cannot say: {self.reason}"
        if self.status == NONE_NEEDED:
            d = dict(self.degradation_by_replay)[0.0]
            text = (
                f"At {n} samples no replay is needed: without it the {measure} is {d:+.1f} %, "
                f"below {self.level:g} %."
            )
        elif self.status == AT_MOST:
            d = dict(self.degradation_by_replay)[self.replay]
            text = (
                f"At {n} samples the smallest measured replay fraction, {self.replay:g}, already "
                f"keeps the {measure} below {self.level:g} % ({d:+.1f} %); whether less would do "
                "cannot be said: no smaller fraction was measured."
            )
        else:
            text = (
                f"At {n} samples a replay fraction of {self.replay:.2g} keeps the {measure} below "
                f"{self.level:g} % ({self.interval_text()}); {self.cost_text()}."
            )
        return " ".join(p for p in (text, self.where_text(), *self.notes) if p)


# -- families and the grid ---------------------------------------------------------------------
def _with_keys(points: pd.DataFrame) -> pd.DataFrame:
    """Finished points with a known replay fraction, with the family columns filled in."""
    if points is None or points.empty or "replay" not in points:
        return pd.DataFrame()
    df = points[(points["status"] == DONE) & points["replay"].notna()].copy()
    if "ref_set" in df:
        df["source"] = df["ref_set"].where(df["ref_set"].notna(), "yours")
    else:
        df["source"] = "yours"
    for col in FAMILY_KEYS:
        if col not in df:
            df[col] = np.nan
    df["replay"] = df["replay"].astype(float)
    return df


def _none(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def families(points: pd.DataFrame) -> list[Family]:
    """Groups of runs whose finished points differ in replay fraction only, with at least two
    fractions; the family with the most fractions (then the most runs) first."""
    df = _with_keys(points)
    if df.empty:
        return []
    out = []
    for key, g in df.groupby(list(FAMILY_KEYS), dropna=False, sort=True):
        replays = tuple(sorted(g["replay"].unique()))
        if len(replays) < 2:
            continue
        k = dict(zip(FAMILY_KEYS, key))
        rank, lr = _none(k["rank"]), _none(k["learning_rate"])
        out.append(
            Family(
                source=str(k["source"]),
                model=str(k["model"]),
                method=str(k["method"]),
                domain=str(k["domain"]),
                rank=float(rank) if rank is not None else None,
                learning_rate=float(lr) if lr is not None else None,
                replays=tuple(float(r) for r in replays),
                run_ids=tuple(sorted(g["run_id"].unique())),
            )
        )
    return sorted(out, key=lambda f: (-len(f.replays), -len(f.run_ids), f.label()))


def _members(df: pd.DataFrame, family: Family) -> pd.DataFrame:
    return df[df["run_id"].isin(family.run_ids)]


def grid(points: pd.DataFrame, family: Family, metric: str = "degradation_pct") -> ReplayGrid:
    """The family's (replay x size) tables of mean degradation, mean domain improvement and
    seeds per cell. Points of several runs with the same fraction are pooled; a seed measured
    twice in one cell counts once (its mean)."""
    met = metric_of(metric)
    df = _members(_with_keys(points), family)
    df = df[df[metric].notna()]
    if df.empty:
        raise ValueError(f"the family has no finished points with {metric}")
    cols = [metric, IMPROVEMENT] if IMPROVEMENT in df else [metric]
    cells = df.groupby(["replay", "scale", "seed"])[cols].mean().reset_index()
    if IMPROVEMENT not in cells:
        cells[IMPROVEMENT] = np.nan
    by = cells.groupby(["replay", "scale"])
    mean = by[metric].mean().unstack("scale")
    deg = pd.DataFrame(met.to_pct(mean.to_numpy()), index=mean.index, columns=mean.columns)
    imp = by[IMPROVEMENT].mean().unstack("scale").reindex_like(deg)
    n = by["seed"].nunique().unstack("scale").reindex_like(deg).fillna(0).astype(int)
    return ReplayGrid(
        family=family,
        metric=metric,
        replays=tuple(float(r) for r in deg.index),
        scales=tuple(int(s) for s in deg.columns),
        degradation=deg,
        improvement=imp,
        seeds=n,
        cells=cells,
    )


# -- the planner -------------------------------------------------------------------------------
def _log_ratio(pct: float) -> float:
    return float(np.log(max(float(pct_to_ratio(pct)), 1e-9)))


def _at_size(scales: np.ndarray, deg: np.ndarray, imp: np.ndarray, n: float):
    """(degradation, improvement, (lo, hi) measured sizes) at size n of one fraction's curve,
    or None when n is outside its measured sizes."""
    ok = np.isfinite(deg)
    s, d, i = scales[ok], deg[ok], imp[ok]
    if len(s) == 0 or n < s.min() or n > s.max():
        return None
    at = interpolate(s, d, n)
    if at["kind"] == "measured":
        gain = float(i[np.isclose(s, n)][0])
    else:
        gain = float(np.interp(np.log(n), np.log(s), i))
    return at["value"], gain, (at["lo"], at["hi"])


def _solve(surface: dict[float, tuple], level: float, n: float) -> dict:
    """The planner on one surface {fraction: (scales, degradation %, improvement %)}."""
    at = {r: v for r, v in ((r, _at_size(*c, n)) for r, c in sorted(surface.items())) if v}
    if not at:
        return {"status": CANNOT_SAY, "why": "size"}
    rs = sorted(at)
    deg = {r: at[r][0] for r in rs}
    gain = {r: at[r][1] for r in rs}
    base = rs[0]
    out = {"deg": deg, "base": base, "gain_base": gain[base], "sizes": at[base][2]}
    below = [r for r in rs if deg[r] < level]
    if not below:
        return {**out, "status": CANNOT_SAY, "why": "replay"}
    k = rs.index(below[0])
    if k == 0:
        status = NONE_NEEDED if base == 0 else AT_MOST
        return {**out, "status": status, "replay": base, "gain": gain[base], "bracket": None}
    a, b = rs[k - 1], rs[k]
    ya, yb, target = _log_ratio(deg[a]), _log_ratio(deg[b]), _log_ratio(level)
    t = (target - ya) / (yb - ya) if yb != ya else 1.0
    t = min(max(t, 0.0), 1.0)
    return {
        **out,
        "status": ANSWER,
        "replay": a + t * (b - a),
        "gain": gain[a] + t * (gain[b] - gain[a]),
        "bracket": (a, b),
    }


@dataclass(frozen=True)
class _Cube:
    """Per-seed cells as arrays: value[seed, replay, scale] (NaN: not measured)."""

    seeds: np.ndarray
    replays: np.ndarray
    scales: np.ndarray
    metric: np.ndarray  # in the metric's own unit
    improvement: np.ndarray


def _cube(cells: pd.DataFrame, metric: str) -> _Cube:
    seeds = np.sort(cells["seed"].unique())
    replays = np.sort(cells["replay"].unique()).astype(float)
    scales = np.sort(cells["scale"].unique()).astype(float)
    shape = (len(seeds), len(replays), len(scales))
    m, i = np.full(shape, np.nan), np.full(shape, np.nan)
    a = np.searchsorted(seeds, cells["seed"].to_numpy())
    b = np.searchsorted(replays, cells["replay"].to_numpy(dtype=float))
    c = np.searchsorted(scales, cells["scale"].to_numpy(dtype=float))
    m[a, b, c] = cells[metric].to_numpy(dtype=float)
    i[a, b, c] = cells[IMPROVEMENT].to_numpy(dtype=float)
    return _Cube(seeds, replays, scales, m, i)


def _weighted_mean(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean over seeds (axis 0) weighted by w, ignoring NaN cells; NaN where no weight."""
    ok = np.isfinite(v)
    ww = w[:, None, None] * ok
    den = ww.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (np.where(ok, v, 0.0) * ww).sum(0) / den, np.nan)


def _surface(cube: _Cube, metric: str, w: np.ndarray) -> dict:
    """{fraction: (scales, degradation %, improvement %)} of the seeds weighted by `w` (ones:
    the measured means; counts of a resample: a bootstrap replicate)."""
    m = metric_of(metric).to_pct(_weighted_mean(cube.metric, w))
    i = _weighted_mean(cube.improvement, w)
    return {float(r): (cube.scales, m[k], i[k]) for k, r in enumerate(cube.replays)}


def _common_seeds(cube: _Cube) -> np.ndarray:
    """Positions of the seeds measured in every (replay, size) cell that has any seed."""
    measured = np.isfinite(cube.metric)
    cells = measured.any(0)
    return np.nonzero((measured | ~cells).all(axis=(1, 2)))[0]


def plan(g: ReplayGrid, level: float, scale: float, n_boot: int = N_BOOT, seed: int = 0) -> Plan:
    """The smallest replay fraction that keeps `g.metric` below `level` % at `scale` samples,
    and its cost in domain improvement, with a 95 % bootstrap interval over seeds (see the
    module's note)."""
    if not level > -100:
        raise ValueError("the level must be a perplexity change above -100 %")
    if not scale > 0:
        raise ValueError("the dataset size must be positive")
    base = dict(level=float(level), scale=float(scale), metric=g.metric)
    cube = _cube(g.cells, g.metric)
    sol = _solve(_surface(cube, g.metric, np.ones(len(cube.seeds))), level, scale)
    if sol["status"] == CANNOT_SAY and sol["why"] == "size":
        lo, hi = min(g.scales), max(g.scales)
        return Plan(
            CANNOT_SAY,
            **base,
            reason=f"{scale:,.0f} samples is outside the measured sizes ({lo:,}–{hi:,}) of "
            "every replay fraction; the planner does not extrapolate (the Threshold page's "
            "forecast projects one run's curve beyond its largest size).",
        )
    by_replay = tuple((r, float(v)) for r, v in sol["deg"].items())
    missing = sorted(set(g.replays) - set(sol["deg"]))
    notes = []
    if missing:
        notes.append(
            "Not read at this size (not measured around it): replay "
            + ", ".join(f"{r:g}" for r in missing)
            + "."
        )
    if sol["status"] == CANNOT_SAY:
        top = max(sol["deg"])
        return Plan(
            CANNOT_SAY,
            **base,
            degradation_by_replay=by_replay,
            sizes=sol["sizes"],
            reason=f"no measured replay fraction keeps it below {level:g} % at {scale:,.0f} "
            f"samples (the largest, {top:g}, gives {sol['deg'][top]:+.1f} %); more replay might, "
            "but it was not measured.",
            notes=tuple(notes),
        )
    r = sol["replay"]
    later = [x for x in sol["deg"] if x > r and sol["deg"][x] >= level]
    if later:
        notes.append(
            "Degradation is not monotone in the replay fraction here: "
            + ", ".join(f"{x:g} gives {sol['deg'][x]:+.1f} %" for x in later)
            + ", above the level again (seed noise, or too few seeds)."
        )
    gain, gain_base = sol["gain"], sol["gain_base"]
    cost = gain_base - gain if np.isfinite(gain) and np.isfinite(gain_base) else None
    interval = cost_interval = None
    beyond, uncertainty = 0.0, ""
    if sol["status"] == ANSWER:
        interval, cost_interval, beyond, uncertainty = _bootstrap(
            _sizes_only(cube, sol["sizes"]), g.metric, level, scale, n_boot, seed
        )
    return Plan(
        sol["status"],
        **base,
        replay=float(r),
        replay_interval=interval,
        beyond_share=beyond,
        improvement=float(gain) if cost is not None else None,
        improvement_base=float(gain_base) if cost is not None else None,
        base_replay=sol["base"],
        cost=float(cost) if cost is not None else None,
        cost_interval=cost_interval if cost is not None else None,
        bracket=sol["bracket"],
        sizes=sol["sizes"],
        degradation_by_replay=by_replay,
        uncertainty=uncertainty,
        notes=tuple(notes),
    )


def _sizes_only(cube: _Cube, sizes: tuple) -> _Cube:
    """The cube at the measured sizes the answer was read between: a seed missing at some other
    size (a run stopped before its largest size) does not take the interval away."""
    keep = np.isin(cube.scales, np.asarray(sizes, dtype=float))
    if not keep.any():
        return cube
    return _Cube(
        cube.seeds,
        cube.replays,
        cube.scales[keep],
        cube.metric[..., keep],
        cube.improvement[..., keep],
    )


def _bootstrap(cube: _Cube, metric: str, level: float, scale: float, n_boot: int, seed: int):
    """95 % intervals of the fraction and of its cost, resampling whole seeds (the same
    resample in every cell). Resamples in which no measured fraction suffices count as +inf."""
    common = _common_seeds(cube)
    if len(common) < 2:
        why = (
            "one seed: no interval (launch two or more seeds for one)"
            if len(cube.seeds) < 2
            else "no interval: no two seeds were measured in every cell"
        )
        return None, None, 0.0, why
    rng = np.random.default_rng(seed)
    replays, costs = [], []
    for _ in range(n_boot):
        w = np.zeros(len(cube.seeds))
        np.add.at(w, rng.choice(common, len(common)), 1.0)
        sol = _solve(_surface(cube, metric, w), level, scale)
        if sol["status"] == CANNOT_SAY:
            replays.append(np.inf)
            continue
        replays.append(sol["replay"])
        c = sol["gain_base"] - sol["gain"]
        if np.isfinite(c):
            costs.append(c)
    s = np.asarray(replays, dtype=float)
    lo, hi = np.percentile(s, [2.5, 97.5])
    cost_iv = tuple(float(x) for x in np.percentile(costs, [2.5, 97.5])) if costs else None
    what = f"bootstrap over {len(common)} seeds, {n_boot} resamples"
    return (float(lo), float(hi)), cost_iv, float(np.mean(~np.isfinite(s))), what


def planner_command(preset_name: str = "quick-cpu") -> str:
    """The CLI command that measures a replay sweep a planner can read (three seeds: an
    interval)."""
    return f"python -m core run --preset {preset_name} --replay 0,0.05,0.1,0.3 --seeds 0,1,2"
