"""Spectral analysis of weight updates (seed 002), exact, with torch.linalg.

For every adapted weight matrix W (base) and W + dW (tuned):
- `fro_norm`: ||dW||_F;
- `eff_rank`: the entropy effective rank of dW, exp(H(p)) with p = sigma / sum(sigma)
  (Roy & Vetterli, 2007): 1 for a rank-one update, n for n equal singular values;
- `topk_cos`: the mean |cosine| between the i-th left singular vectors of W and of W + dW,
  i = 1..k (1 = the principal directions are kept; seed 002 reports LoRA keeps them better than
  full fine-tuning);
- `intruder_dims`: how many of the k leading left singular vectors of W + dW have a maximum
  |cosine| below epsilon with every left singular vector of W (Shuttleworth et al. 2024, "LoRA vs
  full fine-tuning: an illusion of equivalence": LoRA creates such "intruder dimensions", full
  fine-tuning hardly does). The base's vectors are computed once per run (`analyse`'s cache) and
  the tuned matrix's leading ones are those `topk_cos` already needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn

_LAYER = re.compile(r"\.(\d+)\.")
# The base's singular vectors kept between points of a run: every one of them when intruder
# dimensions are counted (float32; about 0.35 GB for SmolLM2-135M's 210 matrices), else the
# leading k. Beyond this many bytes, further matrices are decomposed again at every point.
BASE_CACHE_BYTES = 1 << 30


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


def topk_cosine(u_base: torch.Tensor, w_tuned: torch.Tensor | None, k: int, u_t=None) -> float:
    """Mean |cosine| between the i-th leading left singular vectors of the base (`u_base`) and of
    the tuned matrix (`w_tuned`, or its vectors `u_t` when already computed), i = 1..k."""
    u_t = top_left_vectors(w_tuned, k) if u_t is None else u_t
    k = min(k, u_base.shape[1], u_t.shape[1])
    return float((u_base[:, :k].double() * u_t[:, :k].double()).sum(0).abs().mean())


def intruder_count(u_base: torch.Tensor, u_tuned: torch.Tensor, k: int, eps: float) -> int:
    """Intruder dimensions (Shuttleworth et al. 2024): how many of the k leading tuned singular
    vectors (columns of `u_tuned`, leading first) have max_i |cos(u_tuned_j, u_base_i)| < eps over
    every base singular vector u_base_i (the columns of `u_base`, all of them)."""
    k = min(k, u_tuned.shape[1])
    if k <= 0:
        return 0
    cos = (u_base.double().T @ u_tuned[:, :k].double()).abs()  # base vectors x tuned vectors
    return int((cos.max(0).values < eps).sum())


def _nbytes(cache: dict) -> int:
    return sum(t.numel() * t.element_size() for t in cache.values())


def _base_vectors(cache: dict, name: str, w: torch.Tensor, k: int, every: bool) -> torch.Tensor:
    """The base matrix's leading k left singular vectors (fp64), or with `every` all min(m, n)
    of them (float32), from the cache when there; cached while it holds under BASE_CACHE_BYTES."""
    u = cache.get(name)
    if u is not None and (not every or u.shape[1] == min(w.shape)):
        return u
    u = top_left_vectors(w, min(w.shape) if every else k)
    u = u.float() if every else u
    if _nbytes(cache) + u.numel() * u.element_size() <= BASE_CACHE_BYTES:
        cache[name] = u
    return u


def layer_of(name: str) -> int:
    m = _LAYER.search(name + ".")
    return int(m.group(1)) if m else -1


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def analyse(
    pairs: Iterable[tuple[str, torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]],
    k: int,
    base_cache: dict[str, torch.Tensor] | None = None,
    intruder_k: int = 0,
    intruder_eps: float = 0.5,
) -> list[dict]:
    """One row per (name, W_base, dW); dW dense or as factors (B, A). `base_cache` keeps each base
    matrix's singular vectors between points of a run (the base never changes). `intruder_k` > 0
    also counts intruder dimensions among the leading `intruder_k` tuned vectors (`intruder_count`
    with `intruder_eps`); 0 leaves `intruder_dims` None. One eigen-decomposition of the tuned
    matrix serves both the top-k cosine and the intruder count."""
    cache = base_cache if base_cache is not None else {}
    rows = []
    with torch.no_grad():
        for name, w, dw in pairs:
            w = w.detach().double()
            u_base = _base_vectors(cache, name, w, k, every=intruder_k > 0)
            s = delta_singular_values(dw)
            dense = dw[0].double() @ dw[1].double() if isinstance(dw, tuple) else dw.double()
            u_t = top_left_vectors(w + dense, max(k, intruder_k))
            intruders = (
                intruder_count(u_base, u_t, intruder_k, intruder_eps) if intruder_k > 0 else None
            )
            rows.append(
                dict(
                    layer=layer_of(name),
                    module=module_of(name),
                    name=name,
                    fro_norm=float(torch.linalg.vector_norm(s)),
                    eff_rank=effective_rank(s),
                    topk_cos=topk_cosine(u_base, None, k, u_t=u_t),
                    k=min(k, *w.shape),
                    intruder_dims=intruders,
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
