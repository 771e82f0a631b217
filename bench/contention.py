"""Is the engine's slowdown under a watching browser tab plain CPU sharing, or an amplified
stall of torch's threads? quick-cpu from the CLI, alone and beside a synthetic load that takes
20 % of one core (20 ms busy every 100 ms, a separate process), once with one torch thread, and
with OpenMP's passive wait policy (alone and beside the load).

    python bench/contention.py

Writes bench/results/<date>-contention-cpu.json: per variant the wall time and its split from
the run's own timestamps (as bench/app_overhead.py splits it). Run order: alone, load,
load passive, load with one thread, alone passive, alone again (the two plain "alone" runs give
the machine's spread).
"""

from __future__ import annotations

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

LOAD = (
    "import time\nwhile True:\n    t = time.perf_counter()\n"
    "    while time.perf_counter() - t < 0.02: pass\n    time.sleep(0.08)\n"
)

# OpenMP threads that sleep at once when they wait, instead of spinning on their core (libgomp's
# default spins for a while): is a spinning torch thread what amplifies a browser's load?
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


def run(env: dict, home: str, tag: str, loads: int, extra: dict | None = None) -> dict:
    procs = [subprocess.Popen([sys.executable, "-c", LOAD]) for _ in range(loads)]
    e = dict(env, FORGETTING_LAB_DB=f"{home}/{tag}.duckdb", **(extra or {}))
    launched, t = _now(), time.perf_counter()
    try:
        subprocess.run(
            [sys.executable, "-m", "core", "run", "--preset", "quick-cpu"],
            cwd=ROOT,
            env=e,
            check=True,
            capture_output=True,
        )
    finally:
        for p in procs:
            p.kill()
    wall = time.perf_counter() - t
    return {"tag": tag, "wall_s": round(wall, 1), **split(e["FORGETTING_LAB_DB"], launched, _now())}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suffix", default="", help="appended to the result file's name")
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="lab-contend-")
    env = dict(os.environ, FORGETTING_LAB_HOME=home, PYTHONUNBUFFERED="1")
    env.pop("FORGETTING_LAB_DB", None)
    subprocess.run([sys.executable, "-m", "core", "prepare"], cwd=ROOT, env=env, check=True)
    rows = [
        run(env, home, "alone", 0),
        run(env, home, "load20", 1),
        run(env, home, "load20_passive", 1, PASSIVE),
        run(env, home, "load20_one_thread", 1, {"OMP_NUM_THREADS": "1"}),
        run(env, home, "alone_passive", 0, PASSIVE),
        run(env, home, "alone_again", 0),
    ]
    result = {
        "date": dt.date.today().isoformat(),
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "commit": git_commit(),
        "command": " ".join(["python bench/contention.py", *sys.argv[1:]]),
        "what": __doc__.splitlines()[0],
        "runs": rows,
    }
    path = ROOT / "bench" / "results" / f"{result['date']}-contention-cpu{a.suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
