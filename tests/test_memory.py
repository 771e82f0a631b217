"""The memory preflight: a lower bound of what a run needs, from the model's shapes, checked
against the memory free before the run is queued."""

import pytest

from core import memory, runner
from core.config import preset
from core.errors import ConfigError
from core.models import skeleton
from core.store import Store


@pytest.fixture(scope="module")
def tiny():
    return skeleton("tiny")


def _counts(model):
    total = sum(p.numel() for p in model.parameters())
    linear = memory._block_linear_params(model)
    return total, linear, model.config.vocab_size


def test_need_counts_what_each_method_must_hold(tiny):
    total, linear, vocab = _counts(tiny)
    assert 0 < linear < total
    spec = preset("tiny-test", batch_size=2, max_length=64)
    logits = 2 * 2 * 64 * vocab * 4
    assert memory.need(tiny, spec) == memory.Need(4 * total, 0, logits)
    full = memory.need(tiny, preset("tiny-test", method="full", batch_size=2, max_length=64))
    assert full == memory.Need(4 * total, 16 * total, logits)
    q = memory.need(tiny, preset("tiny-test", method="qlora", batch_size=2, max_length=64))
    assert q.weights == 4 * (total - linear) + linear // 2 and q.training_state == 0
    a = memory.need(
        tiny,
        preset(
            "tiny-test",
            method="adaptq",
            adaptq_fraction=0.5,
            frozen_bits=8,
            batch_size=2,
            max_length=64,
        ),
    )
    assert a.weights == int(4 * (total - linear) + 4 * linear / 2 + linear / 2)
    assert a.training_state == int(16 * linear / 2)


def test_a_run_that_cannot_fit_is_refused_with_the_numbers_and_a_way_out(tiny):
    spec = preset("tiny-test", method="full")
    n = memory.need(tiny, spec)
    with pytest.raises(ConfigError) as e:
        memory.check(tiny, spec, free=n.total - 1)
    msg = str(e.value)
    assert msg.startswith("model: 'tiny' with method full needs at least")
    assert "training state" in msg and "LoRA or QLoRA" in msg
    assert "; " not in msg  # the form splits problems at '; '
    assert memory.check(tiny, spec, free=n.total) == n  # exactly enough passes


def test_free_memory_is_known_on_this_cpu():
    free = memory.free_bytes("cpu")
    assert free is not None and free > 0
    assert memory.free_bytes("mps") is None  # unknown there: the check is skipped


def test_preflight_refuses_before_anything_is_stored(tmp_path, monkeypatch):
    store = Store(tmp_path / "lab.duckdb")
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    with pytest.raises(ConfigError, match="needs at least"):
        runner.create_run(store, preset("tiny-test"), "queued")
    assert store.list_runs().empty
    monkeypatch.setattr(memory, "free_bytes", lambda device: None)  # unknown: not refused
    assert runner.create_run(store, preset("tiny-test"), "queued")
