"""The launch story: a run's progress first, one ETA for the whole run, errors in the form's
words, names that say what differs, no resume for runs whose settings failed."""

import os
import socket

from streamlit.testing.v1 import AppTest

from core import runner
from core.config import preset, run_name
from core.errors import ConfigError
from core.store import Store
from tests.conftest import ROOT


def _launch_page(db, monkeypatch) -> AppTest:
    monkeypatch.setenv("FORGETTING_LAB_DB", str(db))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/launch.py")
    return at.run()


def test_run_names_say_what_differs_from_the_preset():
    spec = preset("quick-cpu", lora_rank=16, domain="medical")
    assert run_name("quick-cpu", spec) == "quick-cpu · r16 · medical"
    assert run_name("quick-cpu", preset("quick-cpu")) == "quick-cpu"


def test_a_running_run_is_shown_first_with_a_whole_run_eta(db, monkeypatch):
    store = Store(db)
    run_id = runner.create_run(store, preset("tiny-test", scales=(4, 8)), "queued")
    store.set_status(run_id, "running", pid=os.getpid(), host=socket.gethostname())
    store.save_run_info(run_id, "timing", {"base_s": 2.0})
    store.record_progress(run_id, 4, 0, "training", 2, 4, 1.5, [(1, 2.0), (2, 1.5)], restart=True)
    at = _launch_page(db, monkeypatch)
    assert not at.exception, at.exception
    assert at.subheader[0].value == "Progress"  # above the form
    form = next(e for e in at.expander if e.label == "New run")
    assert not form.proto.expanded  # the form is folded while a run is active
    texts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert any(p.proto.text.startswith("Whole run: 0 of 2 points done") for p in at.get("progress"))
    assert any("Status: :blue[running]" in t for t in texts)
    assert any("4 samples (seed 0): training" in t for t in texts)


def test_form_errors_name_the_form_fields_and_store_nothing(db, monkeypatch):
    at = _launch_page(db, monkeypatch)
    at.selectbox[0].set_value("tiny-test").run()  # the preset
    rank = next(t for t in at.text_input if t.label == "LoRA rank(s)")
    rank.set_value("2048")
    at.button[-1].click().run()  # "Queue run"
    errors = " ".join(e.value for e in at.error)
    assert "**LoRA rank(s)**" in errors and "lora_rank" not in errors
    assert Store(db).list_runs().empty


def test_several_domains_queue_one_group_and_bad_lists_name_their_field(db, monkeypatch):
    """Two domains picked in the form queue two runs as one group (trained together by the
    worker); a replay list with a non-number, or no domain at all, is refused in the form's
    words and stores nothing."""
    monkeypatch.setattr(runner, "spawn_worker", lambda db: None)  # queue only, no training
    at = _launch_page(db, monkeypatch)
    at.selectbox[0].set_value("tiny-test").run()  # the preset
    next(t for t in at.text_input if t.label == "Replay fraction(s)").set_value("0, abc")
    at.button[-1].click().run()  # "Queue run"
    errors = " ".join(e.value for e in at.error)
    assert "**Replay fraction(s)**: 'abc' is not a number" in errors, errors
    next(m for m in at.multiselect if m.label == "Domain(s)").set_value([])
    next(t for t in at.text_input if t.label == "Replay fraction(s)").set_value("0")
    at.button[-1].click().run()
    errors = " ".join(e.value for e in at.error)
    assert "**Domain(s)**: give at least one value" in errors, errors
    assert Store(db).list_runs().empty

    next(m for m in at.multiselect if m.label == "Domain(s)").set_value(["legal", "financial"])
    at.button[-1].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    runs = Store(db).list_runs()
    assert sorted(runs.domain) == ["financial", "legal"] and set(runs.status) == {"queued"}
    group = runs.group.iloc[0]
    assert sorted(group) == sorted(runs.run_id) and all(g == group for g in runs.group)
    # the panel shows each series of the group, the sidebar says they go together
    bars = [p.proto.text for p in at.get("progress")]
    assert sorted(bars) == [
        "tiny-test · financial: 0 of 3 points done · queued",
        "tiny-test: 0 of 3 points done · queued",
    ], bars
    side = [c.value for c in _launch_page(db, monkeypatch).sidebar.get("caption")]
    assert sum("(one of a group of 2)" in c for c in side) == 2, side
    assert Store(db).claim_next_group(os.getpid()) == group  # the worker takes both at once


def test_a_run_that_cannot_fit_in_memory_is_refused_before_queueing(db, monkeypatch):
    monkeypatch.setattr("core.memory.free_bytes", lambda device: 1024)
    at = _launch_page(db, monkeypatch)
    at.selectbox[0].set_value("tiny-test").run()
    at.button[-1].click().run()  # "Queue run"
    errors = " ".join(e.value for e in at.error)
    assert "**Model**" in errors and "needs at least" in errors and "0.0 GB are free" in errors
    assert Store(db).list_runs().empty


def test_a_run_whose_settings_failed_offers_no_resume(db):
    store = Store(db)
    run_id = runner.create_run(store, preset("tiny-test"), "queued")
    store.set_status(run_id, "failed", error=runner.SETTINGS_ERROR + "lora_rank: too large")
    assert not runner.can_resume(store.get_run(run_id))
    try:
        runner.prepare_resume(store, run_id)
    except Exception as e:
        assert "would fail again" in str(e)
    else:
        raise AssertionError("resume accepted a run whose settings failed")
    other = runner.create_run(store, preset("tiny-test"), "queued")
    store.set_status(other, "failed", error="RuntimeError: out of memory")
    assert runner.can_resume(store.get_run(other))


def test_settings_errors_at_run_time_are_marked(db, monkeypatch):
    store = Store(db)
    run_id = runner.create_run(store, preset("tiny-test"), "running")

    def bad(*a, **k):
        raise ConfigError("lora_rank: 64 is larger than the narrowest targeted layer (32)")

    monkeypatch.setattr("core.engine.run_group", bad)
    assert runner.execute(store, run_id) == "failed"
    assert store.get_run(run_id)["error"].startswith(runner.SETTINGS_ERROR)
