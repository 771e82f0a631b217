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
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        return n_train, n_all
