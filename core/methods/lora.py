from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import RunSpec
from ..errors import ConfigError
from ..models import min_width, target_modules
from .base import Method


def lora_config(model: nn.Module, spec: RunSpec):
    from peft import LoraConfig, TaskType

    targets = target_modules(model, spec.target_modules)
    width = min_width(model, targets)
    if width and spec.lora_rank > width:
        raise ConfigError(
            f"lora_rank: {spec.lora_rank} is larger than the narrowest targeted layer ({width})"
        )
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        bias="none",
        target_modules=targets,
    )


class LoRA(Method):
    """peft LoRA on a frozen full-precision base. A fresh adapter per point: the adapter is
    injected with the point's seed and removed again (`unload`) afterwards, so the base is
    loaded from disk once per run."""

    name = "lora"
    saves_adapters = True
    packable = True

    def prepare(self, base: nn.Module, spec: RunSpec, seed: int) -> nn.Module:
        from peft import get_peft_model

        cfg = lora_config(base, spec)
        torch.manual_seed(seed)
        return get_peft_model(base, cfg)

    def release(self, model: nn.Module) -> nn.Module:
        return model.unload()

    def weight_deltas(self, model: nn.Module):
        from ..spectral import lora_pairs

        return lora_pairs(model)

    def save(self, model: nn.Module, out: Path) -> Path:
        model.save_pretrained(out, safe_serialization=True)
        return out
