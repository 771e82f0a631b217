"""The one module that speaks SQL. A DuckDB file holds runs, points and everything measured.

Concurrency: DuckDB lets one process hold a database file open for writing at a time. Every
access here opens a connection, does one short transaction and closes it; a process that finds
the file locked by another waits and retries (jittered backoff, up to `LOCK_TIMEOUT_S`). The app,
the CLI and background workers therefore share one file without a lock error reaching a user.
Within a process a lock serialises connections (DuckDB also refuses two configurations of one file
in one process).
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from .errors import RunNotFound, StoreError
from .states import DONE, ENDED, FINISHED  # noqa: F401 (re-exported: store.DONE, ...)

SCHEMA_VERSION = 6
LOCK_TIMEOUT_S = 60.0
FINAL_STATES = ("done", "failed", "cancelled")  # of a run
# Of a point: DONE, FINISHED, ENDED (core/states.py, the one definition, imported above)
_process_lock = threading.RLock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    created_at TIMESTAMP,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    status VARCHAR,              -- queued | running | done | failed | cancelled
    spec_json VARCHAR,
    model VARCHAR,
    method VARCHAR,
    domain VARCHAR,
    lora_rank INTEGER,
    device VARCHAR,
    versions_json VARCHAR,
    git_commit VARCHAR,
    error VARCHAR,
    host VARCHAR,
    pid INTEGER,
    heartbeat_at TIMESTAMP,
    cancel_requested BOOLEAN DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS points (
    run_id VARCHAR,
    scale INTEGER,
    seed INTEGER,
    status VARCHAR,              -- done | failed | diverged | stopped
    general_ppl_before DOUBLE,
    general_ppl_after DOUBLE,
    degradation_pct DOUBLE,
    domain_ppl_before DOUBLE,
    domain_ppl_after DOUBLE,
    domain_improvement_pct DOUBLE,
    smoke_ok BOOLEAN,
    smoke_min_new_tokens INTEGER,
    steps INTEGER,
    final_loss DOUBLE,
    train_seconds DOUBLE,
    eval_seconds DOUBLE,
    trainable_params BIGINT,
    total_params BIGINT,
    peak_mem_mb DOUBLE,
    mc_acc_before DOUBLE,
    mc_acc_after DOUBLE,
    mc_drop_pts DOUBLE,
    model_mem_mb DOUBLE,         -- the measured model's tensors in memory
    disk_mb DOUBLE,              -- what the point saved (adapter), NULL when nothing was saved
    gen_tokens_per_s DOUBLE,     -- smoke-test generation speed after training
    stop_step INTEGER,           -- in-training smoke test stopped the point here
    general_ppl_stmt_before DOUBLE,  -- mean of per-statement perplexities (Martz 2025)
    general_ppl_stmt_after DOUBLE,
    degradation_stmt_pct DOUBLE,
    kl_to_base DOUBLE,           -- mean per-token KL(p_base || p_tuned), NULL: not measured
    general_ce_delta DOUBLE,     -- mean per-token CE after minus before (nats)
    intruder_dims INTEGER,       -- intruder dimensions summed over matrices, NULL: not counted
    adapter_path VARCHAR,
    error VARCHAR,
    finished_at TIMESTAMP,
    PRIMARY KEY (run_id, scale, seed)
);
CREATE TABLE IF NOT EXISTS evals (
    run_id VARCHAR, scale INTEGER, seed INTEGER, eval_set VARCHAR,
    ppl_before DOUBLE, ppl_after DOUBLE, change_pct DOUBLE,
    PRIMARY KEY (run_id, scale, seed, eval_set)
);
CREATE TABLE IF NOT EXISTS item_nll (
    run_id VARCHAR, scale INTEGER, seed INTEGER, eval_set VARCHAR, item INTEGER,
    nll_before DOUBLE, nll_after DOUBLE, tokens INTEGER,
    PRIMARY KEY (run_id, scale, seed, eval_set, item)
);
CREATE TABLE IF NOT EXISTS progress (
    run_id VARCHAR, scale INTEGER, seed INTEGER,
    phase VARCHAR, step INTEGER, total_steps INTEGER, loss DOUBLE,
    started_at TIMESTAMP, updated_at TIMESTAMP,
    PRIMARY KEY (run_id, scale, seed)
);
CREATE TABLE IF NOT EXISTS step_losses (
    run_id VARCHAR, scale INTEGER, seed INTEGER, step INTEGER, loss DOUBLE,
    PRIMARY KEY (run_id, scale, seed, step)
);
CREATE TABLE IF NOT EXISTS spectral (
    run_id VARCHAR, scale INTEGER, seed INTEGER, name VARCHAR, layer INTEGER, module VARCHAR,
    fro_norm DOUBLE, eff_rank DOUBLE, topk_cos DOUBLE, k INTEGER,
    intruder_dims INTEGER,       -- NULL: not counted
    PRIMARY KEY (run_id, scale, seed, name)
);
CREATE TABLE IF NOT EXISTS mc_items (   -- each multiple-choice question, right before / after
    run_id VARCHAR, scale INTEGER, seed INTEGER, item INTEGER,
    correct_before BOOLEAN, correct_after BOOLEAN,
    PRIMARY KEY (run_id, scale, seed, item)
);
CREATE TABLE IF NOT EXISTS run_info (
    run_id VARCHAR, key VARCHAR, value_json VARCHAR,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS generations (
    run_id VARCHAR, scale INTEGER, seed INTEGER, stage VARCHAR, idx INTEGER,  -- before | after | step:N
    prompt VARCHAR, output VARCHAR, new_tokens INTEGER, ok BOOLEAN,
    reason VARCHAR,              -- why the smoke-test verdict failed the answer; NULL when ok or older
    PRIMARY KEY (run_id, scale, seed, stage, idx)
);
"""

# The export's columns: one row per point with the run's configuration attached. The sweep
# settings that have no column of their own (replay fraction, learning rate) are read from the
# stored spec, the one record of a run's settings; a spec stored before replay existed had none.
EXPORT_SQL = """
SELECT p.run_id, r.name AS run_name, r.model, r.method, r.lora_rank AS rank,
       CASE WHEN r.spec_json ->> '$.replay' IS NULL THEN 0.0
            ELSE (r.spec_json ->> '$.replay')::DOUBLE END AS replay,
       (r.spec_json ->> '$.learning_rate')::DOUBLE AS learning_rate, r.domain,
       p.scale, p.seed, p.status, p.general_ppl_before, p.general_ppl_after, p.degradation_pct,
       p.domain_ppl_before, p.domain_ppl_after, p.domain_improvement_pct, p.smoke_ok,
       p.smoke_min_new_tokens, p.steps, p.final_loss, p.train_seconds, p.eval_seconds,
       p.trainable_params, p.total_params, p.peak_mem_mb, p.mc_acc_before, p.mc_acc_after,
       p.mc_drop_pts, p.model_mem_mb, p.disk_mb, p.gen_tokens_per_s, p.stop_step,
       p.general_ppl_stmt_before, p.general_ppl_stmt_after, p.degradation_stmt_pct, p.kl_to_base,
       p.general_ce_delta, p.intruder_dims, p.error,
       r.device, r.git_commit, p.finished_at
FROM points p JOIN runs r USING (run_id)
"""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _is_lock_error(e: Exception) -> bool:
    msg = str(e).lower()
    return "lock" in msg or "conflicting" in msg


@dataclass
class PointResult:
    """Everything measured for one (scale, seed) point; written in one transaction."""

    scale: int
    seed: int
    status: str
    metrics: dict[str, Any]
    evals: list[dict[str, Any]]
    item_nll: list[dict[str, Any]]
    generations: list[dict[str, Any]]
    checks: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)  # (stage, gens)
    spectral: list[dict[str, Any]] = field(default_factory=list)
    mc_items: list[dict[str, Any]] = field(default_factory=list)  # item, correct_before/after


class Store:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._ready = False
        self._held = threading.local()  # the connection of a `reading()` block, per thread

    # -- connections ------------------------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[None]:
        """Several reads in one connection: `with store.reading(): ...`. Opening one costs ~20 ms
        on a 2-core machine and holds the database's lock meanwhile; the app's live panel reads
        four tables every few seconds while a worker writes progress. The connection opens at the
        block's first read, so a block whose reads are all answered from the app's caches opens
        none."""
        if getattr(self._held, "stack", None) is not None:
            yield
            return
        stack = ExitStack()
        self._held.stack = stack
        try:
            yield
        finally:
            self._held.stack = self._held.con = None
            stack.close()

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        held = getattr(self._held, "con", None)
        if held is not None:  # inside reading(): its connection, closed when the block ends
            yield held
            return
        stack = getattr(self._held, "stack", None)
        if stack is not None:  # the first read of a reading() block opens its connection
            self._held.con = stack.enter_context(self._open())
            yield self._held.con
            return
        with self._open() as con:
            yield con

    @contextmanager
    def _open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        delay = 0.01
        if not self._ready:  # a fresh lab home: DuckDB does not create the folder
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"cannot open database {self.path}: cannot create its folder ({e})"
                ) from None
        with _process_lock:
            while True:
                try:
                    con = duckdb.connect(str(self.path))
                    break
                except duckdb.Error as e:
                    if _is_lock_error(e) and time.monotonic() < deadline:
                        time.sleep(delay * (1 + random.random()))
                        delay = min(delay * 2, 0.5)
                        continue
                    if _is_lock_error(e):
                        raise StoreError(
                            f"the database {self.path.name} stayed locked by another process for "
                            f"{LOCK_TIMEOUT_S:.0f} s; try again"
                        ) from None
                    raise StoreError(f"cannot open database {self.path}: {e}") from None
            try:
                if not self._ready:
                    self._init(con)
                yield con
            finally:
                con.close()

    @contextmanager
    def tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as e:
                with suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if isinstance(e, duckdb.Error) and not _is_lock_error(e):
                    # e.g. the disk is full: one clear sentence; callers may buffer and retry
                    raise StoreError(
                        f"could not write to the database {self.path.name}: "
                        f"{str(e).strip().splitlines()[0]}"
                    ) from None
                raise

    def _init(self, con: duckdb.DuckDBPyConnection) -> None:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        if "meta" in tables:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database {self.path.name} was written by a newer Forgetting Lab "
                    f"(schema {version}, this one reads up to {SCHEMA_VERSION}); upgrade, or use another --db"
                )
            if version < SCHEMA_VERSION:
                self._migrate(con, version)
        elif tables:
            raise StoreError(f"{self.path.name} is a DuckDB file but not a Forgetting Lab database")
        else:
            con.execute(SCHEMA)
            con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
            )
        self._ready = True

    # version -> statements that bring a database from that version to the next one. Frozen as
    # written: a migration never reads SCHEMA, so a later edit of the schema cannot change what
    # an old migration does (a change to the schema is a new version with its own statements).
    MIGRATIONS = {
        1: [
            "ALTER TABLE points ADD COLUMN mc_acc_before DOUBLE",
            "ALTER TABLE points ADD COLUMN mc_acc_after DOUBLE",
            "ALTER TABLE points ADD COLUMN mc_drop_pts DOUBLE",
        ],
        2: [
            "ALTER TABLE points ADD COLUMN model_mem_mb DOUBLE",
            "ALTER TABLE points ADD COLUMN disk_mb DOUBLE",
            "ALTER TABLE points ADD COLUMN gen_tokens_per_s DOUBLE",
            "ALTER TABLE points ADD COLUMN stop_step INTEGER",
            """CREATE TABLE IF NOT EXISTS spectral (
                run_id VARCHAR, scale INTEGER, seed INTEGER, name VARCHAR, layer INTEGER,
                module VARCHAR, fro_norm DOUBLE, eff_rank DOUBLE, topk_cos DOUBLE, k INTEGER,
                PRIMARY KEY (run_id, scale, seed, name)
            )""",
            """CREATE TABLE IF NOT EXISTS run_info (
                run_id VARCHAR, key VARCHAR, value_json VARCHAR,
                PRIMARY KEY (run_id, key)
            )""",
        ],
        3: ["ALTER TABLE generations ADD COLUMN reason VARCHAR"],
        4: [
            "ALTER TABLE points ADD COLUMN general_ppl_stmt_before DOUBLE",
            "ALTER TABLE points ADD COLUMN general_ppl_stmt_after DOUBLE",
            "ALTER TABLE points ADD COLUMN degradation_stmt_pct DOUBLE",
            "ALTER TABLE points ADD COLUMN kl_to_base DOUBLE",
            "ALTER TABLE points ADD COLUMN general_ce_delta DOUBLE",
        ],
        5: [
            "ALTER TABLE points ADD COLUMN intruder_dims INTEGER",
            "ALTER TABLE spectral ADD COLUMN intruder_dims INTEGER",
            """CREATE TABLE IF NOT EXISTS mc_items (
                run_id VARCHAR, scale INTEGER, seed INTEGER, item INTEGER,
                correct_before BOOLEAN, correct_after BOOLEAN,
                PRIMARY KEY (run_id, scale, seed, item)
            )""",
        ],
    }

    def _migrate(self, con: duckdb.DuckDBPyConnection, version: int) -> None:
        if version not in self.MIGRATIONS:
            raise StoreError(
                f"the database {self.path.name} has schema version {version}, which this version "
                "cannot migrate; export it with the version that wrote it"
            )
        con.execute("BEGIN TRANSACTION")
        try:
            for v in range(version, SCHEMA_VERSION):
                for stmt in self.MIGRATIONS[v]:
                    con.execute(stmt)
            con.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)]
            )
            con.execute("COMMIT")
        except duckdb.Error as e:
            con.execute("ROLLBACK")
            raise StoreError(f"could not migrate {self.path.name}: {e}") from None

    def query_df(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self._connect() as con:
            return con.execute(sql, params or []).df()

    # -- runs -------------------------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        spec,
        status: str = "queued",
        device: str = "",
        versions: dict | None = None,
        git_commit: str = "",
    ) -> None:
        self.create_runs([(run_id, spec)], status, device, versions, git_commit)

    def create_runs(
        self,
        runs: list[tuple[str, Any]],
        status: str = "queued",
        device: str = "",
        versions: dict | None = None,
        git_commit: str = "",
    ) -> None:
        """Store runs (run id, spec) in one transaction. Several form a group (run fact
        `group`: every member's id, in order), which the worker claims and trains together
        (`claim_next_group`): a queue sees all of them or none."""
        with self.tx() as con:
            for run_id, spec in runs:
                con.execute(
                    """INSERT INTO runs (run_id, name, created_at, status, spec_json, model, method,
                       domain, lora_rank, device, versions_json, git_commit, host)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    [
                        run_id,
                        spec.name,
                        now(),
                        status,
                        spec.to_json(),
                        spec.model,
                        spec.method,
                        spec.domain,
                        spec.lora_rank if spec.method in ("lora", "qlora") else None,
                        device,
                        json.dumps(versions or {}),
                        git_commit,
                        socket.gethostname(),
                    ],
                )
            if len(runs) > 1:
                group = json.dumps({"runs": [r for r, _ in runs]})
                for run_id, _ in runs:
                    con.execute(
                        "INSERT OR REPLACE INTO run_info VALUES (?, 'group', ?)", [run_id, group]
                    )

    def get_run(self, run_id: str) -> dict[str, Any]:
        df = self.query_df("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if df.empty:
            raise RunNotFound(f"no run with id '{run_id}' in {self.path.name}")
        return df.iloc[0].to_dict()

    def get_spec(self, run_id: str):
        """The run's settings as stored when it was created."""
        return spec_of(self.get_run(run_id))

    def list_runs(self) -> pd.DataFrame:
        df = self.query_df(
            """SELECT r.*, (SELECT count(*) FROM points p
                            WHERE p.run_id = r.run_id AND p.status = ?) AS points_done,
                      (SELECT value_json FROM run_info i
                       WHERE i.run_id = r.run_id AND i.key = 'group') AS group_json
               FROM runs r ORDER BY created_at DESC""",
            [DONE],
        )
        df["n_points"] = [_n_points(s) for s in df["spec_json"]] if not df.empty else []
        # the runs queued with this one (`create_runs`), itself included; [] when queued alone
        df["group"] = [json.loads(g)["runs"] if g else [] for g in df.pop("group_json")]
        return df

    def set_status(self, run_id: str, status: str, error: str | None = None, **fields: Any) -> None:
        sets = ["status = ?"]
        params: list[Any] = [status]
        if status == "running":
            sets += [
                "started_at = coalesce(started_at, ?)",
                "heartbeat_at = ?",
                "finished_at = NULL",
                "error = NULL",
            ]
            params += [now(), now()]
        if status in FINAL_STATES:
            sets.append("finished_at = ?")
            params.append(now())
        if error is not None:
            sets.append("error = ?")
            params.append(error)
        for k, v in fields.items():
            sets.append(f"{k} = ?")
            params.append(v)
        with self.tx() as con:
            con.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id = ?", [*params, run_id])

    def claim_next_group(self, pid: int) -> list[str]:
        """Atomically move the oldest queued run, and the queued runs of its group (see
        `create_runs`), to running for this worker; [] when none is queued."""
        with self.tx() as con:
            row = con.execute(
                """SELECT r.run_id, i.value_json FROM runs r
                   LEFT JOIN run_info i ON i.run_id = r.run_id AND i.key = 'group'
                   WHERE r.status = 'queued' ORDER BY r.created_at, r.run_id LIMIT 1"""
            ).fetchone()
            if not row:
                return []
            ids = [row[0]]
            if row[1]:
                members = json.loads(row[1])["runs"]
                queued = {
                    r
                    for (r,) in con.execute(
                        f"SELECT run_id FROM runs WHERE status = 'queued' "
                        f"AND run_id IN ({', '.join('?' * len(members))})",
                        members,
                    ).fetchall()
                }
                ids = [r for r in members if r in queued]
            self._claim(con, pid, ids)
            return ids

    @staticmethod
    def _claim(con, pid: int, run_ids: list[str]) -> None:
        for run_id in run_ids:
            con.execute(
                """UPDATE runs SET status = 'running', pid = ?, host = ?, heartbeat_at = ?,
                   started_at = coalesce(started_at, ?), finished_at = NULL, error = NULL
                   WHERE run_id = ?""",
                [pid, socket.gethostname(), now(), now(), run_id],
            )

    def request_cancel(self, run_id: str) -> None:
        with self.tx() as con:
            con.execute("UPDATE runs SET cancel_requested = TRUE WHERE run_id = ?", [run_id])

    def cancel_requested(self, run_id: str) -> bool:
        with self._connect() as con:
            row = con.execute(
                "SELECT cancel_requested FROM runs WHERE run_id = ?", [run_id]
            ).fetchone()
        return bool(row and row[0])

    def delete_run(self, run_id: str) -> None:
        self.get_run(run_id)
        with self.tx() as con:
            for t in (
                "spectral",
                "mc_items",
                "run_info",
                "step_losses",
                "generations",
                "progress",
                "item_nll",
                "evals",
                "points",
                "runs",
            ):
                con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])

    # -- points -----------------------------------------------------------------------------
    def finished_points(self, run_id: str) -> set[tuple[int, int]]:
        """The (scale, seed) points of a run that are FINISHED (resume skips them)."""
        with self._connect() as con:
            rows = con.execute(
                f"SELECT scale, seed FROM points WHERE run_id = ? "
                f"AND status IN ({', '.join('?' * len(FINISHED))})",
                [run_id, *FINISHED],
            ).fetchall()
        return {(int(a), int(b)) for a, b in rows}

    def save_point(self, run_id: str, r: PointResult) -> None:
        """Write a point and all its details at once; writing it again replaces it (idempotent)."""
        m = dict(r.metrics)
        cols = ["run_id", "scale", "seed", "status", *m.keys(), "finished_at"]
        vals = [run_id, r.scale, r.seed, r.status, *m.values(), now()]
        key = [run_id, r.scale, r.seed]
        with self.tx() as con:
            for t in ("evals", "item_nll", "points", "spectral", "mc_items"):
                con.execute(f"DELETE FROM {t} WHERE run_id = ? AND scale = ? AND seed = ?", key)
            con.execute(
                "DELETE FROM generations WHERE run_id = ? AND scale = ? AND seed = ? AND stage <> 'before'",
                key,
            )
            con.execute(
                f"INSERT INTO points ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                vals,
            )
            if r.evals:
                con.executemany(
                    "INSERT INTO evals VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        [*key, e["eval_set"], e["ppl_before"], e["ppl_after"], e["change_pct"]]
                        for e in r.evals
                    ],
                )
            if r.item_nll:
                df = pd.DataFrame(r.item_nll)
                df.insert(0, "seed", r.seed)
                df.insert(0, "scale", r.scale)
                df.insert(0, "run_id", run_id)
                con.register("_items", df)
                con.execute(
                    "INSERT INTO item_nll SELECT run_id, scale, seed, eval_set, item, nll_before, nll_after, tokens FROM _items"
                )
                con.unregister("_items")
            self._insert_generations(con, run_id, r.scale, r.seed, "after", r.generations)
            for stage, gens in r.checks:
                self._insert_generations(con, run_id, r.scale, r.seed, stage, gens)
            if r.spectral:
                con.executemany(
                    "INSERT INTO spectral (run_id, scale, seed, name, layer, module, fro_norm, "
                    "eff_rank, topk_cos, k, intruder_dims) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        [*key, x["name"], x["layer"], x["module"], x["fro_norm"], x["eff_rank"]]
                        + [x["topk_cos"], x["k"], x.get("intruder_dims")]  # older spills: none
                        for x in r.spectral
                    ],
                )
            if r.mc_items:  # one statement for a point's ~100 questions, as for item_nll
                mc = pd.DataFrame(
                    [
                        (*key, int(x["item"]), bool(x["correct_before"]), bool(x["correct_after"]))
                        for x in r.mc_items
                    ],
                    columns=["run_id", "scale", "seed", "item", "correct_before", "correct_after"],
                )
                con.register("_mc", mc)
                con.execute(
                    "INSERT INTO mc_items SELECT run_id, scale, seed, item, correct_before, "
                    "correct_after FROM _mc"
                )
                con.unregister("_mc")
            con.execute(
                "UPDATE progress SET phase = ?, updated_at = ? WHERE run_id = ? AND scale = ? AND seed = ?",
                [r.status, now(), *key],
            )

    @staticmethod
    def _insert_generations(con, run_id, scale, seed, stage, gens) -> None:
        if gens:
            con.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [
                        run_id,
                        scale,
                        seed,
                        stage,
                        i,
                        g["prompt"],
                        g["output"],
                        g["new_tokens"],
                        g["ok"],
                        g.get("reason") or None,  # points spilled by older versions have none
                    ]
                    for i, g in enumerate(gens)
                ],
            )

    def save_run_info(self, run_id: str, key: str, value: Any) -> None:
        """A run-level fact (JSON), e.g. ADAPT-Q's activation profile."""
        with self.tx() as con:
            con.execute(
                "INSERT OR REPLACE INTO run_info VALUES (?, ?, ?)", [run_id, key, json.dumps(value)]
            )

    def run_info(self, run_id: str) -> dict[str, Any]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT key, value_json FROM run_info WHERE run_id = ?", [run_id]
            ).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def spectral_df(self, run_ids: list[str]) -> pd.DataFrame:
        """Per-matrix spectral rows of the runs' finished points, with the run's method and rank."""
        if not run_ids:
            return pd.DataFrame()
        return self.query_df(
            f"""SELECT s.*, r.method, r.lora_rank AS rank, r.name AS run_name
                FROM spectral s JOIN runs r USING (run_id)
                WHERE s.run_id IN ({", ".join("?" * len(run_ids))})
                ORDER BY s.run_id, s.scale, s.seed, s.layer, s.module""",
            list(run_ids),
        )

    def save_base_generations(self, run_id: str, gens: list[dict]) -> None:
        """The base model's answers, stored once per run under scale 0."""
        with self.tx() as con:
            self._insert_generations(con, run_id, 0, 0, "before", gens)

    def record_progress(
        self,
        run_id: str,
        scale: int,
        seed: int,
        phase: str,
        step: int,
        total: int,
        loss: float | None,
        losses: list[tuple[int, float]],
        restart: bool = False,
    ) -> None:
        """Progress of one point in flight plus its buffered step losses (see record_progress_many)."""
        self.record_progress_many(
            run_id, [(scale, seed, phase, step, total, loss, losses)], restart
        )

    def record_progress_many(self, run_id: str, items: list[tuple], restart: bool = False) -> bool:
        """Progress rows (scale, seed, phase, step, total, loss, losses) of every point in flight,
        in one transaction; also the run's heartbeat. `restart` starts the points afresh. Returns
        the run's cancel flag, read in the same connection (a connection costs ~20 ms on a
        2-core machine: the training loop's writer need not open a second one to poll it).

        The rows go in as two DataFrames, one statement per table: the local backend's training
        loop waits for this write (about once a second). Row by row, 15 points x 40 losses took
        662 ms per write; this way 29 ms (bench/progress_writes.py)."""
        t = now()
        prog = pd.DataFrame(
            [(run_id, sc, sd, ph, st, tot, loss) for sc, sd, ph, st, tot, loss, _ in items],
            columns=["run_id", "scale", "seed", "phase", "step", "total_steps", "loss"],
        ).drop_duplicates(["run_id", "scale", "seed"], keep="last")
        losses = pd.DataFrame(
            [(run_id, sc, sd, st, v) for sc, sd, *_, ls in items for st, v in (ls or [])],
            columns=["run_id", "scale", "seed", "step", "loss"],
        ).drop_duplicates(["run_id", "scale", "seed", "step"], keep="last")
        kinds = {"scale": "int64", "seed": "int64", "step": "int64", "loss": "float64"}
        prog, losses = prog.astype(kinds), losses.astype(kinds)
        with self.tx() as con:
            con.register("new_progress", prog)
            con.register("new_losses", losses)
            try:
                if restart:
                    for table in ("step_losses", "progress"):
                        con.execute(
                            f"DELETE FROM {table} USING new_progress n WHERE {table}.run_id = "
                            f"n.run_id AND {table}.scale = n.scale AND {table}.seed = n.seed"
                        )
                con.execute(
                    """INSERT OR REPLACE INTO progress
                       SELECT n.run_id, n.scale, n.seed, n.phase, n.step, n.total_steps, n.loss,
                              coalesce(p.started_at, ?), ?
                       FROM new_progress n LEFT JOIN progress p
                         ON p.run_id = n.run_id AND p.scale = n.scale AND p.seed = n.seed""",
                    [t, t],
                )
                if len(losses):
                    con.execute(
                        "INSERT OR REPLACE INTO step_losses "
                        "SELECT run_id, scale, seed, step, loss FROM new_losses"
                    )
                con.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", [t, run_id])
            finally:
                con.unregister("new_progress")
                con.unregister("new_losses")
            rows = con.execute(
                "SELECT cancel_requested FROM runs WHERE run_id = ?", [run_id]
            ).fetchall()
        return bool(rows and rows[0][0])

    # -- reads for the app and the CLI --------------------------------------------------------
    def points_df(self, run_ids: list[str] | None = None) -> pd.DataFrame:
        sql = EXPORT_SQL
        params: list[Any] = []
        if run_ids is not None:
            if not run_ids:
                return self.query_df(EXPORT_SQL + " WHERE FALSE")
            sql += f" WHERE p.run_id IN ({', '.join('?' * len(run_ids))})"
            params = list(run_ids)
        return self.query_df(sql + " ORDER BY p.run_id, p.scale, p.seed", params)

    def count_points(self, run_id: str, status: str) -> int:
        with self._connect() as con:
            row = con.execute(
                "SELECT count(*) FROM points WHERE run_id = ? AND status = ?", [run_id, status]
            ).fetchone()
        return int(row[0])

    def finished_adapters(self, run_id: str) -> pd.DataFrame:
        """The DONE points of a run (measured in full) with their saved adapter (for the Smoke
        test page)."""
        return self.query_df(
            "SELECT scale, seed, adapter_path, degradation_pct FROM points "
            "WHERE run_id = ? AND status = ? ORDER BY scale, seed",
            [run_id, DONE],
        )

    def progress_df(self, run_id: str) -> pd.DataFrame:
        return self.query_df(
            "SELECT * FROM progress WHERE run_id = ? ORDER BY scale, seed", [run_id]
        )

    def losses_df(self, run_id: str) -> pd.DataFrame:
        return self.query_df(
            "SELECT scale, seed, step, loss FROM step_losses WHERE run_id = ? ORDER BY scale, seed, step",
            [run_id],
        )

    def generations_df(
        self, run_id: str, scale: int | None = None, seed: int | None = None
    ) -> pd.DataFrame:
        sql = "SELECT * FROM generations WHERE run_id = ?"
        params: list[Any] = [run_id]
        if scale is not None:
            sql += " AND ((scale = ? AND seed = ?) OR stage = 'before')"
            params += [scale, seed]
        return self.query_df(sql + " ORDER BY stage DESC, scale, seed, idx", params)

    def smoke_failures(self, run_ids: list[str]) -> pd.DataFrame:
        """The answers that failed the smoke test after training, per point, with the verdict's
        reason (NULL for answers stored before reasons were)."""
        if not run_ids:
            return pd.DataFrame(columns=["run_id", "scale", "seed", "idx", "prompt", "reason"])
        return self.query_df(
            f"""SELECT run_id, scale, seed, idx, prompt, reason FROM generations
                WHERE stage = 'after' AND NOT ok AND run_id IN ({", ".join("?" * len(run_ids))})
                ORDER BY run_id, scale, seed, idx""",
            list(run_ids),
        )

    def evals_df(self, run_ids: list[str] | None = None) -> pd.DataFrame:
        sql = """SELECT e.*, r.domain AS train_domain, r.method, r.model, r.lora_rank AS rank
                 FROM evals e JOIN runs r USING (run_id)"""
        params: list[Any] = []
        if run_ids:
            sql += f" WHERE e.run_id IN ({', '.join('?' * len(run_ids))})"
            params = list(run_ids)
        return self.query_df(sql, params)

    def item_nll_df(self, run_id: str, eval_set: str = "general") -> pd.DataFrame:
        return self.query_df(
            "SELECT * FROM item_nll WHERE run_id = ? AND eval_set = ? ORDER BY scale, seed, item",
            [run_id, eval_set],
        )

    def mc_items_df(self, run_id: str) -> pd.DataFrame:
        """Each multiple-choice question of each point: right before and after fine-tuning
        (`item`: its index in the whole question set). Empty for runs stored before schema 6."""
        return self.query_df(
            "SELECT * FROM mc_items WHERE run_id = ? ORDER BY scale, seed, item", [run_id]
        )

    def export(self, out: str | os.PathLike, fmt: str, run_ids: list[str] | None = None) -> int:
        """Write per-point results with DuckDB's COPY; returns the number of rows written."""
        if fmt not in ("csv", "parquet"):
            raise StoreError(f"unknown export format '{fmt}'; use csv or parquet")
        out = Path(out).expanduser().resolve()
        if not out.parent.is_dir():
            raise StoreError(f"the folder {out.parent} does not exist")
        sql = EXPORT_SQL
        params: list[Any] = []
        if run_ids:
            sql += f" WHERE p.run_id IN ({', '.join('?' * len(run_ids))})"
            params = list(run_ids)
        target = str(out).replace("'", "''")
        with self._connect() as con:
            n = con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
            options = "FORMAT csv, HEADER" if fmt == "csv" else "FORMAT parquet"
            try:
                con.execute(
                    f"COPY ({sql} ORDER BY p.run_id, p.scale, p.seed) TO '{target}' ({options})",
                    params,
                )
            except duckdb.Error as e:
                raise StoreError(f"could not write {out.name}: {str(e).splitlines()[0]}") from None
        return int(n)


def spec_of(run: dict[str, Any]):
    """The RunSpec of a row of the runs table (`get_run`'s dictionary)."""
    from .config import RunSpec

    return RunSpec.from_dict(json.loads(run["spec_json"]))


def _n_points(spec_json: str) -> int:
    try:
        d = json.loads(spec_json)
        return len(d["scales"]) * len(d["seeds"])
    except (ValueError, KeyError, TypeError):
        return 0
