"""The Pareto explorer's data: one row per (run, dataset size) over every stored run and the
shipped reference, the metrics a user trades off, and the Pareto front of any two of them.
Pure functions over DataFrames; no streamlit, no SQL."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .states import DONE

# column -> (label, better): "min" when lower is better
METRICS: dict[str, tuple[str, str]] = {
    "degradation_pct": ("general degradation (perplexity change, %)", "min"),
    "mc_drop_pts": ("multiple-choice drop (points)", "min"),
    "domain_improvement_pct": ("domain improvement (perplexity drop, %)", "max"),
    "peak_mem_mb": ("peak memory (MB)", "min"),
    "trainable_params": ("trainable parameters", "min"),
    "train_seconds": ("train time (s)", "min"),
    "gen_tokens_per_s": ("generation tokens/s", "max"),
    "kl_to_base": ("KL to the base model", "min"),
    "degradation_stmt_pct": ("general degradation per statement (%)", "min"),
    "general_ce_delta": ("general cross-entropy change", "min"),
    "intruder_dims": ("intruder dimensions (Shuttleworth et al. 2024)", "min"),
}
# other metric columns a newer store may add are picked up by name
_GENERIC = re.compile(r"(^kl_|_pct$|_delta$|_pts$)")
_NOT_METRICS = {"scale", "seed", "rank", "steps", "stop_step", "smoke_min_new_tokens"}
KEYS = ["run_id", "label", "source", "method", "rank", "replay", "domain", "scale"]


def assemble(own: pd.DataFrame, ref: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Finished points of the user's runs (`own`) and the reference (`ref`), averaged over seeds
    per (run, size); numeric metric columns are kept whatever their names."""
    parts = []
    for src, df in (("yours", own), ("reference", ref)):
        if df is None or df.empty:
            continue
        d = df[df["status"] == DONE].copy() if "status" in df else df.copy()
        d["source"] = src
        parts.append(d)
    if not parts:
        return pd.DataFrame(columns=KEYS)
    df = pd.concat(parts, ignore_index=True)
    if "rank" not in df:
        df["rank"] = np.nan
    if "method" not in df:
        df["method"] = "lora"
    # a run stored before replay existed trained without it
    df["replay"] = df["replay"].astype(float).fillna(0.0) if "replay" in df else 0.0
    df["label"] = df["run_id"].map(lambda r: labels.get(r, r))
    cols = metric_columns(df)
    grouped = df.groupby(KEYS, dropna=False)[cols].mean()
    out = grouped.reset_index()
    at = pd.MultiIndex.from_frame(out[["run_id", "scale"]])
    by_point = df.groupby(["run_id", "scale"])
    out["seeds"] = by_point.size().reindex(at).to_numpy()
    # which seeds each point averages (a point's generations are stored per seed) and, for the
    # reference, the shipped set it comes from: what a click on the point looks up
    seed_ids = df["seed"] if "seed" in df else pd.Series(0, index=df.index)
    out["seed_list"] = (
        seed_ids.groupby([df["run_id"], df["scale"]])
        .agg(lambda s: tuple(sorted({int(v) for v in s.dropna()})))
        .reindex(at)
        .to_numpy()
    )
    ref_set = df["ref_set"] if "ref_set" in df else pd.Series(None, index=df.index, dtype=object)
    out["ref_set"] = ref_set.groupby(df["run_id"]).first().reindex(out["run_id"]).to_numpy()
    return out


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns present with at least one value: the known ones in their order, then
    any other numeric column named like a metric (e.g. a newer store's)."""
    known = [c for c in METRICS if c in df and df[c].notna().any()]
    extra = [
        c
        for c in df.columns
        if c not in METRICS
        and c not in _NOT_METRICS
        and _GENERIC.search(c)
        and pd.api.types.is_numeric_dtype(df[c])
        and df[c].notna().any()
    ]
    return known + extra


def metric_label(col: str) -> str:
    return METRICS.get(col, (col.replace("_", " "), "min"))[0]


def better(col: str) -> str:
    return METRICS.get(col, ("", "min"))[1]


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for the rows no other row beats on both `x` and `y` (each in its better direction;
    ties count as not beaten). Rows missing either value are never on the front."""
    ok = df[[x, y]].notna().all(axis=1).to_numpy()
    vx = df[x].to_numpy(dtype=float) * (1 if better(x) == "min" else -1)
    vy = df[y].to_numpy(dtype=float) * (1 if better(y) == "min" else -1)
    on = np.zeros(len(df), dtype=bool)
    idx = np.nonzero(ok)[0]
    for i in idx:
        others = idx[idx != i]
        dominated = (
            (vx[others] <= vx[i])
            & (vy[others] <= vy[i])
            & ((vx[others] < vx[i]) | (vy[others] < vy[i]))
        )
        on[i] = not dominated.any()
    return pd.Series(on, index=df.index)


def series_name(row, with_replay: bool = False) -> str:
    """The symbol group: method, with the LoRA rank when there is one, and with the replay
    fraction when `with_replay` (the points shown differ in it): "lora r8 · replay 0.1"."""
    r = row.get("rank")
    name = (
        f"{row['method']} r{int(r)}"
        if pd.notna(r) and row["method"] in ("lora", "qlora")
        else str(row["method"])
    )
    replay = row.get("replay")
    if with_replay and replay is not None and pd.notna(replay):
        name += f" · replay {float(replay):g}"
    return name


def differs_in_replay(df: pd.DataFrame) -> bool:
    """Whether the rows of `df` were trained with more than one replay fraction."""
    return "replay" in df and df["replay"].nunique() > 1


def front_table(data: pd.DataFrame, front: pd.Series, x: str, y: str) -> pd.DataFrame:
    """The points on the front as the page tables them, sorted by `x`: the run, its domain,
    method, rank, replay (only when the points differ in it), the dataset size, which seeds the
    row averages (two rows of one run and size differ in nothing else) and the two metrics.
    Column names are keys of core/labels.py."""
    d = data[front.reindex(data.index).fillna(False).to_numpy(dtype=bool)]
    seeds = d["seed_list"] if "seed_list" in d else pd.Series([()] * len(d), index=d.index)
    out = pd.DataFrame(
        {
            "run": d["label"],
            "domain": d["domain"],
            "method": d["method"],
            "rank": d["rank"],
            "replay": d["replay"],
            "scale": d["scale"],
            "seed_ids": [", ".join(map(str, s)) if isinstance(s, tuple) else "" for s in seeds],
        },
        index=d.index,
    )
    if not differs_in_replay(data):
        out = out.drop(columns="replay")
    for c in dict.fromkeys([x, y]):
        out[c] = d[c]
    return out.sort_values(x).reset_index(drop=True)


@dataclass(frozen=True)
class PickedPoint:
    """The (run, size) behind a point clicked in the chart: where its smoke-test answers live
    (`source` "yours": the database; "reference": the shipped set `ref_set`) and its seeds."""

    run_id: str
    label: str
    source: str
    ref_set: str | None
    scale: int
    seeds: tuple[int, ...]


def picked_point(data: pd.DataFrame, selection) -> PickedPoint | None:
    """The point of `data` (`assemble`'s rows) that a chart selection names, or None.
    `selection`: the selection state `st.plotly_chart(on_select=...)` returns (a dict with
    "points", each carrying the customdata of `charts.pareto_figure`: label, size, run id).
    With several points selected, the first one that is still in `data` wins."""
    sel = selection.get("selection", selection) if selection else None
    for p in (sel or {}).get("points", []) or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if not isinstance(cd, (list, tuple)) or len(cd) < 3:
            continue  # the front line, or a chart drawn without run ids
        try:
            scale = int(float(cd[1]))
        except (TypeError, ValueError):
            continue
        rows = data[(data["run_id"] == cd[2]) & (data["scale"] == scale)]
        if rows.empty:
            continue  # filtered away since the click
        r = rows.iloc[0]
        seeds = r.get("seed_list")
        ref_set = r.get("ref_set")
        return PickedPoint(
            run_id=str(r["run_id"]),
            label=str(r["label"]),
            source=str(r["source"]),
            ref_set=str(ref_set) if isinstance(ref_set, str) and ref_set else None,
            scale=scale,
            seeds=tuple(seeds) if isinstance(seeds, tuple) and seeds else (0,),
        )
    return None
