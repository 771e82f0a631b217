"""Faults, fuzzed input and security properties (docs/RELIABILITY.md lists each with its test)."""

import re
import subprocess
import sys
import threading
import time
import tomllib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import data, runner
from core.config import RunSpec, parse_int_list, preset
from core.errors import ConfigError, DataError, LabError
from core.smoke import check_settings, clean_prompt
from core.store import Store
from tests.conftest import ROOT


def test_out_of_memory_fails_one_point_and_the_sweep_goes_on(db, monkeypatch):
    from core import train

    real = train.train_point

    def oom_at_8(model, tok, samples, spec, seed, **kw):
        if len(samples) == 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, tok, samples, spec, seed, **kw)

    monkeypatch.setattr("core.engine.train_point", oom_at_8)
    s = Store(db)
    run_id = runner.create_run(s, preset("tiny-test", trainer="sequential"), "running")
    assert runner.run_foreground(s, run_id) == "done"
    pts = s.query_df(
        "SELECT scale, status, error FROM points WHERE run_id = ? ORDER BY scale", [run_id]
    )
    assert list(pts.status) == ["done", "failed", "done"]
    assert "out of memory" in pts.error[1]
    assert s.get_run(run_id)["error"] == "1 point(s) failed"
    # resume retries only the failed point
    runner.prepare_resume(s, run_id)
    monkeypatch.setattr("core.engine.train_point", real)
    runner.run_foreground(s, run_id)
    assert list(s.points_df([run_id]).status) == ["done", "done", "done"]


def test_unwritable_database_gives_one_clear_line(tmp_path):
    """A database path that cannot be created (its parent is a file; works as root too)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    r = subprocess.run(
        [sys.executable, "-m", "core", "list", "--db", str(blocker / "x.duckdb")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: cannot open database"), r.stderr


def test_app_restart_picks_up_a_running_run(db, monkeypatch):
    """The worker belongs to no app: a fresh app session (a restart) shows the run's progress."""
    from streamlit.testing.v1 import AppTest

    s = Store(db)
    run_id = runner.launch(s, preset("tiny-test", scales=(4, 1500)))
    end = time.time() + 120
    while time.time() < end and s.progress_df(run_id).query("scale == 1500 and step > 0").empty:
        time.sleep(0.3)
    monkeypatch.setenv("FORGETTING_LAB_DB", str(db))
    for _ in range(2):  # the first session, then a "restarted" one
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.switch_page("pages/launch.py")
        at.run()
        assert not at.exception
        text = " ".join(m.value for m in at.markdown)
        assert "running" in text or "done" in text
        del at
    runner.cancel(s, run_id)


def test_cli_run_export_and_app_reads_together_lose_nothing(db, tmp_path, monkeypatch):
    """A CLI run writing, CLI exports and app page renders at the same time: no lock error reaches
    anyone and every point is there at the end (up to a minute of overlap)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FORGETTING_LAB_DB", str(db))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core",
            "run",
            "--preset",
            "tiny-test",
            "--scales",
            ",".join(map(str, range(4, 64))),  # 60 points: about a minute of writing
            "--db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors, exports = [], 0
    end = time.time() + 60
    while time.time() < end and proc.poll() is None:
        e = subprocess.run(
            [
                sys.executable,
                "-m",
                "core",
                "export",
                "--db",
                str(db),
                "--out",
                str(tmp_path / "x.csv"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if e.returncode != 0:
            errors.append(e.stderr)
        exports += 1
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.switch_page("pages/runs.py")
        at.run()
        errors += [str(x.value) for x in at.exception] + [x.value for x in at.error]
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not errors, errors
    assert exports >= 1
    assert len(Store(db).points_df()) == 60  # rows lost: 0


# -- fuzzing -------------------------------------------------------------------------------------
@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_scale_parsing_fuzz(text):
    try:
        out = parse_int_list(text, "scales")
    except ConfigError:
        return
    assert all(isinstance(v, int) for v in out)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "scales",
                "seeds",
                "epochs",
                "lora_rank",
                "learning_rate",
                "method",
                "lora_dropout",
                "max_length",
                "rank",
                "model",
            ]
        ),
        st.one_of(
            st.integers(-10, 10**7),
            st.floats(allow_nan=True),
            st.text(max_size=8),
            st.lists(st.integers(-5, 10**7), max_size=4),
            st.none(),
            st.booleans(),
        ),
    )
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_run_spec_parsing_fuzz(d):
    """Any dict either becomes a valid spec or raises ConfigError: never anything else."""
    try:
        spec = RunSpec.from_dict(d)
    except ConfigError:
        return
    assert spec.scales == tuple(sorted(spec.scales)) and all(s > 0 for s in spec.scales)


@given(st.sampled_from(["a.txt", "a.csv", "a.jsonl", "a.bin"]), st.binary(max_size=400))
@settings(max_examples=400, deadline=None)
def test_upload_parsing_fuzz(name, payload):
    try:
        rows = data.parse_upload(name, payload)
    except DataError:
        return
    assert len(rows) >= data.MIN_SENTENCES and len(set(rows)) == len(rows)


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ("", "type a prompt"),
        ("   \n ", "type a prompt"),
        ("x" * 2001, "limit"),
        ("hi\x1b[31m", "control characters"),
        ("nul\x00", "control characters"),
    ],
)
def test_bad_prompts(prompt, fragment):
    with pytest.raises(DataError, match=fragment):
        clean_prompt(prompt)


@pytest.mark.parametrize("tokens, temp", [(0, 0.0), (257, 0.0), (10, -0.1), (10, 2.5)])
def test_generation_settings_out_of_range(tokens, temp):
    with pytest.raises(DataError):
        check_settings(tokens, temp)


def test_cancel_of_unknown_and_finished_runs(db):
    s = Store(db)
    with pytest.raises(LabError, match="no run with id"):
        runner.cancel(s, "nope")
    run_id = runner.create_run(s, preset("tiny-test", scales=(4,)), "running")
    runner.run_foreground(s, run_id)
    before = s.get_run(run_id)
    with pytest.raises(LabError, match="already ended"):
        runner.cancel(s, run_id)
    assert s.get_run(run_id)["status"] == before["status"] == "done"


# -- security ------------------------------------------------------------------------------------
def _core_sources():
    return {p: p.read_text() for p in (ROOT / "core").rglob("*.py")} | {
        p: p.read_text() for p in (ROOT / "pages").rglob("*.py")
    }


def test_trust_remote_code_is_never_enabled():
    for path, text in _core_sources().items():
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path


def test_no_shell_and_no_pickle_loads():
    for path, text in _core_sources().items():
        assert "shell=True" not in text and "os.system(" not in text and "os.popen(" not in text, (
            path
        )
        assert "pickle" not in text, path
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), path


def test_server_binds_localhost_with_xsrf_and_upload_limit():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "localhost"
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["maxUploadSize"] <= data.MAX_UPLOAD_BYTES // 2**20
    assert "--server.address localhost" in (ROOT / "Makefile").read_text()


def test_shipped_config_does_not_watch_files():
    """With file watching on, Streamlit watches the checkout recursively (the .venv that `make
    app` creates inside it too): an open tab kept a core busy and a run watched in the browser
    trained ~10x slower (bench/app_overhead.py)."""
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["fileWatcherType"] == "none"
    assert cfg["server"]["runOnSave"] is False
    make = (ROOT / "Makefile").read_text()
    assert "fileWatcherType" not in make  # the command line does not switch it back on


def test_shipped_config_does_not_collect_garbage_after_every_rerun():
    """Streamlit's default full gc.collect() after each script run cost ~0.5 s of CPU per live
    refresh in a server that holds torch: two thirds of its CPU while a tab watched a run."""
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["runner"]["postScriptGC"] is False
    assert "postScriptGC" not in (ROOT / "Makefile").read_text()


def test_favicon_is_served_from_the_machine():
    """A material-icon or emoji page icon makes the browser fetch it from an outside host."""
    app = (ROOT / "app.py").read_text()
    m = re.search(r"page_icon=(\w+)", app)
    assert m and m.group(1) == "ICON" and (ROOT / "data" / "icon.png").is_file()


def test_worker_command_line_carries_no_user_text(db, monkeypatch):
    seen = {}

    class FakePopen:
        def __init__(self, args, **kw):
            seen["args"], seen["kw"] = args, kw

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    runner.spawn_worker(db)
    assert seen["args"][1:4] == ["-m", "core", "worker"] and seen["args"][-1] == str(db)
    assert "shell" not in seen["kw"] and seen["kw"]["start_new_session"] is True


def test_threads_are_not_left_behind_by_smoke_streaming(tiny_run):
    from core.smoke import SmokeModel, StreamResult

    db, run_id = tiny_run
    s = Store(db)
    rel = s.query_df("SELECT adapter_path FROM points WHERE run_id = ? LIMIT 1", [run_id]).iloc[
        0, 0
    ]
    m = SmokeModel.for_point(s.get_run(run_id), rel)
    n0 = threading.active_count()
    res = StreamResult()
    text = "".join(m.stream("The court held that", True, 5, 0.0, result=res))
    assert text == res.text and res.new_tokens <= 5
    assert threading.active_count() <= n0


# -- the database cannot be written mid-run (disk full) -------------------------------------------
def _failing_writes(monkeypatch, store, fail):
    """save_point raises the store's disk-full error while fail(call_number) is true."""
    from core.errors import StoreError
    from core.store import Store as _S

    calls = {"n": 0}
    real = _S.save_point

    def save_point(self, run_id, r):
        calls["n"] += 1
        if fail(calls["n"], r):
            raise StoreError(
                "could not write to the database lab.duckdb: IO Error: No space left on device"
            )
        return real(self, run_id, r)

    monkeypatch.setattr(_S, "save_point", save_point)
    return calls


def test_disk_full_mid_run_buffers_points_and_writes_them_later(db, monkeypatch):
    from core import engine, runner
    from core.store import Store

    store = Store(db)
    rid = runner.create_run(store, preset("tiny-test"), status="running")
    _failing_writes(monkeypatch, store, lambda n, r: n in (1, 2))  # the first two writes fail
    seen = []
    assert engine.run_sweep(preset("tiny-test"), rid, store, seen.append) == "done"
    assert sorted(store.points_df([rid]).scale) == [4, 8, 16]  # nothing lost
    errors = [e for e in seen if e["type"] == "storage_error"]
    assert errors and "No space left" in errors[0]["message"]


def test_disk_full_to_the_end_spills_and_resume_imports_without_retraining(db, monkeypatch):
    from core import engine, outbox, runner
    from core.errors import StoreError
    from core.store import Store

    monkeypatch.setattr(outbox, "STORE_RETRY_S", 0.3)
    store = Store(db)
    spec = preset("tiny-test")
    rid = runner.create_run(store, spec, status="running")
    _failing_writes(monkeypatch, store, lambda n, r: r.scale >= 8)  # scale 4 fits, then full
    with pytest.raises(StoreError, match=r"2 finished point\(s\) are kept in .*resume"):
        engine.run_sweep(spec, rid, store)
    assert sorted(store.points_df([rid]).scale) == [4]
    spilled = list(outbox.spill_dir().glob(f"{rid}-*.json"))
    assert len(spilled) == 1
    monkeypatch.undo()  # space is free again
    seen = []
    assert runner.execute(store, rid, seen.append) == "done"
    assert sorted(store.points_df([rid]).scale) == [4, 8, 16]
    assert not any(e["type"] == "point_start" for e in seen)  # imported, not retrained
    assert not list(outbox.spill_dir().glob(f"{rid}-*.json"))


def test_sigterm_stops_a_packed_run_with_a_checkpoint_and_resume_finishes_it(db, monkeypatch):
    """`timeout`, `kill` or a scheduler's SIGTERM ends a run like a cancel: a checkpoint of the
    step it reached (no periodic one is due), status 'cancelled' naming the signal; resume then
    stores the same points as an uninterrupted run and drops the checkpoint."""
    import os
    import signal

    import core.engine
    from core.packed import Checkpoint
    from core.paths import checkpoints_dir

    monkeypatch.setattr(core.engine, "CHECKPOINT_EVERY_S", 1e9)  # only the stop saves
    monkeypatch.setattr(runner, "_signalled", [])
    old = signal.getsignal(signal.SIGTERM)
    s = Store(db)
    spec = preset("tiny-test", seeds=(0, 1), trainer="packed", pack_slots=6)
    whole = runner.create_run(s, spec, "running")
    assert runner.run_foreground(s, whole) == "done"
    cut = runner.create_run(s, spec, "running")
    steps = []

    def on_event(ev):  # the signal arrives mid-sweep, from outside the training loop's code
        if ev["type"] == "step":
            steps.append(ev["step"])
            if len(steps) == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        runner.install_stop_signals()
        assert runner.run_foreground(s, cut, on_event) == "cancelled"
    finally:
        signal.signal(signal.SIGTERM, old)
    run = s.get_run(cut)
    assert run["status"] == "cancelled" and "SIGTERM" in run["error"]
    ck = Checkpoint(checkpoints_dir() / cut)
    assert ck.exists() and ck.load_meta()["step"] > 0
    assert len(s.finished_points(cut)) < 6
    monkeypatch.setattr(runner, "_signalled", [])
    runner.prepare_resume(s, cut)
    assert runner.run_foreground(s, cut) == "done"
    assert not ck.exists()
    cols = ["scale", "seed", "general_ppl_after", "domain_ppl_after", "final_loss", "steps"]
    a = s.points_df([whole]).sort_values(["scale", "seed"])[cols].reset_index(drop=True)
    b = s.points_df([cut]).sort_values(["scale", "seed"])[cols].reset_index(drop=True)
    assert len(a) == 6 and a.equals(b)
