"""bench/ship_reference.py: a set shipped from one database, then points appended from another
(measured later, elsewhere) and drawn as part of the same run."""

import json
import sys

import pandas as pd
import pytest

from core import runner
from core.config import preset
from core.store import Store

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
ship = pytest.importorskip("bench.ship_reference")


def _db(path, scales, name):
    s = Store(path)
    rid = runner.create_run(s, preset("tiny-test", scales=scales, name=name), "running")
    assert runner.run_foreground(s, rid) == "done"
    return rid


def _ship(monkeypatch, tmp_path, *args):
    monkeypatch.setattr(ship, "REF_DIR", tmp_path / "ref")
    monkeypatch.setattr(sys, "argv", ["ship_reference.py", *args])
    ship.main()


def test_append_merges_into_a_run_and_refuses_twice(tmp_path, monkeypatch):
    (tmp_path / "ref").mkdir()
    first = _db(tmp_path / "a.duckdb", (4, 6), "first")
    later = _db(tmp_path / "b.duckdb", (8,), "later")
    common = ["--set", "t", "--what", "w", "--device", "cpu"]
    _ship(monkeypatch, tmp_path, *common, "--command", "c1", str(tmp_path / "a.duckdb"))
    _ship(
        monkeypatch,
        tmp_path,
        *common,
        "--append",
        "--merge-into",
        first,
        "--command",
        "c2",
        str(tmp_path / "b.duckdb"),
    )
    pts = pd.read_parquet(tmp_path / "ref" / "t_points.parquet")
    assert sorted(pts.scale) == [4, 6, 8]
    assert set(pts.run_id) == {first} and set(pts.run_name) == {"first"}  # one curve
    evals = pd.read_parquet(tmp_path / "ref" / "t_evals.parquet")
    assert set(evals.run_id) == {first} and 8 in set(evals.scale)
    # each multiple-choice question's result ships too (the "what was forgotten" view)
    mc = pd.read_parquet(tmp_path / "ref" / "t_mc_items.parquet")
    assert set(mc.run_id) == {first} and sorted(set(mc.scale)) == [4, 6, 8]
    assert len(mc) == 3 * mc[mc.scale == 4].item.nunique() > 0
    prov = json.loads((tmp_path / "ref" / "t.json").read_text())
    assert [r["run_id"] for r in prov["runs"]] == [first] and prov["commands"] == ["c1"]
    (add,) = prov["additions"]
    assert add["merged_into"] == first and add["commands"] == ["c2"]
    assert [r["run_id"] for r in add["runs"]] == [later]
    # the same database again: refused, nothing written twice
    with pytest.raises(SystemExit, match="already in t"):
        _ship(monkeypatch, tmp_path, *common, "--append", str(tmp_path / "b.duckdb"))
    assert len(pd.read_parquet(tmp_path / "ref" / "t_points.parquet")) == 3
    # a third database appends fine next to the earlier addition
    _db(tmp_path / "c.duckdb", (5,), "third")
    _ship(monkeypatch, tmp_path, *common, "--append", str(tmp_path / "c.duckdb"))
    prov = json.loads((tmp_path / "ref" / "t.json").read_text())
    assert len(prov["additions"]) == 2
    assert len(pd.read_parquet(tmp_path / "ref" / "t_points.parquet")) == 4
