"""Is the background worker itself slower than the CLI, with no app and no browser? quick-cpu
three ways, alternating: the CLI in the foreground; the queued run drained by `core worker` in
the caller's session; and the same worker in a session of its own (`start_new_session`, as the
app spawns it: with the kernel's autogroup scheduling a new session is its own scheduling group).

    python bench/worker_spawn.py --reps 2

Writes bench/results/<date>-worker-spawn-cpu.json: per run the wall time and its split from the
run's own timestamps (as bench/app_overhead.py splits it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.app_overhead import _now, split  # noqa: E402
from core.paths import git_commit  # noqa: E402

QUEUE = (
    "import sys; from core.store import Store; from core.config import preset; "
    "from core import runner; runner.create_run(Store(sys.argv[1]), preset('quick-cpu'), 'queued')"
)
MODES = ("cli", "worker", "worker-own-session")


def run(env: dict, db: str, mode: str) -> dict:
    e = dict(env, FORGETTING_LAB_DB=db)
    if mode == "cli":
        cmd = [sys.executable, "-m", "core", "run", "--preset", "quick-cpu"]
    else:
        subprocess.run([sys.executable, "-c", QUEUE, db], cwd=ROOT, env=e, check=True)
        cmd = [sys.executable, "-m", "core", "worker", "--db", db]
    launched, t = _now(), time.perf_counter()
    subprocess.run(
        cmd,
        cwd=ROOT,
        env=e,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=mode == "worker-own-session",
    )
    wall = time.perf_counter() - t
    return {"mode": mode, "wall_s": round(wall, 1), **split(db, launched, _now())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="lab-spawn-")
    env = dict(os.environ, FORGETTING_LAB_HOME=home, PYTHONUNBUFFERED="1")
    env.pop("FORGETTING_LAB_DB", None)
    subprocess.run([sys.executable, "-m", "core", "prepare"], cwd=ROOT, env=env, check=True)
    rows = []
    for i in range(args.reps):
        for mode in MODES:
            rows.append(run(env, f"{home}/{mode}-{i}.duckdb", mode))
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "date": dt.date.today().isoformat(),
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "commit": git_commit(),
        "command": f"python bench/worker_spawn.py --reps {args.reps}",
        "what": __doc__.splitlines()[0],
        "runs": rows,
    }
    path = ROOT / "bench" / "results" / f"{result['date']}-worker-spawn-cpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
