import subprocess
import sys
import textwrap

import duckdb
import pandas as pd
import pytest

from core.config import preset
from core.errors import RunNotFound, StoreError
from core.store import SCHEMA_VERSION, PointResult, Store


def _point(scale, seed=0, deg=10.0):
    m = dict(
        general_ppl_before=10.0,
        general_ppl_after=10.0 * (1 + deg / 100),
        degradation_pct=deg,
        domain_ppl_before=50.0,
        domain_ppl_after=5.0,
        domain_improvement_pct=90.0,
        smoke_ok=True,
        smoke_min_new_tokens=3,
        steps=scale,
    )
    evals = [dict(eval_set="general", ppl_before=10.0, ppl_after=11.0, change_pct=10.0)]
    items = [
        dict(eval_set="general", item=i, nll_before=1.0, nll_after=1.1, tokens=4) for i in range(3)
    ]
    gens = [dict(prompt="p", output="o", new_tokens=1, ok=True)]
    return PointResult(scale, seed, "done", m, evals, items, gens)


def test_save_point_is_idempotent_and_exports(db, tmp_path):
    s = Store(db)
    s.create_run("r1", preset("tiny-test"))
    s.save_point("r1", _point(4))
    s.save_point("r1", _point(4, deg=20.0))  # the same point again replaces it
    s.save_point("r1", _point(8))
    df = s.points_df(["r1"])
    assert len(df) == 2 and df.set_index("scale").loc[4, "degradation_pct"] == 20.0
    assert s.finished_points("r1") == {(4, 0), (8, 0)}
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"x.{fmt}"
        assert s.export(out, fmt) == 2
        back = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
        required = {
            "run_id",
            "model",
            "method",
            "rank",
            "domain",
            "scale",
            "seed",
            "general_ppl_before",
            "general_ppl_after",
            "degradation_pct",
            "domain_ppl_before",
            "domain_ppl_after",
            "domain_improvement_pct",
            "smoke_ok",
        }
        assert required <= set(back.columns) and len(back) == 2


def test_generation_reasons_are_stored_and_read_back(db):
    s = Store(db)
    s.create_run("r1", preset("tiny-test"))
    p = _point(4)
    p.generations = [
        dict(prompt="a", output=" Paris.", new_tokens=2, ok=True, reason=""),
        dict(prompt="b", output="", new_tokens=0, ok=False, reason="no new tokens"),
        dict(prompt="c", output="x x", new_tokens=2, ok=False),  # spilled by an older version
    ]
    s.save_point("r1", p)
    gens = s.generations_df("r1").set_index("prompt")
    assert pd.isna(gens.loc["a", "reason"]) and gens.loc["b", "reason"] == "no new tokens"
    fails = s.smoke_failures(["r1"])
    assert fails.prompt.tolist() == ["b", "c"] and fails.scale.tolist() == [4, 4]
    assert s.smoke_failures([]).empty


def test_unknown_run_and_bad_export(db, tmp_path):
    s = Store(db)
    with pytest.raises(RunNotFound):
        s.get_run("nope")
    with pytest.raises(StoreError, match="format"):
        s.export(tmp_path / "x", "xlsx")
    with pytest.raises(StoreError, match="does not exist"):
        s.export(tmp_path / "missing" / "x.csv", "csv")


def test_newer_schema_is_refused(db):
    Store(db).list_runs()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    con.close()
    with pytest.raises(StoreError, match="newer Forgetting Lab"):
        Store(db).list_runs()


def test_foreign_duckdb_file_is_refused(db):
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    with pytest.raises(StoreError, match="not a Forgetting Lab database"):
        Store(db).list_runs()


WRITER = textwrap.dedent(
    """
    import sys
    from core.config import preset
    from core.store import Store, PointResult
    s = Store(sys.argv[1])
    s.create_run(sys.argv[2], preset("tiny-test"))
    for i in range(1, int(sys.argv[3]) + 1):
        s.save_point(sys.argv[2], PointResult(i, 0, "done", {"degradation_pct": float(i)}, [], [], []))
        s.record_progress(sys.argv[2], i, 0, "training", i, 100, 1.0, [(i, 1.0)])
    """
)


def test_two_writers_and_a_reader_share_the_file(db):
    """Separate processes write at the same time while this one reads: no lock error surfaces
    and no row is lost."""
    Store(db).list_runs()
    n = 60
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), f"w{k}", str(n)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    reader = Store(db)
    reads = 0
    while any(p.poll() is None for p in procs):
        reader.list_runs()
        reader.points_df()
        reads += 1
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    df = reader.points_df()
    assert reads > 0
    assert sorted(df.groupby("run_id").size().tolist()) == [n, n]


NEW_MEASURES = (  # schema 5
    "general_ppl_stmt_before",
    "general_ppl_stmt_after",
    "degradation_stmt_pct",
    "kl_to_base",
    "general_ce_delta",
)


def _to_schema_5(con) -> None:
    """Undo schema 6: intruder dimensions and the per-question multiple-choice table."""
    con.execute("ALTER TABLE points DROP COLUMN intruder_dims")
    con.execute("ALTER TABLE spectral DROP COLUMN intruder_dims")
    con.execute("DROP TABLE mc_items")


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_older_schema_is_migrated_without_losing_rows(db, version):
    s = Store(db)
    s.create_run("old", preset("tiny-test"))
    s.save_point("old", _point(4))
    con = duckdb.connect(str(db))  # turn it back into an older database
    _to_schema_5(con)
    for col in NEW_MEASURES if version <= 4 else ():
        con.execute(f"ALTER TABLE points DROP COLUMN {col}")
    if version <= 3:
        con.execute("ALTER TABLE generations DROP COLUMN reason")
    if version <= 2:
        for col in ("model_mem_mb", "disk_mb", "gen_tokens_per_s", "stop_step"):
            con.execute(f"ALTER TABLE points DROP COLUMN {col}")
        con.execute("DROP TABLE spectral")
        con.execute("DROP TABLE run_info")
    if version == 1:
        for col in ("mc_acc_before", "mc_acc_after", "mc_drop_pts"):
            con.execute(f"ALTER TABLE points DROP COLUMN {col}")
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)])
    con.close()
    again = Store(db)
    df = again.points_df(["old"])
    assert len(df) == 1 and df.degradation_pct[0] == 10.0
    assert {"mc_drop_pts", "model_mem_mb", "stop_step", "kl_to_base", "intruder_dims"} <= set(
        df.columns
    )
    assert df.intruder_dims.isna().all()  # points measured before the measure existed: NULL
    assert again.mc_items_df("old").empty
    again.save_run_info("old", "k", [1, 2])
    assert again.run_info("old") == {"k": [1, 2]} and again.spectral_df(["old"]).empty
    assert again.query_df("SELECT value FROM meta WHERE key = 'schema_version'").value[0] == str(
        SCHEMA_VERSION
    )
    old_gens = again.generations_df("old")  # answers stored before reasons keep theirs (none)
    assert len(old_gens) == 1 and "reason" in old_gens.columns and old_gens.reason.isna().all()
    bad = _point(8)
    bad.generations = [dict(prompt="p", output="", new_tokens=0, ok=False, reason="no new tokens")]
    again.save_point("old", bad)
    assert again.smoke_failures(["old"]).reason.tolist() == ["no new tokens"]


def test_unknown_old_schema_is_refused(db):
    Store(db).list_runs()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="cannot migrate"):
        Store(db).list_runs()


def test_progress_writes_keep_start_replace_steps_and_restart_one_point(db):
    import time

    from core import runner
    from core.config import preset

    s = Store(db)
    rid = runner.create_run(s, preset("tiny-test", scales=(4, 6)), "running")
    s.record_progress_many(
        rid, [(4, 1, "training", 0, 9, None, []), (6, 1, "training", 0, 9, None, [])], restart=True
    )
    start = s.query_df("SELECT scale, started_at FROM progress ORDER BY scale").started_at.tolist()
    time.sleep(0.01)
    # losses accumulate; a step written twice (even within one write) keeps the last value
    s.record_progress_many(rid, [(4, 1, "training", 2, 9, 0.7, [(1, 0.9), (2, 0.8), (2, 0.7)])])
    s.record_progress_many(
        rid, [(4, 1, "training", 3, 9, 0.6, [(3, 0.6)]), (6, 1, "training", 1, 9, 1.5, [(1, 1.5)])]
    )
    got = s.query_df("SELECT scale, step, loss FROM step_losses ORDER BY scale, step")
    assert got.values.tolist() == [[4, 1, 0.9], [4, 2, 0.7], [4, 3, 0.6], [6, 1, 1.5]]
    prog = s.query_df(
        "SELECT scale, phase, step, total_steps, loss, started_at FROM progress ORDER BY scale"
    )
    assert prog.step.tolist() == [3, 1] and prog.loss.tolist() == [0.6, 1.5]
    assert prog.started_at.tolist() == start  # the start time survives updates
    # restarting point 4 clears its losses and its start, not point 6's
    s.record_progress_many(rid, [(4, 1, "training", 0, 9, None, [])], restart=True)
    got = s.query_df("SELECT scale, step FROM step_losses ORDER BY scale, step")
    assert got.values.tolist() == [[6, 1]]
    prog = s.query_df("SELECT scale, step, loss, started_at FROM progress ORDER BY scale")
    assert prog.step.tolist() == [0, 1] and pd.isna(prog.loss[0])
    assert prog.started_at[0] > start[0] and prog.started_at[1] == start[1]


def test_get_spec_returns_the_stored_settings(db):
    s = Store(db)
    spec = preset("tiny-test")
    s.create_run("r1", spec)
    assert s.get_spec("r1") == spec
    with pytest.raises(RunNotFound):
        s.get_spec("missing")


def test_point_statuses_have_one_definition(db):
    from core.store import ENDED, FINISHED

    s = Store(db)
    s.create_run("r1", preset("tiny-test"))
    for scale, status in ((1, "done"), (2, "diverged"), (3, "stopped"), (4, "failed")):
        s.save_point("r1", PointResult(scale, 0, status, {}, [], [], []))
    assert s.finished_points("r1") == {(1, 0), (2, 0), (3, 0)}  # the failed one is retried
    assert set(FINISHED) == {"done", "diverged", "stopped"} and set(ENDED) == {*FINISHED, "failed"}
    assert s.list_runs().set_index("run_id").loc["r1", "points_done"] == 1


def _columns(path) -> set:
    con = duckdb.connect(str(path))
    try:
        return set(
            con.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
            ).fetchall()
        )
    finally:
        con.close()


def test_a_migrated_database_has_the_fresh_schema_and_migrations_are_frozen(db, tmp_path):
    """From version 1 the migrations arrive at exactly the tables and columns a fresh database
    gets; they are literal statements, never derived from today's SCHEMA string (an edit of the
    schema must not change what an old migration does)."""
    import ast
    import inspect

    from core import store as store_module

    s = Store(db)
    s.list_runs()
    con = duckdb.connect(str(db))
    _to_schema_5(con)
    con.execute("ALTER TABLE generations DROP COLUMN reason")
    for col in ("model_mem_mb", "disk_mb", "gen_tokens_per_s", "stop_step", *NEW_MEASURES):
        con.execute(f"ALTER TABLE points DROP COLUMN {col}")
    for col in ("mc_acc_before", "mc_acc_after", "mc_drop_pts"):
        con.execute(f"ALTER TABLE points DROP COLUMN {col}")
    con.execute("DROP TABLE spectral")
    con.execute("DROP TABLE run_info")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    Store(db).list_runs()  # migrates 1 -> current
    fresh = tmp_path / "fresh.duckdb"
    Store(fresh).list_runs()
    assert _columns(db) == _columns(fresh)
    tree = ast.parse(inspect.getsource(store_module.Store))
    migrations = next(
        n for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id == "MIGRATIONS"
    )
    for version, stmts in zip(migrations.value.keys, migrations.value.values):
        assert isinstance(stmts, ast.List), version
        assert all(isinstance(x, ast.Constant) and isinstance(x.value, str) for x in stmts.elts)


def test_reading_block_shares_one_connection(tmp_path, monkeypatch):
    """The app's live panel reads several tables per refresh in one connection; writes inside
    the block use it too, and the database is usable by others once the block ends."""
    import duckdb

    from core import store as store_mod
    from core.runner import create_run

    s = Store(tmp_path / "lab.duckdb")
    rid = create_run(s, preset("tiny-test"), status="running")
    opened = []
    real = duckdb.connect
    monkeypatch.setattr(
        store_mod.duckdb, "connect", lambda *a, **k: opened.append(1) or real(*a, **k)
    )
    with s.reading():
        with s.reading():  # nested: still the same connection
            assert s.get_run(rid)["run_id"] == rid
        s.points_df([rid])
        s.progress_df(rid)
        s.record_progress_many(rid, [(4, 0, "training", 1, 4, 0.5, [(1, 0.5)])])
        assert isinstance(s.run_info(rid), dict)
    assert len(opened) == 1
    assert len(s.progress_df(rid)) == 1  # the write inside the block was committed
    assert len(opened) == 2
    with s.reading():  # a block whose reads never reach the database opens no connection
        pass
    assert len(opened) == 2


def test_per_question_results_and_intruder_dimensions_are_stored_replaced_and_deleted(db):
    """Schema 6: each multiple-choice question's right/wrong before and after, and the intruder
    dimensions per matrix (spectral) and per point, written with the point and replaced with it;
    a point spilled by an older version (no intruder count) still saves."""
    s = Store(db)
    s.create_run("r", preset("tiny-test"))
    p = _point(4)
    p.metrics["intruder_dims"] = 3
    p.mc_items = [
        dict(item=7, correct_before=True, correct_after=False),
        dict(item=9, correct_before=False, correct_after=False),
    ]
    row = dict(layer=0, module="q_proj", fro_norm=1.0, eff_rank=1.0, topk_cos=0.9, k=2)
    p.spectral = [dict(row, name="a.0.q_proj", intruder_dims=3), dict(row, name="a.0.v_proj")]
    s.save_point("r", p)
    s.save_point("r", p)  # again: replaced, not doubled
    mc = s.mc_items_df("r")
    assert mc[["item", "correct_before", "correct_after"]].values.tolist() == [
        [7, True, False],
        [9, False, False],
    ]
    assert int(s.points_df(["r"]).intruder_dims[0]) == 3
    spec = s.spectral_df(["r"]).set_index("name")["intruder_dims"]
    assert spec["a.0.q_proj"] == 3 and pd.isna(spec["a.0.v_proj"])
    s.delete_run("r")
    assert s.mc_items_df("r").empty
