"""Server time of the app's interactions on a large database: every page opened (a page switch)
and the Threshold page's scale slider moved, through Streamlit's AppTest (the script's run on the
server; the browser adds its own drawing time).

    python bench/app_latency.py [--runs 200] [--scales 50] [--items 200] [--repeat 7]
    python bench/app_latency.py --cold [PAGE ...] [--suffix=-cold]

Builds a database of `runs` finished runs x `scales` points (one seed) x `items` per-item rows
(the default: 200 runs, 10,000 points, 2 million item rows), written in bulk, then times each
page and slider moves. Writes bench/results/<date>-app-latency-cpu.json with `points`,
`slider_ms` (median), `page_switch_ms_max` (the slowest page's median) and every page's median.

`--cold` times instead what a freshly started server costs: each page's first render
(`cold_first_render_ms`, every page, or those named) in a fresh Python process on a fresh lab
home with an empty database, so nothing is imported, cached or read yet; the shipped reference
sets are what the pages show. Writes bench/results/<date>-app-latency-cpu<suffix>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Only the standard library at the top: a --cold child process must import nothing before the
# page's first render does (numpy, pandas and the lab's modules are imported where used).
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# every page of the app (pages/*.py, not the helpers) that reads the database
PAGES = sorted(p.stem for p in (ROOT / "pages").glob("[!_]*.py") if p.stem != "about")


def build(db: Path, n_runs: int, n_scales: int, n_items: int) -> int:
    """Finished runs with plausible curves. Rows go in as DataFrames, one statement per table
    (the per-point writer would take an hour for 10,000 points)."""
    import numpy as np
    import pandas as pd

    from core import runner
    from core.config import preset
    from core.store import Store, now

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


def _cold_child(page: str) -> None:
    """In a fresh process (see `cold_first_render`): the page's first render, printed as JSON."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page(f"pages/{page}.py")
    t, c = time.perf_counter(), time.process_time()
    at.run()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    if at.exception:
        raise RuntimeError(at.exception)
    print(json.dumps({"wall_ms": round(wall * 1000, 1), "cpu_ms": round(cpu * 1000, 1)}))


def cold_first_render(page: str) -> dict:
    """One page's first render on a cold server: a fresh Python process (Streamlit imported, as
    a started server has it, nothing else), a fresh lab home with an empty database. The time
    is the AppTest script run: the page's imports, the reference files' reads, the analysis and
    the charts; `cpu_ms` is the process's CPU time over it (less sensitive to a shared machine's
    load than the wall time)."""
    env = {**os.environ, "FORGETTING_LAB_HOME": tempfile.mkdtemp(prefix="lab-cold-")}
    env.pop("FORGETTING_LAB_DB", None)
    out = subprocess.run(
        [sys.executable, __file__, "--cold-child", page],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cold_main(args) -> None:
    from core.paths import git_commit

    commit = (
        git_commit()
        or subprocess.run(  # a git worktree's .git is a file git_commit skips
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    pages = args.cold or PAGES
    load = [round(x, 2) for x in os.getloadavg()]
    cold = {}
    for page in pages:
        cold[page] = cold_first_render(page)
        print(f"{page}: {cold[page]['wall_ms']:.0f} ms ({cold[page]['cpu_ms']:.0f} ms CPU)")
    result = {
        "date": dt.date.today().isoformat(),
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "commit": commit,
        "command": "python bench/app_latency.py --cold "
        + " ".join(args.cold)
        + (f" --suffix={args.suffix}" if args.suffix else ""),
        "what": "each page's first render on a cold server: the AppTest script run in a fresh "
        "process (Streamlit imported, nothing else) on a fresh lab home with an empty database, "
        "so the page shows the shipped reference sets; wall and process CPU time, one run each",
        "load_average_1_5_15_min_before": load,
        "load_average_1_5_15_min_after": [round(x, 2) for x in os.getloadavg()],
        "cold_first_render_ms": {p: v["wall_ms"] for p, v in cold.items()},
        "cold_first_render_cpu_ms": {p: v["cpu_ms"] for p, v in cold.items()},
        "goal": "issue 18: a cold server's first render in a few seconds at most",
    }
    _write(result, args)


def _write(result: dict, args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['date']}-app-latency-cpu{args.suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--scales", type=int, default=50)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument(
        "--cold",
        nargs="*",
        choices=[*PAGES, "about"],
        metavar="PAGE",
        help="time each page's first render on a cold server instead (all pages, or those named)",
    )
    ap.add_argument(
        "--suffix", default="", help="appended to the result's file name (--suffix=-cold)"
    )
    ap.add_argument("--cold-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cold_child:
        return _cold_child(args.cold_child)
    if args.cold is not None:
        return cold_main(args)
    from streamlit.testing.v1 import AppTest

    from core.paths import git_commit

    db = Path(tempfile.mkdtemp(prefix="lab-latency-")) / "lab.duckdb"
    t = time.perf_counter()
    n_points = build(db, args.runs, args.scales, args.items)
    print(f"built {n_points:,} points in {time.perf_counter() - t:.0f} s", flush=True)
    os.environ["FORGETTING_LAB_DB"] = str(db)
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
    _write(result, args)


if __name__ == "__main__":
    main()
