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
    """Remove what a deleted run left in the lab home: saved adapters and checkpoints."""
    import shutil

    if not run_id or "/" in run_id or run_id.startswith("."):
        return
    shutil.rmtree(adapters_dir() / run_id, ignore_errors=True)
    for f in checkpoints_dir().glob(f"{run_id}*"):
        f.unlink(missing_ok=True)


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
