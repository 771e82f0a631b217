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
