"""The first curve a new user waits for: `python -m core run --preset quick-cpu` end to end on a
fresh lab home (GGUF conversion of the embedded model included), as a subprocess.

    python bench/quick_cpu.py [--before REV] [--repeat N]

Writes bench/results/<date>-quick-cpu.json: wall time, the time from launch to the first stored
point, the split into model conversion/load + base measurement, training and evaluation (from
the stored points), peak memory, the curve, and the time `python -m core prepare` takes to
convert the model on its own (a speed reference for the machine). `--before REV` also runs the
preset as it was at git revision REV (a temporary worktree, same Python environment), one after
the other in the same invocation, for a side-by-side ratio. `--repeat N` measures N times,
alternating with REV when given (now, before, now, before, ...), so that a machine that gets
busier or quieter affects both alike; the file then keeps every repetition and their medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.paths import git_commit  # noqa: E402
from core.store import Store  # noqa: E402


def _run(args: list[str], cwd: Path, home: Path) -> float:
    env = dict(os.environ, FORGETTING_LAB_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("FORGETTING_LAB_DB", None)
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def measure(cwd: Path) -> dict:
    """One quick-cpu run from a fresh lab home, with the checkout at `cwd`."""
    home = Path(tempfile.mkdtemp(prefix="lab-quick-"))
    launched = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    wall = _run(["run", "--preset", "quick-cpu"], cwd, home)
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    pts = Store(home / "lab.duckdb").points_df().sort_values("scale")
    first = pts.finished_at.min()
    train, evals = float(pts.train_seconds.sum()), float(pts.eval_seconds.sum())
    return {
        "wall_s": round(wall, 1),
        "first_point_s": round((first - launched).total_seconds(), 1),
        "split_s": {
            "load_and_base": round(wall - train - evals, 1),
            "train": round(train, 1),
            "eval": round(evals, 1),
        },
        "max_rss_mb_so_far": round(rss_mb, 1),
        "points": {
            int(r.scale): {
                "train_s": round(r.train_seconds, 1),
                "eval_s": round(r.eval_seconds, 1),
                "degradation_pct": round(r.degradation_pct, 1),
                "mc_acc_after": round(r.mc_acc_after, 3)
                if r.mc_acc_after == r.mc_acc_after
                else None,
            }
            for r in pts.itertuples()
        },
    }


def _summary(runs: list[dict]) -> dict:
    """Medians of wall and first-point time over repetitions, with every repetition kept."""
    return {
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 1),
        "first_point_s": round(statistics.median(r["first_point_s"] for r in runs), 1),
        "wall_s_each": [r["wall_s"] for r in runs],
        "first_point_s_each": [r["first_point_s"] for r in runs],
        "repetitions": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="also run quick-cpu as it was at this git revision")
    ap.add_argument("--repeat", type=int, default=1, help="measurements of each (default 1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    convert_s = _run(["prepare"], ROOT, Path(tempfile.mkdtemp(prefix="lab-prepare-")))
    print(f"model conversion (core prepare, fresh lab home): {convert_s:.1f} s", flush=True)
    result = {
        "date": dt.date.today().isoformat(),
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "commit": git_commit(),
        "command": "python bench/quick_cpu.py"
        + (f" --before {args.before}" if args.before else "")
        + (f" --repeat {args.repeat}" if args.repeat > 1 else ""),
        "what": "python -m core run --preset quick-cpu on a fresh lab home (conversion of the "
        "embedded model included), as a subprocess; split from the stored points",
        "prepare_s": round(convert_s, 1),
    }
    tree = None
    if args.before:
        tree = Path(tempfile.mkdtemp(prefix="quick-before-")) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(tree), args.before],
            cwd=ROOT,
            check=True,
        )
    now, before = [], []
    try:
        for i in range(args.repeat):
            now.append(measure(ROOT))
            print(f"now #{i + 1}:", json.dumps(now[-1]), flush=True)
            if tree is not None:
                before.append({"rev": args.before, **measure(tree)})
                print(f"before #{i + 1}:", json.dumps(before[-1]), flush=True)
    finally:
        if tree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    result["now"] = now[0] if len(now) == 1 else _summary(now)
    if before:
        result["before"] = before[0] if len(before) == 1 else _summary(before)
        result["speedup_wall"] = round(result["before"]["wall_s"] / result["now"]["wall_s"], 2)
    result["goal"] = (
        "issue 23: <= 3 min on a slow 2-core machine (<= 2 min on a faster one), first point <= 60 s"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-x{args.repeat}" if args.repeat > 1 else ""  # keeps a same-day single run's file
    path = out / f"{result['date']}-quick-cpu{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
