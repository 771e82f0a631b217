import math

import pytest
import torch

from core import data
from core.config import preset
from core.methods import get_method
from core.models import load_model, pick_device
from core.train import train_point


def _train(method_name, **over):
    spec = preset("tiny-test", method=method_name, **over)
    m = get_method(method_name)
    lm = m.load(spec, pick_device("cpu"))
    base = lm.model
    before = {k: v.detach().clone().float() for k, v in base.state_dict().items()}
    model = m.prepare(base, spec, 0)
    n_train, n_all = m.trainable(model)
    tr = train_point(model, lm.tokenizer, data.domain_samples("legal", 6), spec, 0)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    restored = m.release(model)
    return before, trained, restored, n_train, n_all, tr


def test_lora_leaves_base_weights_untouched():
    before, trained, restored, n_train, n_all, tr = _train("lora")
    assert tr.status == "done" and 0 < n_train < n_all
    lora = [k for k in trained if "lora_" in k]
    assert lora
    for k, v in restored.state_dict().items():
        assert torch.equal(v.float(), before[k]), k
    assert not any("lora" in n for n, _ in restored.named_modules())


def test_full_changes_every_weight_and_restores():
    before, trained, restored, n_train, n_all, tr = _train("full")
    assert n_train == n_all
    changed = [k for k, v in trained.items() if not torch.equal(v.float(), before[k])]
    assert len(changed) == len(before)
    for k, v in restored.state_dict().items():
        assert torch.equal(v.float(), before[k])


def test_qlora_base_is_4bit_and_frozen():
    import bitsandbytes as bnb

    spec = preset("tiny-test", method="qlora")
    m = get_method("qlora")
    lm = m.load(spec, pick_device("cpu"))
    model = m.prepare(lm.model, spec, 0)
    q = [mod for mod in model.modules() if isinstance(mod, bnb.nn.Linear4bit)]
    assert q, "no 4-bit layers"
    w0 = [mod.weight.detach().clone() for mod in q]
    tr = train_point(model, lm.tokenizer, data.domain_samples("legal", 4), spec, 0)
    assert tr.status == "done"
    for mod, w in zip(q, w0):
        assert not mod.weight.requires_grad and torch.equal(mod.weight, w)


def test_rank_larger_than_layer_is_refused():
    from core.errors import ConfigError

    spec = preset("tiny-test", lora_rank=4096)
    lm = load_model("tiny", "cpu")
    with pytest.raises(ConfigError, match="narrowest"):
        get_method("lora").prepare(lm.model, spec, 0)


def test_unknown_target_module_is_refused():
    from core.errors import ConfigError

    lm = load_model("tiny", "cpu")
    with pytest.raises(ConfigError, match="not found in this model"):
        get_method("lora").prepare(lm.model, preset("tiny-test", target_modules="c_attn"), 0)


def test_gpt2_targets_resolved():
    from transformers import GPT2Config, GPT2LMHeadModel

    from core.models import target_modules

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert set(target_modules(m, "all-linear")) == {"c_attn", "c_proj", "c_fc"}
    assert set(target_modules(m, "attention")) == {"c_attn", "attn.c_proj"}


# -- every method through the engine -----------------------------------------------------------
@pytest.mark.parametrize(
    "method, over",
    [
        ("lora", {}),
        ("qlora", {}),
        ("qlora", {"quant_order": "adapt-first"}),
        ("full", {}),
        ("adaptq", {}),
        ("adaptq", {"quant_order": "adapt-first", "frozen_bits": 8}),
        ("adaptq", {"adaptq_selection": "random", "frozen_bits": 16, "adaptq_fraction": 1.0}),
    ],
)
def test_every_method_trains_evaluates_and_measures(db, method, over):
    from core import engine
    from core.store import Store

    spec = preset("tiny-test", method=method, scales=(4, 8), **over)
    store = Store(db)
    store.create_run("r", spec)
    assert engine.run_sweep(spec, "r", store) == "done"
    df = store.points_df(["r"])
    assert list(df.status) == ["done", "done"]
    row = df.iloc[0]
    assert row.general_ppl_after > 0 and row.model_mem_mb > 0 and row.gen_tokens_per_s > 0
    assert 0 < row.trainable_params <= row.total_params and row.peak_mem_mb > 0
    # the other forgetting measures, for every method: finite, KL to the base positive
    assert row.kl_to_base > 0 and row.general_ppl_stmt_after > 0
    assert math.isfinite(row.degradation_stmt_pct) and math.isfinite(row.general_ce_delta)
    spec_rows = store.spectral_df(["r"])
    assert len(spec_rows) > 0 and (spec_rows.fro_norm > 0).all()
    assert spec_rows.topk_cos.between(0, 1 + 1e-9).all()
    if method in ("lora", "qlora"):
        assert row.disk_mb > 0  # the adapter was saved
    if method == "adaptq" or over.get("quant_order") == "adapt-first":
        info = store.run_info("r")  # the cost of quantizing alone is on record
        assert info["general_ppl_full_precision"] > 0
    if method == "adaptq":
        info = store.run_info("r")
        assert len(info["profile"]) == info["blocks"] == 2
        assert len(info["selected"]) == info["k"] == max(1, int(spec.adaptq_fraction * 2))


# -- ADAPT-Q -------------------------------------------------------------------------------------
class _Scale(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, h):
        return (h * self.c,)


class _Chain(torch.nn.Module):
    """A model whose block i multiplies its input by c_i (no residual): the mean |output| of
    block i is known in closed form, so the right selection is known."""

    def __init__(self, cs):
        super().__init__()
        self.emb = torch.nn.Embedding(1000, 4)
        torch.nn.init.constant_(self.emb.weight, 1.0)
        self.layers = torch.nn.ModuleList(_Scale(c) for c in cs)

    def forward(self, input_ids, attention_mask=None, **_):
        h = self.emb(input_ids)
        for b in self.layers:
            h = b(h)[0]
        return h


def test_activation_profile_and_selection_on_a_model_with_a_known_answer():
    from core.methods.adaptq import activation_profile, select_blocks

    cs = [1.0, 4.0, 0.25, 3.0, 0.5]  # cumulative |output|: 1, 4, 1, 3, 1.5
    tok = load_model("tiny", "cpu").tokenizer
    prof = activation_profile(_Chain(cs), tok, data.domain_samples("legal", 5), 16, 2)
    assert prof == pytest.approx([1.0, 4.0, 1.0, 3.0, 1.5])
    assert select_blocks(prof, 0.4, "activation", 0) == [1, 3]  # K = floor(0.4 x 5) = 2
    assert select_blocks(prof, 0.4, "first-k", 0) == [0, 1]
    assert select_blocks(prof, 0.4, "last-k", 0) == [3, 4]
    r = select_blocks(prof, 0.4, "random", 7)
    assert len(r) == 2 and r == select_blocks(prof, 0.4, "random", 7)
    assert select_blocks(prof, 0.1, "activation", 0) == [1]  # at least one block


def test_adaptq_frozen_blocks_are_4bit_and_stay_frozen():
    import bitsandbytes as bnb

    spec = preset("tiny-test", method="adaptq", adaptq_fraction=0.5)
    m = get_method("adaptq")
    lm = m.load(spec, pick_device("cpu"))
    model = m.prepare(lm.model, spec, 0)
    sel = m.selected
    assert len(sel) == 1
    frozen = 1 - sel[0]
    q = [x for x in model.model.layers[frozen].modules() if isinstance(x, bnb.nn.Linear4bit)]
    assert len(q) == 7  # q, k, v, o, gate, up, down
    assert not any(isinstance(x, bnb.nn.Linear4bit) for x in model.model.layers[sel[0]].modules())
    w0 = [x.weight.detach().clone() for x in q]
    sel0 = {n: p.detach().clone() for n, p in model.model.layers[sel[0]].named_parameters()}
    tr = train_point(model, lm.tokenizer, data.domain_samples("legal", 4), spec, 0)
    assert tr.status == "done"
    for x, w in zip(q, w0):
        assert not x.weight.requires_grad and x.weight.grad is None and torch.equal(x.weight, w)
    changed = [
        n
        for n, p in model.model.layers[sel[0]].named_parameters()
        if not torch.equal(p.detach(), sel0[n])
    ]
    assert len(changed) == len(sel0)  # every weight of the selected block trained
    n_train, n_all = m.trainable(model)
    assert n_train == sum(v.numel() for v in sel0.values()) and n_all > n_train
    m.release(model)
    for n, p in model.model.layers[sel[0]].named_parameters():
        assert torch.equal(p.detach(), sel0[n]) and not p.requires_grad


def test_4bit_layers_backpropagate_like_their_dequantized_weight():
    import bitsandbytes.functional as bf

    from core.quant import quantize_linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    q = quantize_linear(lin, 4)
    w = bf.dequantize_4bit(q.weight.data, q.weight.quant_state).float()
    x = torch.randn(1, 5, 64, requires_grad=True)
    q(x).pow(2).sum().backward()
    g = x.grad.clone()
    x.grad = None
    torch.nn.functional.linear(x, w, lin.bias).pow(2).sum().backward()
    assert torch.allclose(g, x.grad, atol=1e-5)


def test_two_bit_is_refused_with_a_reason():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="no 2-bit"):
        preset("tiny-test", method="adaptq", frozen_bits=2)


# -- replay, warm-up, in-training smoke test ---------------------------------------------------
def test_replay_mixes_general_text_that_is_never_a_probe():
    base = data.domain_samples("legal", 20, seed=3)
    mixed = data.training_samples("legal", 20, seed=3, replay=0.25)
    assert mixed[:20] == base and len(mixed) == 25
    pool = set(data.replay_pool())
    assert set(mixed[20:]) <= pool
    for probe in data.list_probes():
        assert not pool & set(data.load_probe(probe))
    assert not pool & set(data.smoke_prompts())


def test_warmup_schedule():
    from core.train import lr_factor

    assert [lr_factor(s, 20, 0.1) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(0, 10, 0.0) == 1.0
    assert lr_factor(2, 100, 0.1) == pytest.approx(0.3)


@pytest.mark.parametrize("stop", [True, False])
def test_in_training_smoke_test_records_and_stops(db, stop):
    """The random tiny model answers degenerately, so the first check fails."""
    from core import engine
    from core.store import Store

    spec = preset("tiny-test", scales=(8,), smoke_every=3, smoke_stop=stop)
    store = Store(db)
    store.create_run("r", spec)
    engine.run_sweep(spec, "r", store)
    p = store.points_df(["r"]).iloc[0]
    stages = set(store.generations_df("r").stage)
    if stop:
        assert p.status == "stopped" and p.stop_step == 3 and "silent failure at step 3" in p.error
        assert "step:3" in stages and "step:6" not in stages
        assert p.general_ppl_after > 0  # the stopped model is still measured
    else:
        assert p.status == "done" and pd_isna(p.stop_step) and p.steps == 8
        assert {"step:3", "step:6", "step:8"} <= stages  # every 3 steps and at the epoch's end


def pd_isna(x):
    import pandas as pd

    return bool(pd.isna(x))


def test_the_method_decides_whether_a_sweep_is_packed():
    """LoRA (full-precision base) packs on CUDA under 'auto' or whenever asked; QLoRA, full
    fine-tuning and ADAPT-Q never do, and in-training smoke tests keep LoRA sequential."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    lora = get_method("lora")
    assert lora.packs(preset("tiny-test", trainer="auto"), cuda)
    assert not lora.packs(preset("tiny-test", trainer="auto"), cpu)
    assert lora.packs(preset("tiny-test", trainer="packed"), cpu)
    assert not lora.packs(preset("tiny-test", trainer="sequential"), cuda)
    assert not lora.packs(preset("tiny-test", trainer="packed", smoke_every=2), cuda)
    for name in ("qlora", "full", "adaptq"):
        spec = preset("tiny-test", method=name, trainer="packed")
        assert not get_method(name).packs(spec, cuda), name
