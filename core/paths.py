"""Where things live on disk. One per-user directory holds the database, model caches and saved
adapters; `FORGETTING_LAB_HOME` moves it, `FORGETTING_LAB_DB` moves the database alone."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def lab_home() -> Path:
    env = os.environ.get("FORGETTING_LAB_HOME")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return (Path(base) / "forgetting-lab").resolve()


def default_db() -> Path:
    env = os.environ.get("FORGETTING_LAB_DB")
    return Path(env).expanduser().resolve() if env else lab_home() / "lab.duckdb"


def resolve_db(db: str | os.PathLike | None) -> Path:
    return Path(db).expanduser().resolve() if db else default_db()


def model_cache_dir() -> Path:
    return lab_home() / "models"


def adapters_dir() -> Path:
    return lab_home() / "adapters"


def checkpoints_dir() -> Path:
    return lab_home() / "checkpoints"


def discard_run_files(run_id: str) -> None:
    """Remove what a deleted run left in the lab home: saved adapters and checkpoints, its own
    and those of every group of runs trained in one pass that it was part of."""
    import shutil

    if not run_id or "/" in run_id or run_id.startswith("."):
        return
    shutil.rmtree(adapters_dir() / run_id, ignore_errors=True)
    for f in [*checkpoints_dir().glob(f"{run_id}*"), *_group_checkpoints_of(run_id)]:
        f.unlink(missing_ok=True)


def _group_checkpoints_of(run_id: str) -> list[Path]:
    """The files of every group checkpoint (`checkpoints/<first run id>-group-<hash>`) that
    trains `run_id`, whichever run's id names it.

    Such a checkpoint is removed with any one of its runs, even while the others are unfinished:
    it is found again only by the group's whole list of runs (its name hashes them all,
    `engine._checkpoint`), and once one is deleted no `resume` can name that list, so it could
    never be used again. Nothing is lost with it: the other runs' finished points are in the
    database and a resume of them (alone or as a new group) continues from those, retraining
    only the points that were in flight. Its runs are read from its description ("runs"; a
    checkpoint saved before that was written names at least its runs in flight)."""
    import json

    out = []
    for js in checkpoints_dir().glob("*-group-*.json"):
        try:
            meta = json.loads(js.read_text())
        except (OSError, ValueError):
            continue
        runs = set(meta.get("runs") or [])
        runs |= {x["key"][0] for x in meta.get("live") or [] if x and x.get("key")}
        if run_id in runs:
            out += [js, js.with_suffix(".safetensors")]
    return out


def git_commit() -> str:
    head = REPO_ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            p = REPO_ROOT / ".git" / ref[5:]
            if p.is_file():
                return p.read_text().strip()[:12]
            packed = REPO_ROOT / ".git" / "packed-refs"
            for line in packed.read_text().splitlines() if packed.is_file() else []:
                if line.endswith(ref[5:]):
                    return line.split()[0][:12]
            return ""
        return ref[:12]
    except OSError:
        return ""
