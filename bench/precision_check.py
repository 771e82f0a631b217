"""Does the fast arithmetic change the science? Compare two databases of the same sweeps trained
in fp32 and in a fast arithmetic (bf16 or tf32) on real weights, point by point.

    python bench/precision_check.py --fp32 FP32.duckdb --fast BF16.duckdb --arith bf16 \
        --device "NVIDIA H200" --command "..." [--wall "fp32 legal 164.7" ...]

Runs are matched by domain (one run per domain and arithmetic); points by (domain, size, seed).
Writes bench/results/<date>-<device>-<arith>-vs-fp32-realweights.json: per domain and size the
mean and standard deviation over seeds of every forgetting measure in each arithmetic, the
paired differences, and, for the token-weighted measure, the shipped reference's fp32 numbers
beside them (measured elsewhere, earlier: a reproduction check).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import reference  # noqa: E402
from core.store import Store  # noqa: E402

MEASURES = [
    "degradation_pct",
    "degradation_stmt_pct",
    "kl_to_base",
    "general_ce_delta",
    "domain_improvement_pct",
    "mc_drop_pts",
]
KEY = ["domain", "scale", "seed"]


def _points(db: str, precision: str) -> pd.DataFrame:
    """The points of the database's runs trained in `precision` (a database may hold both)."""
    s = Store(db)
    ids = [r for r in s.list_runs().run_id if s.get_spec(r).precision == precision]
    return s.points_df(ids)


def _stats(df: pd.DataFrame) -> dict:
    g = df.groupby(["domain", "scale"])[MEASURES].agg(["mean", "std"]).round(3)
    out: dict = {}
    for (dom, scale), row in g.iterrows():
        out.setdefault(dom, {})[int(scale)] = {
            m: {"mean": row[(m, "mean")], "std": row[(m, "std")]} for m in MEASURES
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--fast", required=True)
    ap.add_argument("--arith", required=True, choices=["bf16", "tf32"])
    ap.add_argument("--device", required=True)
    ap.add_argument("--command", action="append", default=[])
    ap.add_argument("--wall", action="append", default=[], help="'ARITH DOMAIN SECONDS' (repeat)")
    ap.add_argument("--date", default=dt.date.today().isoformat())
    ap.add_argument("--ref-set", default=reference.REF_NAME)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()

    f32, fast = _points(a.fp32, "fp32"), _points(a.fast, a.arith)
    pair = f32.merge(fast, on=KEY, suffixes=("_fp32", "_fast"))
    if pair.empty:
        raise SystemExit("no (domain, size, seed) in common between the two databases")
    # the general perplexity after training, point by point: the number every measure starts from
    rel = (pair["general_ppl_after_fast"] / pair["general_ppl_after_fp32"] - 1).abs()
    mean_gap = {}
    for m in MEASURES:
        means = pair.groupby(["domain", "scale"])[[f"{m}_fp32", f"{m}_fast"]].mean()
        mean_gap[m] = round(float((means[f"{m}_fast"] - means[f"{m}_fp32"]).abs().max()), 3)
    ref = reference._load("points", (a.ref_set,))
    ref = ref[ref.scale.isin(f32.scale.unique())]
    ref_cmp = (
        ref.groupby(["domain", "scale"])["degradation_pct"]
        .agg(["mean", "std"])
        .round(2)
        .add_suffix("_reference")
        .join(
            f32.groupby(["domain", "scale"])["degradation_pct"]
            .agg(["mean", "std"])
            .round(2)
            .add_suffix("_fp32_now")
        )
        .reset_index()
    )
    result = {
        "date": a.date,
        "device": a.device,
        "commands": a.command,
        "what": f"the same sweeps on real weights (the embedded SmolLM2-135M) in fp32 and {a.arith}, "
        "compared point by point (same domain, size, seed)",
        "points_compared": int(len(pair)),
        "wall_s": [dict(zip(["arith", "domain", "seconds"], w.split())) for w in a.wall],
        "general_ppl_after_rel_diff": {
            "median": round(float(rel.median()), 5),
            "p90": round(float(rel.quantile(0.9)), 5),
            "max": round(float(rel.max()), 5),
        },
        "max_abs_gap_of_seed_means": mean_gap,
        "fp32": _stats(f32),
        a.arith: _stats(fast),
        "reference_check": {
            "set": a.ref_set,
            "note": "token-weighted degradation (%): the shipped reference (its own device and "
            "date, see its provenance) beside today's fp32 points",
            "rows": ref_cmp.to_dict("records"),
        },
    }
    slug = a.device.lower().replace("nvidia ", "").replace(" ", "-")
    out = Path(a.out) / f"{a.date}-cuda-{slug}-{a.arith}-vs-fp32-realweights.json"
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "points_compared",
                    "general_ppl_after_rel_diff",
                    "max_abs_gap_of_seed_means",
                )
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
