"""Backtest the forecast on the shipped reference (Martz 2025 protocol, legal + financial):
fit on the sizes <= --upto (default 1,000), predict every larger measured size (2,500-10,000),
and report per size the forecast, its 95 % interval, the measurement, the errors and whether
the interval held the measurement. Not a speed benchmark: the numbers are forecast quality.

    python bench/forecast_backtest.py [--upto 1000] [--boot 500]

Writes bench/results/<date>-forecast-backtest.json (the reference's device, the date it ran
here, the command) and prints a table for docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from core import forecast, reference  # noqa: E402
from core.paths import git_commit  # noqa: E402


def form_errors(g, metric: str, upto: float) -> dict:
    """Every growth form fitted on the sizes <= upto, at the held-out sizes (no interval): which
    form would have been right in hindsight."""
    c = g[g["status"] == "done"].groupby("scale")[metric].mean()
    fit, held = c[c.index <= upto], c[c.index > upto]
    out = {}
    for m in forecast.MODELS:
        cv = forecast.fit_curve(m, fit.index.to_numpy(float), forecast.to_y(fit.values, metric))
        if cv is None:
            continue
        pred = forecast.from_y(cv.y(held.index.to_numpy(float)), metric)
        out[m] = {
            "pct": [float(v) for v in pred],
            "abs_error_points": float(np.median(np.abs(pred - held.values))),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upto", type=float, default=1000.0, help="fit on sizes <= this")
    ap.add_argument("--boot", type=int, default=500, help="bootstrap replicates")
    ap.add_argument("--set", default=reference.REF_NAME, help="shipped reference set")
    ap.add_argument("--metric", default="degradation_pct")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    pts = reference.points()
    pts = pts[pts["ref_set"] == a.set]
    runs = []
    for rid, g in pts.groupby("run_id", sort=True):
        bt = forecast.backtest(g, a.metric, upto=a.upto, n_boot=a.boot)
        per_form = form_errors(g, a.metric, a.upto)
        runs.append(
            {"run_id": rid, "run_name": str(g["run_name"].iloc[0]), **bt, "per_form": per_form}
        )
        print(f"{g['run_name'].iloc[0]} ({rid}): {forecast.backtest_text(bt)}")
        for r in bt.get("held_out", []):
            print(
                f"  {r['scale']:>7,}  measured {r['measured']:+9.1f}  forecast {r['pct']:+9.1f}"
                f"  [{r['lo']:+.1f}, {r['hi']:+.1f}]  {'inside' if r['inside'] else 'OUTSIDE'}"
            )
        for m, e in per_form.items():
            print(
                f"  form {m:<14} held-out {', '.join(f'{v:+.0f}' for v in e['pct'])}"
                f"  median |error| {e['abs_error_points']:,.0f} points"
            )
    result = {
        "what": f"forecast backtest on the shipped reference {a.set}: fit on sizes <= "
        f"{a.upto:,.0f}, predict the larger measured sizes ({a.metric})",
        "reference_device": reference.provenance(a.set).get("device", ""),
        "date": str(dt.date.today()),
        "commit": git_commit(),
        "ran_on": "CPU (this machine); forecasting only, no training",
        "command": " ".join(["python", "bench/forecast_backtest.py", *sys.argv[1:]]),
        "boot": a.boot,
        "runs": runs,
    }
    out = (
        Path(a.out)
        if a.out
        else ROOT / "bench" / "results" / f"{result['date']}-forecast-backtest.json"
    )
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
