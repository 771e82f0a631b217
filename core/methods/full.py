from __future__ import annotations

import torch
from torch import nn

from ..config import RunSpec
from .base import Method


class FullFineTune(Method):
    """Every weight trains. The pristine weights are kept in memory and copied back after each
    point. Points are not saved (a full copy of the model per point); the Smoke test page says so."""

    name = "full"

    def __init__(self) -> None:
        self._snapshot: dict[str, torch.Tensor] | None = None

    def prepare(self, base: nn.Module, spec: RunSpec, seed: int) -> nn.Module:
        if self._snapshot is None:
            self._snapshot = {k: v.detach().clone() for k, v in base.state_dict().items()}
        torch.manual_seed(seed)
        for p in base.parameters():
            p.requires_grad_(True)
        return base

    def release(self, model: nn.Module) -> nn.Module:
        assert self._snapshot is not None
        with torch.no_grad():
            model.load_state_dict(self._snapshot)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def weight_deltas(self, model: nn.Module):
        from ..spectral import dense_pairs

        return dense_pairs(model, self._snapshot or {})
