"""Server time of the app's interactions on a large database: every page opened (a page switch)
and the Threshold page's scale slider moved, through Streamlit's AppTest (the script's run on the
server; the browser adds its own drawing time).

    python bench/app_latency.py [--runs 200] [--scales 50] [--items 200] [--repeat 7]

Builds a database of `runs` finished runs x `scales` points (one seed) x `items` per-item rows
(the default: 200 runs, 10,000 points, 2 million item rows), written in bulk, then times each
page and slider moves. Writes bench/results/<date>-app-latency-cpu.json with `points`,
`slider_ms` (median), `page_switch_ms_max` (the slowest page's median) and every page's median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import runner  # noqa: E402
from core.config import preset  # noqa: E402
from core.paths import git_commit  # noqa: E402
from core.store import Store, now  # noqa: E402

# every page of the app (pages/*.py, not the helpers) that reads the database
PAGES = sorted(p.stem for p in (ROOT / "pages").glob("[!_]*.py") if p.stem != "about")


def build(db: Path, n_runs: int, n_scales: int, n_items: int) -> int:
    """Finished runs with plausible curves. Rows go in as DataFrames, one statement per table
    (the per-point writer would take an hour for 10,000 points)."""
    store = Store(db)
    rng = np.random.default_rng(0)
    scales = np.unique(np.geomspace(10, 50_000, n_scales).astype(int))
    pts, items = [], []
    for _ in range(n_runs):
        run_id = runner.create_run(store, preset("tiny-test", scales=tuple(int(s) for s in scales)))
        store.set_status(run_id, "done")
        growth = rng.uniform(0.2, 0.6)
        for s in scales:
            pct = 100 * ((s / 20) ** growth - 1) + rng.normal(0, 3)
            before = 30.0
            pts.append(
                dict(
                    run_id=run_id,
                    scale=int(s),
                    seed=0,
                    status="done",
                    general_ppl_before=before,
                    general_ppl_after=before * (1 + pct / 100),
                    degradation_pct=pct,
                    domain_ppl_before=80.0,
                    domain_ppl_after=20.0,
                    domain_improvement_pct=75.0,
                    smoke_ok=True,
                    steps=int(s),
                    train_seconds=1.0,
                    eval_seconds=1.0,
                    mc_acc_before=0.6,
                    mc_acc_after=0.55,
                    finished_at=now(),
                )
            )
            nb = rng.uniform(1, 5, n_items)
            items.append(
                pd.DataFrame(
                    dict(
                        run_id=run_id,
                        scale=int(s),
                        seed=0,
                        eval_set="general",
                        item=np.arange(n_items),
                        nll_before=nb,
                        nll_after=nb * (1 + pct / 100 * rng.uniform(0.5, 1.5, n_items)),
                        tokens=rng.integers(5, 20, n_items),
                    )
                )
            )
    p, it = pd.DataFrame(pts), pd.concat(items, ignore_index=True)
    with store.tx() as con:
        con.register("_p", p)
        con.execute(f"INSERT INTO points ({', '.join(p.columns)}) SELECT * FROM _p")
        con.register("_i", it)
        con.execute("INSERT INTO item_nll SELECT * FROM _i")
    return len(p)


def timed_runs(at, action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        action(at).run()
        times.append((time.perf_counter() - t) * 1000)
        if at.exception:
            raise RuntimeError(at.exception)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--scales", type=int, default=50)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    db = Path(tempfile.mkdtemp(prefix="lab-latency-")) / "lab.duckdb"
    t = time.perf_counter()
    n_points = build(db, args.runs, args.scales, args.items)
    print(f"built {n_points:,} points in {time.perf_counter() - t:.0f} s", flush=True)
    os.environ["FORGETTING_LAB_DB"] = str(db)
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    pages = {}
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()  # first visit: caches fill
        pages[page] = timed_runs(at, lambda a, p=page: a.switch_page(f"pages/{p}.py"), args.repeat)
        print(f"{page}: {pages[page]:.0f} ms", flush=True)

    at.switch_page("pages/threshold.py").run()
    slider = at.select_slider(key="scale_slider")
    values = list(slider.options)
    # AppTest reruns the whole script for any widget; in the browser a slider inside a fragment
    # reruns only the fragment, whose server time the page records (pages/_ui.timed_fragment).
    moves, full = [], []
    for i in range(args.repeat * 2):
        v = values[(i * 7) % len(values)]
        t = time.perf_counter()
        at.select_slider(key="scale_slider").set_value(int(str(v).replace(",", ""))).run()
        full.append((time.perf_counter() - t) * 1000)
        if at.exception:
            raise RuntimeError(at.exception)
        moves.append(at.session_state["_fragment_ms"]["read_off"])
    slider_ms = statistics.median(moves)
    print(
        f"slider move: {slider_ms:.0f} ms (fragment); whole page {statistics.median(full):.0f} ms"
    )

    result = {
        "date": dt.date.today().isoformat(),
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "commit": git_commit(),
        "command": "python bench/app_latency.py "
        + f"--runs {args.runs} --scales {args.scales} --items {args.items}",
        "what": "median server time per page switch (AppTest script run, after one warm-up "
        "visit per page) and per slider move on the Threshold page (the read-off fragment's "
        "own server time, which is what a slider move reruns in the browser; the whole page "
        "rerun beside it for reference)",
        "runs": args.runs,
        "points": n_points,
        "item_rows": n_points * args.items,
        "slider_ms": round(slider_ms, 1),
        "slider_whole_page_ms": round(statistics.median(full), 1),
        "page_switch_ms": {k: round(v, 1) for k, v in pages.items()},
        "page_switch_ms_max": round(max(pages.values()), 1),
        "goal": "issue 18: <= 250 ms per slider move and per page switch with 10,000 points",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['date']}-app-latency-cpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
