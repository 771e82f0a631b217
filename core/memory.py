"""Will a run fit in memory? A lower bound of what a run needs, from the model's shapes alone
(the meta-device skeleton: no weights read), compared with the memory free where it would train.

Only what certainly has to be held is counted, so a refusal is never a false alarm:

- the weights, 4 bytes per parameter (models load in fp32; bf16 is autocast), or the frozen
  quantized linear layers at their bits (qlora: NF4; adaptq: `frozen_bits`, on the share of blocks
  that stays frozen);
- full fine-tuning: a pristine copy to restore after each point (4 B), gradients (4 B) and
  AdamW's two moments (8 B) per parameter; adaptq: the same 16 B for its full-rank blocks;
- one training step's logits and their gradient: batch x length x vocabulary x 4 B, twice.

Activations, the allocator's slack and the runtime come on top, so a run refused here would have
failed; a run let through can still run out of memory, and says so when it does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from .config import RunSpec
from .errors import ConfigError

GB = 1024**3


@dataclass(frozen=True)
class Need:
    """Bytes a run needs at least, by part."""

    weights: int
    training_state: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.training_state + self.logits

    def describe(self) -> str:
        parts = [("weights", self.weights), ("training state", self.training_state)]
        parts.append(("one step's logits", self.logits))
        return ", ".join(f"{name} {b / GB:.1f} GB" for name, b in parts if b)


def _block_linear_params(model: nn.Module) -> int:
    """Parameters of the linear layers inside the decoder blocks (what qlora/adaptq quantize)."""
    return sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and ".layers." in f".{name}."
    )


def need(model: nn.Module, spec: RunSpec) -> Need:
    """The lower bound for `spec` on the skeleton `model` (parameters on the meta device)."""
    total = sum(p.numel() for p in model.parameters())
    linear = _block_linear_params(model)
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    logits = 2 * spec.batch_size * spec.max_length * vocab * 4
    if spec.method == "qlora":
        weights = 4 * (total - linear) + linear // 2
        return Need(int(weights), 0, logits)
    if spec.method == "adaptq":
        trained = spec.adaptq_fraction * linear
        frozen = linear - trained
        weights = 4 * (total - linear) + 4 * trained + frozen * spec.frozen_bits / 8
        return Need(int(weights), int(16 * trained), logits)
    if spec.method == "full":
        return Need(4 * total, 16 * total, logits)
    return Need(4 * total, 0, logits)  # lora: adapters are small beside the base


def free_bytes(device: str) -> int | None:
    """Memory a run on `device` ('cpu', 'cuda', 'mps', 'auto') can have: a CPU's MemAvailable, a
    GPU's whole memory (what other processes hold there is not subtracted, so the check stays
    free of false alarms); None when unknown (mps)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    if device == "cpu":
        return _cpu_available()
    return None


def _cpu_available() -> int | None:
    """Linux's MemAvailable (free memory plus what the kernel can reclaim), else the machine's
    physical memory (an upper bound, so the check stays free of false alarms)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check(model: nn.Module, spec: RunSpec, free: int | None = None) -> Need:
    """Raise a ConfigError naming the settings to change when the run cannot fit."""
    n = need(model, spec)
    free = free_bytes(spec.device) if free is None else free
    if free is not None and n.total > free:
        hint = (
            "choose LoRA or QLoRA instead of full fine-tuning"
            if spec.method == "full"
            else "lower Max length or Batch size, or choose a smaller model"
        )
        raise ConfigError(
            f"model: '{spec.model}' with method {spec.method} needs at least "
            f"{n.total / GB:.1f} GB ({n.describe()}) but {free / GB:.1f} GB are free on "
            f"{spec.device if spec.device != 'auto' else 'this machine'} — {hint}"
        )
    return n
