"""bench/fullgrid.py on the tiny model (CPU): a stopped chunk, its resume and the report agree
with the database, so a GPU session never finds the bench broken."""

import importlib.util
import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def _bench(*args, env):
    return subprocess.Popen(
        [sys.executable, "bench/fullgrid.py", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _report_here(*args, home, monkeypatch) -> int:
    """`bench/fullgrid.py report ...` run in this process (its own command line, without a
    second interpreter's imports: the report trains nothing and sends no signal)."""
    spec = importlib.util.spec_from_file_location("fullgrid_bench", ROOT / "bench/fullgrid.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("FORGETTING_LAB_HOME", str(home))
    monkeypatch.delenv("FORGETTING_LAB_DB", raising=False)
    monkeypatch.setattr(sys, "argv", ["bench/fullgrid.py", *args])
    return bench.main()


def test_a_stopped_chunk_resumes_and_the_report_sums_both(tmp_path, monkeypatch):
    env = dict(os.environ, FORGETTING_LAB_HOME=str(tmp_path / "lab"))
    env.pop("FORGETTING_LAB_DB", None)
    start = ["start", "--model", "tiny", "--run-device", "cpu", "--precision", "fp32"]
    # --stop-at-rows 2: the chunk stops itself when the 4-run packer shrinks to the two
    # 40-sample runs (the small points stored), as the GPU session stops before the 50K pair
    p = _bench(*start, "--scales", "4,40", "--seeds", "0", "--stop-at-rows", "2", env=env)
    state = tmp_path / "lab" / "fullgrid-state.json"
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    first = json.loads(state.read_text())["chunks"][0]
    assert first["status"] == "cancelled" and first["points_stored"] == 2
    assert [slots for _, slots in first["shrinks"]] == [2]  # stopped at the shrink
    r = subprocess.run(
        [sys.executable, "bench/fullgrid.py", "resume"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = ["report", "--device", "test cpu", "--out", str(tmp_path / "out")]
    assert _report_here(*report, home=tmp_path / "lab", monkeypatch=monkeypatch) == 0
    (res,) = (tmp_path / "out").glob("*-fullgrid-fp32.json")
    got = json.loads(res.read_text())
    chunks = got["chunks"]
    assert [c["kind"] for c in chunks] == ["start", "resume"] and got["complete"]
    assert got["points"] == "4/4" and got["domains"] == ["financial", "legal"]
    total = sum(c["wall_s"] for c in chunks) / 60
    assert got["full_grid_measured_min"] == round(total, 2) > 0
    # every training step of the 40-sample runs is counted once across the two chunks
    assert sum(c["steps"] for c in chunks) == 3 * 40
