"""How long the training loop waits for one progress write, side by side in one invocation:
`Store.record_progress_many` (DataFrames, one statement per table) against the row-by-row
statements it replaced (kept here only to measure them).

    python bench/progress_writes.py

The local backend's training loop writes progress about once a second: every point in flight,
with the step losses since the last write. On a GPU the packed trainer keeps 15-22 points in
flight at 15-40 steps per second, i.e. 15-40 losses per point per write. Writes
bench/results/<date>-progress-writes-<host>.json.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import runner  # noqa: E402
from core.config import preset  # noqa: E402
from core.paths import git_commit  # noqa: E402
from core.store import Store, now  # noqa: E402


def row_by_row(store: Store, run_id: str, items: list[tuple]) -> None:
    """The previous implementation: one statement per point and per loss."""
    t = now()
    with store.tx() as con:
        for scale, seed, phase, step, total, loss, losses in items:
            key = [run_id, scale, seed]
            con.execute(
                """INSERT OR REPLACE INTO progress VALUES (?, ?, ?, ?, ?, ?, ?,
                   coalesce((SELECT started_at FROM progress WHERE run_id = ? AND scale = ?
                   AND seed = ?), ?), ?)""",
                [*key, phase, step, total, loss, *key, t, t],
            )
            if losses:
                con.executemany(
                    "INSERT OR REPLACE INTO step_losses VALUES (?, ?, ?, ?, ?)",
                    [[*key, s, v] for s, v in losses],
                )
        con.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", [t, run_id])


def main() -> None:
    d = Path(tempfile.mkdtemp())
    store = Store(d / "bench.duckdb")
    run_id = runner.create_run(store, preset("tiny-test", scales=(4,)), "running")
    points, repeats = 15, 5
    store.record_progress_many(
        run_id, [(sc, 1, "training", 0, 10**6, None, []) for sc in range(points)], restart=True
    )
    step = 0
    table = {}
    for per_point in (1, 16, 40):
        for name, write in (
            ("row_by_row", lambda items: row_by_row(store, run_id, items)),
            ("dataframe", lambda items: store.record_progress_many(run_id, items)),
        ):
            times = []
            for _ in range(repeats):
                items = [
                    (
                        sc,
                        1,
                        "training",
                        step + per_point,
                        10**6,
                        0.5,
                        [(step + i + 1, 0.5) for i in range(per_point)],
                    )
                    for sc in range(points)
                ]
                step += per_point
                t0 = time.perf_counter()
                write(items)
                times.append((time.perf_counter() - t0) * 1000)
            table[f"{name}@{per_point}"] = round(statistics.median(times), 1)
            print(
                f"{name:10s} {points} points x {per_point:3d} losses: {table[f'{name}@{per_point}']} ms"
            )
    result = {
        "date": dt.date.today().isoformat(),
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "commit": git_commit(),
        "command": "python bench/progress_writes.py",
        "points_in_flight": points,
        "median_ms_per_write": table,
        "notes": "key = implementation@losses per point per write; median of 5 writes into one "
        "DuckDB file on local disk (each write opens a connection, as the engine does).",
    }
    out = ROOT / "bench" / "results"
    host = "cpu"
    path = out / f"{result['date']}-progress-writes-{host}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
