from __future__ import annotations

import torch

from ..config import RunSpec
from ..models import LoadedModel, load_model
from .lora import LoRA


class QLoRA(LoRA):
    """QLoRA: the base is loaded 4-bit NF4 through bitsandbytes (double quantization), prepared
    with peft's `prepare_model_for_kbit_training`, and LoRA trains on top in full precision.
    "Before" numbers are measured on the quantized base, so degradation isolates the adapter."""

    name = "qlora"

    def load(self, spec: RunSpec, device: torch.device) -> LoadedModel:
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
