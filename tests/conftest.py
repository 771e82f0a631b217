import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def lab_home(tmp_path_factory):
    """Every test session gets its own lab home; its models/ folder links to one cache in the
    checkout, so the embedded model is converted to safetensors once per checkout."""
    home = tmp_path_factory.mktemp("labhome")
    os.environ["FORGETTING_LAB_HOME"] = str(home)
    os.environ.pop("FORGETTING_LAB_DB", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    shared = ROOT / ".lab" / "models"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared, target_is_directory=True)
    return home


@pytest.fixture
def db(tmp_path):
    return tmp_path / "lab.duckdb"


@pytest.fixture(scope="session")
def tiny_run(lab_home, tmp_path_factory):
    """One finished tiny sweep shared by read-only tests: (db path, run id)."""
    from core import runner
    from core.config import preset
    from core.store import Store

    path = tmp_path_factory.mktemp("seeded") / "lab.duckdb"
    store = Store(path)
    spec = preset("tiny-test", seeds=(0, 1))
    run_id = runner.create_run(store, spec, status="running")
    assert runner.run_foreground(store, run_id) == "done"
    return path, run_id


def python() -> str:
    return sys.executable
