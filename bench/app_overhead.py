"""What a browser tab costs a run: the quick-cpu preset from the CLI, then the same preset started
from the app (as `make app` serves it: `streamlit run app.py` with the shipped
.streamlit/config.toml) with a headless Chromium tab left open on the Launch page until the run
is done. Writes bench/results/<date>-app-overhead-cpu.json with `cli_s`, `app_watched_s`,
`ratio`, `server_cpu_pct` (the Streamlit server's mean CPU while the tab watched) and
`browser_cpu_pct` (all of Chromium's processes), each in % of one core. Chromium runs at a
desktop user's priority (`--browser-priority user`, the default): as root it would raise its
threads to nice -8, above the training worker, which no user's browser can do.

    python bench/app_overhead.py [--file-watcher auto] [--repeat N]

Both runs use the same lab home with the model cache prepared first (so neither pays the one-time
GGUF conversion) and a database of their own. Each wall time is split with the run's own
timestamps: launch -> queued (app only) -> the engine starts (process start, imports, claim) ->
the engine ends -> the CLI exits / the tab shows "done". `--repeat N` alternates CLI and app
runs N times (CLI, app, CLI, app, ...) and reports the medians with every repetition.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.paths import git_commit  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def chromium_cpu_seconds() -> float:
    """CPU seconds of the Chromium processes this bench started (descendants of this process
    whose program is Chromium: browser, renderer, GPU and utility processes) alive now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0.0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if "chrom" in Path(os.readlink(f"/proc/{pid}/exe")).name:
                total += cpu_seconds(pid)
        except (OSError, IndexError):
            continue
    return total


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def chromium() -> str:
    path = os.environ.get("FORGETTING_LAB_CHROMIUM") or shutil.which("chromium")
    if not path:
        sys.exit("error: Chromium is not installed (make test installs Debian's chromium)")
    return path


def user_priority_chromium(folder: Path) -> str:
    """A Chromium that runs at a desktop user's priority. Run as root (this machine), Chromium
    raises its browser, GPU and compositor threads to nice -8, above the training worker (nice
    0): each refresh of the tab then preempts training at once. A user's browser cannot do that
    (it lacks CAP_SYS_NICE), so the bench drops that capability before Chromium starts."""
    path = chromium()
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return path  # not root: Chromium already runs as a user's browser does
    wrapper = folder / "chromium-user-priority"
    wrapper.write_text(
        f'#!/bin/sh\nexec setpriv --inh-caps=-sys_nice --bounding-set=-sys_nice -- "{path}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def chromium_min_nice() -> int | None:
    """The lowest nice value (highest priority) of any thread of this bench's Chromium."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        try:
            text = stat.read_text()
            if "(chromium)" in text or "chrom" in text.split(")")[0]:
                out.append(int(text.rsplit(")", 1)[1].split()[16]))
        except (OSError, ValueError, IndexError):
            continue
    return min(out) if out else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the store's timestamps are naive UTC


def split(db: str, launched: dt.datetime, ended: dt.datetime) -> dict:
    """Where a run's wall time went, from its own timestamps in the database."""
    from core.store import Store

    r = Store(db).list_runs().iloc[0]
    created, started, finished = r["created_at"], r["started_at"], r["finished_at"]
    return {
        "to_queued_s": round((created - launched).total_seconds(), 1),
        "to_engine_start_s": round((started - created).total_seconds(), 1),
        "engine_s": round((finished - started).total_seconds(), 1),
        "after_engine_s": round((ended - finished).total_seconds(), 1),
    }


def run_cli(env: dict) -> dict:
    t, launched = time.perf_counter(), _now()
    subprocess.run(
        [sys.executable, "-m", "core", "run", "--preset", "quick-cpu"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t
    return {"cli_s": round(wall, 1), "split": split(env["FORGETTING_LAB_DB"], launched, _now())}


def run_app(env: dict, watcher: str | None, timeout_s: float, browser: str | None = None) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    if watcher:
        cmd += ["--server.fileWatcherType", watcher]
    server = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://localhost:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=browser or chromium(), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url)
            button = page.get_by_role("button", name="Start quick-cpu now")
            button.wait_for()
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            b0 = chromium_cpu_seconds()
            launched = _now()
            button.click()
            page.wait_for_timeout(3000)
            nice = chromium_min_nice()
            page.get_by_text("Status: done").wait_for(timeout=timeout_s * 1000)
            wall, seen = time.perf_counter() - t0, _now()
            cpu = cpu_seconds(server.pid) - cpu0
            browser_cpu = chromium_cpu_seconds() - b0
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "app_watched_s": round(wall, 1),
        "server_cpu_pct": round(100 * cpu / wall, 1),
        "browser_cpu_pct": round(100 * browser_cpu / wall, 1),
        "browser_min_nice": nice,
        "split": split(env["FORGETTING_LAB_DB"], launched, seen),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file-watcher", default=None, help="override server.fileWatcherType")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the app run")
    ap.add_argument("--repeat", type=int, default=1, help="CLI/app pairs, alternating")
    ap.add_argument(
        "--browser-priority",
        choices=["user", "root"],
        default="user",
        help="user: Chromium without the right to raise its threads' priority, as a desktop "
        "user's browser runs (default); root: as root lets it (nice -8, above the training)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument(
        "--suffix", default="", help="appended to the result file's name (a second run that day)"
    )
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lab-overhead-"))
    env = dict(os.environ, FORGETTING_LAB_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("FORGETTING_LAB_DB", None)
    subprocess.run([sys.executable, "-m", "core", "prepare"], cwd=ROOT, env=env, check=True)

    cli, app = [], []
    for i in range(args.repeat):
        cli.append(run_cli(dict(env, FORGETTING_LAB_DB=str(home / f"cli{i}.duckdb"))))
        print(f"cli #{i + 1}: {json.dumps(cli[-1])}", flush=True)
        app.append(
            run_app(
                dict(env, FORGETTING_LAB_DB=str(home / f"app{i}.duckdb")),
                args.file_watcher,
                args.timeout,
                user_priority_chromium(home) if args.browser_priority == "user" else None,
            )
        )
        print(f"app, watched #{i + 1}: {json.dumps(app[-1])}", flush=True)
    med = {
        k: round(statistics.median(r[k] for r in rows), 1)
        for rows, keys in (
            (cli, ["cli_s"]),
            (app, ["app_watched_s", "server_cpu_pct", "browser_cpu_pct"]),
        )
        for k in keys
    }

    result = {
        "date": dt.date.today().isoformat(),
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "commit": git_commit(),
        "command": "python bench/app_overhead.py"
        + (f" --file-watcher {args.file_watcher}" if args.file_watcher else "")
        + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
        + (" --browser-priority root" if args.browser_priority == "root" else "")
        + (f" --suffix={args.suffix}" if args.suffix else ""),
        "browser_priority": args.browser_priority,
        "what": "quick-cpu from the CLI vs started from the app's Launch page with a headless "
        "Chromium tab open on it until 'Status: done' (the live panel refreshes itself); model "
        "cache prepared before both",
        "file_watcher": args.file_watcher or "shipped config",
        **med,
        "ratio": round(med["app_watched_s"] / med["cli_s"], 3),
        "ratios_each": [round(a["app_watched_s"] / c["cli_s"], 3) for c, a in zip(cli, app)],
        # the same work on both sides: the engine's own time (start to end of the run), and the
        # spread of the CLI's alone (the machine's own run-to-run variation)
        "engine_ratio": round(
            statistics.median(a["split"]["engine_s"] for a in app)
            / statistics.median(c["split"]["engine_s"] for c in cli),
            3,
        ),
        "cli_s_range": [min(c["cli_s"] for c in cli), max(c["cli_s"] for c in cli)],
        "cli_runs": cli,
        "app_runs": app,
        "goal": "issue 18: ratio <= 1.15 on the 2-core machine",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-watcher-{args.file_watcher}" if args.file_watcher else ""
    suffix += "-browser-as-root" if args.browser_priority == "root" else ""
    suffix += args.suffix
    path = out / f"{result['date']}-app-overhead-cpu{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
