"""Spectral analysis of weight updates (seed 002), exact, with torch.linalg.

For every adapted weight matrix W (base) and W + dW (tuned):
- `fro_norm`: ||dW||_F;
- `eff_rank`: the entropy effective rank of dW, exp(H(p)) with p = sigma / sum(sigma)
  (Roy & Vetterli, 2007): 1 for a rank-one update, n for n equal singular values;
- `topk_cos`: the mean |cosine| between the i-th left singular vectors of W and of W + dW,
  i = 1..k (1 = the principal directions are kept; seed 002 reports LoRA keeps them better than
  full fine-tuning).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn

_LAYER = re.compile(r"\.(\d+)\.")


def effective_rank(s: torch.Tensor) -> float:
    s = s.double().clamp(min=0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def top_left_vectors(w: torch.Tensor, k: int) -> torch.Tensor:
    """The k leading left singular vectors of w (fp64), from the eigen-decomposition of the
    smaller Gram matrix: exact up to floating point, and several times cheaper than a full SVD."""
    w = w.double()
    k = min(k, *w.shape)
    if w.shape[0] <= w.shape[1]:
        _, vecs = torch.linalg.eigh(w @ w.T)
        return vecs[:, -k:].flip(1)
    vals, vecs = torch.linalg.eigh(w.T @ w)
    v = vecs[:, -k:].flip(1)
    sig = vals[-k:].flip(0).clamp(min=1e-300).sqrt()
    return (w @ v) / sig


def delta_singular_values(dw) -> torch.Tensor:
    """Singular values of dW, given dense or as low-rank factors (B, A) with dW = B @ A; the
    factored form uses two thin QRs and an r x r SVD (exact, cheap)."""
    if isinstance(dw, tuple):
        b, a = (t.double() for t in dw)
        _, rb = torch.linalg.qr(b)
        _, ra = torch.linalg.qr(a.T)
        return torch.linalg.svdvals(rb @ ra.T)
    return torch.linalg.svdvals(dw.double())


def topk_cosine(u_base: torch.Tensor, w_tuned: torch.Tensor, k: int) -> float:
    u_t = top_left_vectors(w_tuned, k)
    k = min(k, u_base.shape[1], u_t.shape[1])
    return float((u_base[:, :k] * u_t[:, :k]).sum(0).abs().mean())


def layer_of(name: str) -> int:
    m = _LAYER.search(name + ".")
    return int(m.group(1)) if m else -1


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def analyse(
    pairs: Iterable[tuple[str, torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]],
    k: int,
    base_cache: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """One row per (name, W_base, dW); dW dense or as factors (B, A). `base_cache` keeps each base
    matrix's top-k singular vectors between points of a run (the base never changes)."""
    cache = base_cache if base_cache is not None else {}
    rows = []
    with torch.no_grad():
        for name, w, dw in pairs:
            w = w.detach().double()
            if name not in cache:
                cache[name] = top_left_vectors(w, k)
            s = delta_singular_values(dw)
            dense = dw[0].double() @ dw[1].double() if isinstance(dw, tuple) else dw.double()
            rows.append(
                dict(
                    layer=layer_of(name),
                    module=module_of(name),
                    name=name,
                    fro_norm=float(torch.linalg.vector_norm(s)),
                    eff_rank=effective_rank(s),
                    topk_cos=topk_cosine(cache[name], w + dense, k),
                    k=min(k, *w.shape),
                )
            )
    return rows


def dense_weight(mod: nn.Module) -> torch.Tensor:
    """The weight of a linear layer as a dense matrix (dequantizing bitsandbytes layers)."""
    w = mod.weight
    qs = getattr(w, "quant_state", None)
    if qs is not None:
        import bitsandbytes.functional as bf

        return bf.dequantize_4bit(w.data, qs).float()
    scb = getattr(w, "SCB", None)
    if scb is not None and w.dtype == torch.int8:
        return w.data.float() * scb.float()[:, None] / 127.0
    return w.detach().float()


def lora_pairs(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, W_base, (scaling x B, A)) for every peft LoRA layer of `model`."""
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            a = mod.lora_A["default"].weight.detach().float()
            b = mod.lora_B["default"].weight.detach().float()
            short = name.removeprefix("base_model.model.")
            yield short, dense_weight(mod.base_layer), (mod.scaling["default"] * b, a)


def packed_pairs(packer, slot: int) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """The same for one slot of the packed trainer."""
    for name, pm in packer.modules.items():
        a, b = pm.A[slot].detach().float(), pm.B[slot].detach().float()
        yield name, packer._orig[name].weight.detach().float(), (packer.scaling * b, a)


def dense_pairs(
    model: nn.Module, snapshot: dict[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, W_before, W_now - W_before) for every 2-D weight in `snapshot` (full fine-tuning,
    ADAPT-Q's selected blocks)."""
    params = dict(model.named_parameters())
    for key, w0 in snapshot.items():
        if w0.dim() != 2 or not key.endswith(".weight") or key not in params:
            continue
        name = key.removesuffix(".weight")
        if "embed" in name or "lm_head" in name or "wte" in name or "wpe" in name:
            continue
        yield name, w0.float(), params[key].detach().float() - w0.float()
