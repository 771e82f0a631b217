"""ADAPT-Q (seed 001): train a few transformer blocks full-rank, keep the others frozen and
quantized.

1. Profile: forward hooks on every block over `adaptq_profile_samples` domain sentences; a
   block's score is the mean |hidden activation| of its output over real (non-padding) tokens.
2. Select K = floor(adaptq_fraction x L) blocks (at least one): by activation (the method), or
   the ablations random / first-k / last-k.
3. Train every parameter of the selected blocks in full precision.
4. Keep the linear layers of the other blocks frozen in `frozen_bits` (NF4, int8 or 16-bit).
   'quantize-first' trains against the quantized frozen layers; 'adapt-first' trains against
   full precision and quantizes before measuring (seed 001's order check).

"Before" numbers are measured on the mixed-precision model as evaluated (selected blocks full
precision, the rest quantized), so degradation isolates training; the cost of quantization
alone is measured once per run and stored with the profile.
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn

from .. import data
from ..config import RunSpec
from ..errors import ConfigError
from ..models import LoadedModel, load_model
from ..quant import QuantSwap, model_bytes
from .base import Method


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's stack of transformer blocks: the longest ModuleList of identical blocks."""
    best: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > len(best):
            kinds = {type(m) for m in mod}
            if len(kinds) == 1:
                best = [(f"{name}.{i}", m) for i, m in enumerate(mod)]
    if not best:
        raise ConfigError("adaptq: could not find the model's transformer blocks")
    return best


@torch.no_grad()
def activation_profile(
    model: nn.Module, tokenizer, texts: list[str], max_length: int, batch_size: int = 16
) -> list[float]:
    """Mean |output activation| of every block over the real tokens of `texts`."""
    blocks = transformer_blocks(model)
    sums = [0.0] * len(blocks)
    count = 0
    mask_now: list[torch.Tensor] = []

    def hook(i):
        def fn(_mod, _inp, out):
            h = out[0] if isinstance(out, (tuple, list)) else out
            m = mask_now[0].unsqueeze(-1).to(h.dtype)
            sums[i] += float((h.abs().float() * m).sum() / h.shape[-1])

        return fn

    handles = [b.register_forward_hook(hook(i)) for i, (_, b) in enumerate(blocks)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            mask_now[:] = [enc["attention_mask"]]
            model(**enc)
            count += int(enc["attention_mask"].sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [s / max(count, 1) for s in sums]


def select_blocks(profile: list[float], fraction: float, how: str, seed: int) -> list[int]:
    n = len(profile)
    k = max(1, math.floor(fraction * n + 1e-9))
    if how == "activation":
        order = sorted(range(n), key=lambda i: (-profile[i], i))
        return sorted(order[:k])
    if how == "random":
        return sorted(random.Random(seed).sample(range(n), k))
    if how == "first-k":
        return list(range(k))
    if how == "last-k":
        return list(range(n - k, n))
    raise ConfigError(f"adaptq_selection: unknown value '{how}'")


class AdaptQ(Method):
    name = "adaptq"

    def __init__(self) -> None:
        self.swap: QuantSwap | None = None
        self.selected: list[int] = []
        self.train_prefixes: list[str] = []
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._info: dict = {}

    def load(self, spec: RunSpec, device: torch.device) -> LoadedModel:
        lm = load_model(spec.model, device)
        model, tok = lm.model, lm.tokenizer
        texts = data.domain_samples(
            spec.domain, spec.adaptq_profile_samples, spec.construction, spec.seeds[0]
        )
        profile = activation_profile(model, tok, texts, spec.max_length, spec.eval_batch_size)
        blocks = transformer_blocks(model)
        self.selected = select_blocks(
            profile, spec.adaptq_fraction, spec.adaptq_selection, spec.seeds[0]
        )
        self.train_prefixes = [blocks[i][0] + "." for i in self.selected]
        frozen = [
            f"{bname}.{n}"
            for i, (bname, b) in enumerate(blocks)
            if i not in self.selected
            for n, m in b.named_modules()
            if isinstance(m, nn.Linear)
        ]
        full_bytes = model_bytes(model)
        self.swap = QuantSwap(model, frozen, spec.frozen_bits)
        self.swap.use(True)
        self._info = dict(
            blocks=len(blocks),
            k=len(self.selected),
            selection=spec.adaptq_selection,
            profile=profile,
            selected=self.selected,
            frozen_bits=spec.frozen_bits,
            quant_order=spec.quant_order,
            model_mb_full_precision=full_bytes / 2**20,
            model_mb_mixed=model_bytes(model) / 2**20,
        )
        return lm

    def info(self) -> dict:
        return dict(self._info)

    def _selected_params(self, model: nn.Module):
        for n, p in model.named_parameters():
            if any(n.startswith(pref) for pref in self.train_prefixes):
                yield n, p

    def prepare(self, base: nn.Module, spec: RunSpec, seed: int) -> nn.Module:
        assert self.swap is not None
        if self._snapshot is None:
            self._snapshot = {n: p.detach().clone() for n, p in self._selected_params(base)}
        if spec.quant_order == "adapt-first":
            self.swap.use(False)
        torch.manual_seed(seed)
        for p in base.parameters():
            p.requires_grad_(False)
        for _, p in self._selected_params(base):
            p.requires_grad_(True)
        return base

    def before_eval(self, model: nn.Module) -> None:
        assert self.swap is not None
        self.swap.use(True)

    def release(self, model: nn.Module) -> nn.Module:
        assert self.swap is not None and self._snapshot is not None
        self.swap.use(True)
        with torch.no_grad():
            for n, p in self._selected_params(model):
                p.copy_(self._snapshot[n])
                p.requires_grad_(False)
        return model

    def weight_deltas(self, model: nn.Module):
        from ..spectral import dense_pairs

        return dense_pairs(model, self._snapshot or {})
