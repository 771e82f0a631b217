"""Quantize chosen linear layers in place, reversibly.

`QuantSwap` keeps each chosen `nn.Linear` and a frozen low-precision copy of it (bitsandbytes
NF4 `Linear4bit`, LLM.int8 `Linear8bitLt`, or a 16-bit cast) and puts one or the other into the
model. ADAPT-Q keeps its frozen blocks quantized this way, and the 'adapt-first' order trains
against full precision and swaps the quantized copies in before measuring. Frozen weights never
change, so the copies are built once per run.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# bitsandbytes' 4-bit CPU kernels backpropagate correctly through the input (tests/test_methods
# compares them with the dequantized weight) but torch warns that no autograd kernel is
# registered; LLM.int8 warns on every call that it casts fp32 inputs to fp16. Both are noise here.
warnings.filterwarnings("ignore", message=r".*bitsandbytes::gemv_4bit.*autograd kernel")
warnings.filterwarnings("ignore", message=r"MatMul8bitLt: inputs will be cast")


class CastLinear(nn.Module):
    """A frozen linear layer stored in 16 bits; computes in that precision, returns the caller's."""

    def __init__(self, lin: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().to(dtype).clone(), requires_grad=False)
        self.bias = (
            nn.Parameter(lin.bias.detach().to(dtype).clone(), requires_grad=False)
            if lin.bias is not None
            else None
        )
        self.in_features, self.out_features = lin.in_features, lin.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return nn.functional.linear(x.to(w.dtype), w, self.bias).to(x.dtype)


def quantize_linear(lin: nn.Linear, bits: int) -> nn.Module:
    """A frozen copy of `lin` in `bits` precision on the same device."""
    device = lin.weight.device
    w = lin.weight.detach().clone()
    b = lin.bias.detach().clone() if lin.bias is not None else None
    if bits == 16:
        return CastLinear(lin, torch.float16 if device.type == "cuda" else torch.bfloat16)
    import bitsandbytes as bnb

    if bits == 4:
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        q = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=b is not None,
            compute_dtype=compute,
            quant_type="nf4",
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4")
    elif bits == 8:
        q = bnb.nn.Linear8bitLt(
            lin.in_features,
            lin.out_features,
            bias=b is not None,
            has_fp16_weights=False,
            threshold=6.0,
            device="meta",
        )
        q.weight = bnb.nn.Int8Params(w.cpu(), requires_grad=False, has_fp16_weights=False)
    else:
        raise ValueError(f"{bits}-bit layers are not offered (choose 4, 8 or 16)")
    if b is not None:
        q.bias = nn.Parameter(b.cpu(), requires_grad=False)
    return q.to(device)  # bitsandbytes quantizes on this move


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


class QuantSwap:
    """Full-precision and quantized versions of the linear layers named in `names`."""

    def __init__(self, model: nn.Module, names: list[str], bits: int):
        self.model, self.bits = model, bits
        self.full: dict[str, nn.Linear] = {}
        self.quant: dict[str, nn.Module] = {}
        for name in names:
            lin = model.get_submodule(name)
            if not isinstance(lin, nn.Linear):
                raise TypeError(f"{name} is not a linear layer")
            self.full[name] = lin
            self.quant[name] = quantize_linear(lin, bits)
        self.quantized = False

    def use(self, quantized: bool, model: nn.Module | None = None) -> None:
        """Put one version in place. `model` may be a wrapper (peft) around the original: a layer
        that was wrapped (has `base_layer`) gets its `base_layer` swapped instead."""
        root = model if model is not None else self.model
        inner = root.get_base_model() if hasattr(root, "get_base_model") else root
        src = self.quant if quantized else self.full
        for name, mod in src.items():
            parent, child = _parent(inner, name)
            cur = getattr(parent, child)
            if hasattr(cur, "base_layer"):
                cur.base_layer = mod
            else:
                setattr(parent, child, mod)
        self.quantized = quantized


def model_bytes(model: nn.Module) -> int:
    """Bytes the model's tensors take in memory, counting packed 4-bit weights at their packed
    size plus their quantization constants."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
        qs = getattr(t, "quant_state", None)
        if qs is not None:
            for a in ("absmax", "code"):
                v = getattr(qs, a, None)
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
        scb = getattr(t, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total


def logical_numel(p: torch.Tensor) -> int:
    """Parameters a tensor stands for (a packed 4-bit weight holds two per byte)."""
    qs = getattr(p, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        n = 1
        for d in qs.shape:
            n *= int(d)
        return n
    return p.numel()
