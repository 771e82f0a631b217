"""The packed trainer gives every run exactly what the sequential loop gives it."""

import math

import pytest
import torch

from core import data
from core.config import preset
from core.methods import get_method
from core.models import load_model
from core.packed import save_peft_adapter, train_packed
from core.train import train_point


def _sequential(spec, seed, samples, dtype):
    from peft import get_peft_model_state_dict

    lm = load_model("tiny", "cpu", dtype=dtype)
    m = get_method("lora")
    model = m.prepare(lm.model, spec, seed)
    tr = train_point(model, lm.tokenizer, samples, spec, seed)
    return {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}, tr.losses


@pytest.mark.parametrize(
    "dtype, lr, clip, warmup, bs, tol",
    [
        # fp32: the issue's bar (1e-5 relative) at twenty times seed 000's learning rate
        (torch.float32, 1e-3, 0.0, 0.0, 1, 1e-5),
        (torch.float32, 1e-3, 0.5, 0.0, 1, 1e-5),
        # per-run warm-up (seed 001's 10 %, here 30 % so it spans several steps)
        (torch.float32, 1e-3, 0.5, 0.3, 1, 1e-5),
        # fp64 (transformers still computes its loss in fp32): a larger learning rate
        (torch.float64, 3e-3, 0.5, 0.0, 1, 1e-6),
        # batches of 3 per run (7 samples: 3 + 3 + 1 per epoch, a short last batch)
        (torch.float32, 1e-3, 0.5, 0.3, 3, 1e-5),
    ],
)
def test_packed_equals_sequential(dtype, lr, clip, warmup, bs, tol):
    spec = preset(
        "tiny-test",
        lora_dropout=0.0,
        learning_rate=lr,
        epochs=2,
        grad_clip=clip,
        warmup_ratio=warmup,
        batch_size=bs,
    )
    # Different sizes and seeds, 2 slots for 4 runs: runs join and finish at different times.
    runs = [
        ((n, s), s, data.domain_samples("legal", n, seed=s))
        for n, s in [(3, 0), (7, 1), (5, 2), (2, 0)]
    ]
    got = {}
    lm = load_model("tiny", "cpu", dtype=dtype)

    def on_done(packer, slot, run):
        got[run.key] = (packer.slot_state(slot), list(run.losses))

    assert train_packed(lm.model, lm.tokenizer, spec, runs, slots=2, on_done=on_done) == "done"
    assert set(got) == {r[0] for r in runs}
    for key, seed, samples in runs:
        want, want_losses = _sequential(spec, seed, samples, dtype)
        have, have_losses = got[key]
        assert have_losses == pytest.approx(want_losses, rel=tol)
        assert set(have) == set(want)
        for k in want:
            err = (have[k] - want[k]).norm() / max(want[k].norm(), 1e-12)
            assert err <= tol, (key, k, float(err))
    # the base model is untouched and its modules are back in place
    assert not any("Packed" in type(m).__name__ for m in lm.model.modules())


def test_exported_adapter_loads_in_peft_and_matches(tmp_path):
    from peft import PeftModel

    spec = preset("tiny-test", lora_dropout=0.0)
    lm = load_model("tiny", "cpu")
    ids = lm.tokenizer(["The court granted the motion."], return_tensors="pt")["input_ids"]
    seen = {}

    def on_done(packer, slot, run):
        with torch.no_grad():
            seen["logits"] = lm.model(input_ids=ids).logits.clone()
        save_peft_adapter(packer, slot, spec, tmp_path / "a")

    train_packed(
        lm.model, lm.tokenizer, spec, [((4, 0), 0, data.domain_samples("legal", 4))], 1, on_done
    )
    fresh = load_model("tiny", "cpu")
    pm = PeftModel.from_pretrained(fresh.model, str(tmp_path / "a"))
    with torch.no_grad():
        out = pm(input_ids=ids).logits
    assert torch.allclose(out, seen["logits"], rtol=1e-5, atol=1e-6)


def test_idle_slot_is_not_touched():
    """A slot with no row in a step keeps its weights and moments (no decay, no momentum)."""
    from core.models import target_modules
    from core.packed import PackedLoRA

    spec = preset("tiny-test", weight_decay=0.5, lora_dropout=0.0)
    lm = load_model("tiny", "cpu")
    p = PackedLoRA(lm.model, spec, 2, target_modules(lm.model, "all-linear"))
    with torch.no_grad():
        p.weights.normal_()
    row = lm.tokenizer("the court held that the clause binds")["input_ids"]
    p.step([row, row], lm.tokenizer.pad_token_id)
    w1, m1, t1 = p.weights[1].detach().clone(), p.exp_avg[1].clone(), p.step_count[1].clone()
    p.step([row, None], lm.tokenizer.pad_token_id)
    assert torch.equal(p.weights[1], w1) and torch.equal(p.exp_avg[1], m1) and p.step_count[1] == t1
    assert p.step_count[0] == 2
    p.remove()


def _train(runs, slots, sync_every, poison_at=None, spec=None):
    """Packed training; optionally set slot 1's adapter to NaN just before step `poison_at`."""
    spec = spec or preset("tiny-test", lora_dropout=0.0, learning_rate=1e-3, epochs=2)
    lm = load_model("tiny", "cpu")
    got, calls = {}, [0]

    def should_stop():
        calls[0] += 1
        if calls[0] == poison_at:
            pm = next(m for m in lm.model.modules() if type(m).__name__ == "PackedLoRALinear")
            with torch.no_grad():
                pm.A[1].fill_(float("nan"))
        return False

    def on_done(packer, slot, run):
        got[run.key] = (packer.slot_state(slot), list(run.losses), run.pos, run.diverged)

    train_packed(
        lm.model,
        lm.tokenizer,
        spec,
        runs,
        slots,
        on_done,
        should_stop=should_stop,
        sync_every=sync_every,
    )
    return got


def test_loss_read_back_interval_changes_nothing():
    """Reading losses back every step or every few steps gives bit-identical runs."""
    runs = [
        ((n, s), s, data.domain_samples("legal", n, seed=s)) for n, s in [(5, 0), (3, 1), (4, 2)]
    ]
    every = _train(runs, 2, sync_every=1)
    batched = _train(runs, 2, sync_every=4)
    assert set(every) == set(batched) == {r[0] for r in runs}
    for key in every:
        (w1, l1, p1, d1), (w2, l2, p2, d2) = every[key], batched[key]
        assert l1 == l2 and p1 == p2 == len(l1) and not d1 and not d2
        assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_run_diverging_between_read_backs_ends_at_its_bad_step():
    """Slot 1's loss turns NaN at step 3 while losses are read back every 4 steps: that run ends
    as diverged at step 3 (not 4), and the run beside it is not disturbed."""
    runs = [
        ((6, 0), 0, data.domain_samples("legal", 6, seed=0)),
        ((6, 1), 1, data.domain_samples("legal", 6, seed=1)),
    ]
    got = _train(runs, 2, sync_every=4, poison_at=3)
    w_bad, losses, pos, diverged = got[(6, 1)]
    assert diverged and pos == 3 and len(losses) == 3
    assert all(map(math.isfinite, losses[:2])) and not math.isfinite(losses[2])
    # the same pair, nothing poisoned (batch widths differ once slot 1 is gone: float noise only)
    clean = _train(runs, 2, sync_every=4)
    w, ls, p, d = got[(6, 0)]
    assert not d and p == 12 and ls == pytest.approx(clean[(6, 0)][1], rel=1e-6)
    for k in w:
        assert torch.allclose(w[k], clean[(6, 0)][0][k], rtol=1e-5, atol=1e-7), k


@pytest.mark.parametrize(
    "width, max_length, want",
    [(1, 512, 16), (16, 512, 16), (17, 512, 32), (23, 512, 32), (500, 512, 512), (23, 20, 20)],
)
def test_bucket_width(width, max_length, want):
    from core.packed import bucket_width

    assert bucket_width(width, max_length) == want
    assert len({bucket_width(w, 512) for w in range(1, 513)}) == 32


def test_step_precision_sets_and_restores_tf32():
    from core.train import step_precision

    before = torch.backends.cuda.matmul.allow_tf32
    with step_precision("tf32", torch.device("cuda")):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before
    with step_precision("tf32", torch.device("cpu")):  # nothing to switch on a CPU
        assert torch.backends.cuda.matmul.allow_tf32 == before


def test_bf16_packed_runs_stay_close_to_fp32_and_tf32_is_fp32_on_cpu():
    """bf16 autocast changes the arithmetic, not the run: same number of steps, losses within a
    few percent of fp32 (adapters stay fp32); on a CPU 'tf32' is exactly fp32."""
    runs = [((n, s), s, data.domain_samples("legal", n, seed=s)) for n, s in [(4, 0), (3, 1)]]
    base = dict(lora_dropout=0.0, learning_rate=1e-3, epochs=2)
    fp32 = _train(runs, 2, 4, spec=preset("tiny-test", **base))
    bf16 = _train(runs, 2, 4, spec=preset("tiny-test", precision="bf16", **base))
    tf32 = _train(runs, 2, 4, spec=preset("tiny-test", precision="tf32", **base))
    for key in fp32:
        assert tf32[key][1] == fp32[key][1]
        assert len(bf16[key][1]) == len(fp32[key][1])
        assert bf16[key][1] == pytest.approx(fp32[key][1], rel=0.05)
        assert bf16[key][1] != fp32[key][1]  # it did run in bf16
        assert all(v.dtype == torch.float32 for v in bf16[key][0].values())


def test_last_runs_move_to_a_smaller_packer_and_train_the_same(monkeypatch):
    """Once no run waits and at most half the slots train, the live runs move to a packer of
    their own size (idle slots would cost a padded row in every step); every run ends with the
    adapter and losses it gets without the move."""
    from core.packed import Scheduler

    runs = [
        ((n, s), s, data.domain_samples("legal", n, seed=s))
        for n, s in [(2, 0), (3, 1), (2, 2), (9, 0), (8, 1)]
    ]
    sizes = []
    real = Scheduler.shrink_packer

    def recorded(self):
        real(self)
        sizes.append(self.packer.slots)

    monkeypatch.setattr(Scheduler, "shrink_packer", recorded)
    moved = _train(runs, 5, sync_every=3)
    assert sizes == [2, 1]  # 5 slots -> the two long runs -> the last one
    monkeypatch.setattr(Scheduler, "shrink", False)
    kept = _train(runs, 5, sync_every=3)
    assert sizes == [2, 1] and set(moved) == set(kept) == {r[0] for r in runs}
    for key in kept:
        (w1, l1, p1, _), (w2, l2, p2, _) = moved[key], kept[key]
        assert p1 == p2 == len(l1) and l1 == pytest.approx(l2, rel=1e-6)
        assert all(torch.allclose(w1[k], w2[k], rtol=1e-5, atol=1e-7) for k in w1)


def _runs_ckpt():
    return [
        ((n, s), s, data.domain_samples("legal", n, seed=s))
        for n, s in [(3, 0), (7, 1), (5, 2), (2, 0)]
    ]


class _Crash(Exception):
    """The process dies: no code of the trainer runs after it (so no checkpoint at the stop)."""


def _train_ck(runs, ckpt=None, stop_at=None, seed_noise=0, crash=False):
    """Packed training on a freshly loaded model (a new process, as after a crash); stop (or
    with `crash`, die) at the `stop_at`-th stop check. Returns (status, {key: (adapter, losses)}
    of the runs that finished)."""
    from core.packed import train_packed

    spec = preset("tiny-test", lora_dropout=0.1, learning_rate=1e-3, epochs=2, warmup_ratio=0.2)
    lm = load_model("tiny", "cpu")
    torch.manual_seed(seed_noise)  # whatever the random state, a resume restores its own
    got, calls = {}, [0]

    def should_stop():
        calls[0] += 1
        if crash and calls[0] == stop_at:
            raise _Crash
        return stop_at is not None and calls[0] == stop_at

    def on_done(packer, slot, run):
        got[run.key] = (packer.slot_state(slot), list(run.losses))

    try:
        status = train_packed(
            lm.model,
            lm.tokenizer,
            spec,
            runs,
            2,
            on_done,
            should_stop=should_stop,
            sync_every=4,
            checkpoint=ckpt,
        )
    except _Crash:
        status = "crashed"
    return status, got


@pytest.fixture(scope="module")
def uninterrupted():
    """The checkpoint tests' reference: `_runs_ckpt()` trained without a stop (trained once)."""
    return _train_ck(_runs_ckpt())


def test_resume_from_checkpoint_is_bit_identical(tmp_path, uninterrupted):
    """Killed after the save at packed step 6, a new process resumes there: every run ends with
    exactly the adapter and losses of an uninterrupted run (dropout and warm-up included)."""
    from core.packed import Checkpoint

    runs = _runs_ckpt()
    status, whole = uninterrupted
    assert status == "done" and len(whole) == 4
    ck = Checkpoint(tmp_path / "ck", every_s=1e9, every_steps=3)
    status, first = _train_ck(runs, ck, stop_at=7)  # the 7th check comes right after step 6
    assert status == "cancelled" and ck.exists() and ck.load_meta()["step"] == 6
    assert set(first) == {(3, 0)}  # 6 steps: the first run finished (and would be stored)
    rest = [r for r in runs if r[0] not in first]
    status, second = _train_ck(rest, ck, seed_noise=123)
    assert status == "done" and set(first) | set(second) == set(whole)
    for key, (w, losses) in {**first, **second}.items():
        assert losses == whole[key][1], key
        assert all(torch.equal(w[k], whole[key][0][k]) for k in w), key


def test_a_stop_saves_the_step_it_reached(tmp_path, uninterrupted):
    """A cancel (or SIGTERM) between periodic saves checkpoints the step it stopped at, and the
    resume ends bit-identical to an uninterrupted run."""
    from core.packed import Checkpoint

    runs = _runs_ckpt()
    status, whole = uninterrupted
    assert status == "done" and len(whole) == 4
    ck = Checkpoint(tmp_path / "ck", every_s=1e9)  # no periodic save at all
    status, first = _train_ck(runs, ck, stop_at=6)
    assert status == "cancelled" and ck.load_meta()["step"] == 5
    rest = [r for r in runs if r[0] not in first]
    assert ck.load_meta({r[0] for r in rest}) is not None and ck.load_meta({(4, 5)}) is None
    status, second = _train_ck(rest, ck)
    assert status == "done" and set(first) | set(second) == set(whole)
    for key, (w, losses) in {**first, **second}.items():
        assert losses == whole[key][1], key
        assert all(torch.equal(w[k], whole[key][0][k]) for k in w), key


def test_checkpoint_drops_runs_stored_after_it_and_ignores_a_foreign_one(tmp_path):
    from core.packed import Checkpoint

    runs = _runs_ckpt()
    ck = Checkpoint(tmp_path / "ck", every_s=1e9, every_steps=4)
    status, first = _train_ck(runs, ck, stop_at=8, crash=True)  # saved at 4, died after 7
    assert status == "crashed" and ck.load_meta()["step"] == 4
    assert (3, 0) in first  # finished (and stored) after the save
    rest = [r for r in runs if r[0] not in first]
    assert ck.load_meta({r[0] for r in rest}) is not None and ck.load_meta({(4, 5)}) is None
    status, second = _train_ck(rest, ck)
    assert status == "done" and set(second) == {r[0] for r in rest}  # nothing trained twice
    # a checkpoint none of whose runs is still to do is not used (nor announced by the engine)
    status, again = _train_ck([((4, 5), 5, data.domain_samples("legal", 4, seed=5))], ck)
    assert status == "done" and len(again[(4, 5)][1]) == 8


def test_compiled_step_trains_like_the_eager_step():
    """torch.compile (one decoder layer's forward, shared) changes rounding, not the training:
    same losses and adapters; and the layers are plain again afterwards."""
    runs = [((n, s), s, data.domain_samples("legal", n, seed=s)) for n, s in [(3, 0), (5, 1)]]
    spec = preset("tiny-test", lora_dropout=0.0, learning_rate=1e-3, epochs=2)
    lm = load_model("tiny", "cpu")
    got = {}
    for compiled in (False, True):

        def on_done(packer, slot, run, c=compiled):
            got[c, run.key] = (packer.slot_state(slot), list(run.losses))

        train_packed(lm.model, lm.tokenizer, spec, runs, 2, on_done, compile_step=compiled)
    for key, _, _ in runs:
        (want, want_losses), (have, have_losses) = got[False, key], got[True, key]
        assert have_losses == pytest.approx(want_losses, rel=1e-5)
        for k in want:
            err = (have[k] - want[k]).norm() / want[k].norm()
            assert err <= 1e-4, (k, float(err))
    assert not any("forward" in vars(m) for m in lm.model.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_dropout_masks_change_between_replays_of_a_captured_step(compiled):
    """A replayed graph must draw new dropout masks (checked on an H100 on 2026-11-24)."""
    from core.models import target_modules
    from core.packed import PackedLoRA

    spec = preset("tiny-test", lora_dropout=0.5)
    lm = load_model("tiny", "cuda")
    for p in lm.model.parameters():
        p.requires_grad_(False)
    lm.model.train()
    pk = PackedLoRA(lm.model, spec, 2, target_modules(lm.model, spec.target_modules))
    with torch.no_grad():
        pk.weights.normal_(0, 0.05)
    pk.lr.zero_()  # nothing moves: only dropout can change the loss
    pk.enable_graphs()
    if compiled:
        pk.compile()
    rows = [lm.tokenizer(t)["input_ids"][:16] for t in data.domain_samples("legal", 2, seed=0)]
    w0 = pk.weights.clone()
    losses = [pk.step(rows, lm.tokenizer.pad_token_id) for _ in range(4)]
    assert torch.equal(w0, pk.weights)
    assert len({tuple(x.tolist()) for x in losses}) == 4
    pk.remove()
