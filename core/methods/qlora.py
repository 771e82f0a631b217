from __future__ import annotations

import torch
from torch import nn

from ..config import RunSpec
from ..models import LoadedModel, load_model
from ..quant import QuantSwap
from .lora import LoRA


class QLoRA(LoRA):
    """QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes, double quantization).

    'quantize-first' (QLoRA as published): the base is loaded quantized through transformers'
    `BitsAndBytesConfig`, prepared with peft's `prepare_model_for_kbit_training`, and LoRA trains
    on top. 'adapt-first' (seed 001's order check): LoRA trains on the full-precision base and the
    base layers are swapped for NF4 copies before measuring. Either way "before" is measured on
    the quantized base, so degradation isolates the adapter."""

    name = "qlora"
    packable = False  # its base is quantized (or becomes so before measuring): sequential loop

    def __init__(self) -> None:
        self.swap: QuantSwap | None = None
        self.order = "quantize-first"

    def load(self, spec: RunSpec, device: torch.device) -> LoadedModel:
        self.order = spec.quant_order
        if spec.quant_order == "adapt-first":
            lm = load_model(spec.model, device)
            names = [
                n
                for n, m in lm.model.named_modules()
                if isinstance(m, nn.Linear) and "lm_head" not in n
            ]
            self.swap = QuantSwap(lm.model, names, 4)
            self.swap.use(True)
            return lm
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32 if device.type == "cpu" else torch.bfloat16,
        )
        lm = load_model(spec.model, device, quantization=q)
        lm.model = prepare_model_for_kbit_training(lm.model, use_gradient_checkpointing=False)
        return lm

    def prepare(self, base: nn.Module, spec: RunSpec, seed: int) -> nn.Module:
        if self.swap is not None:
            self.swap.use(False, base)
        return super().prepare(base, spec, seed)

    def before_eval(self, model: nn.Module) -> None:
        if self.swap is not None:
            self.swap.use(True, model)

    def release(self, model: nn.Module) -> nn.Module:
        base = super().release(model)
        if self.swap is not None:
            self.swap.use(True, base)
        return base
