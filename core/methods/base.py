from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import RunSpec
from ..models import LoadedModel, load_model


class Method:
    """One way of fine-tuning. Subclasses override what differs; the defaults fit methods that
    train on a plain full-precision base."""

    name = "base"
    saves_adapters = False
    swap = None  # a QuantSwap when the method keeps some layers quantized
    # the packed trainer (core/packed/: many runs share each forward/backward) can train it:
    # LoRA on a frozen full-precision base
    packable = False

    def info(self) -> dict:
        """Run-level facts the method learned while loading (e.g. ADAPT-Q's profile)."""
        return {}

    def before_eval(self, model: nn.Module) -> None:
        """Bring a trained model into the configuration that is measured (default: as is)."""

    def weight_deltas(self, model: nn.Module):
        """(name, W_base, dW) per adapted matrix, for the spectral analysis (seed 002); dW dense
        or as low-rank factors (B, A)."""
        return iter(())

    def packs(self, spec: RunSpec, device: torch.device) -> bool:
        """Whether this sweep's points train together in the packed trainer instead of one after
        another. It wins where steps are launch-bound (GPU); on a CPU, compute-bound, it measured
        slower than the sequential loop (bench/results), so 'auto' keeps CPUs sequential. It
        trains at any batch size (each run's batch is its own rows of the packed step) but runs
        no in-training smoke tests."""
        if not self.packable or spec.smoke_every > 0:
            return False
        return spec.trainer == "packed" or (spec.trainer == "auto" and device.type == "cuda")

    def load(self, spec: RunSpec, device: torch.device) -> LoadedModel:
        return load_model(spec.model, device)

    def prepare(self, base: nn.Module, spec: RunSpec, seed: int) -> nn.Module:
        """Return a model whose trainable parameters start fresh for this point."""
        raise NotImplementedError

    def release(self, model: nn.Module) -> nn.Module:
        """Undo `prepare`: return the base model exactly as it was before."""
        raise NotImplementedError

    def save(self, model: nn.Module, out: Path) -> Path | None:
        """Save what the point trained (safetensors) so the Smoke test page can reload it."""
        return None

    @staticmethod
    def trainable(model: nn.Module) -> tuple[int, int]:
        from ..quant import logical_numel

        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(logical_numel(p) for p in model.parameters())
        return n_train, n_all
