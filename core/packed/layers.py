"""The modules the packed trainer injects in place of the targeted linear layers: a frozen base
layer plus one LoRA adapter per slot (`PackedLoRALinear`), and the groups of sibling projections
that read one input and share batched products (`_Group`). `packer.PackedLoRA` builds them; their
A and B are views into its flat adapter buffer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _set_module(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, mod)


class _Ctx:
    """Which slot the injected modules use: None = one row per slot (training), or a slot index
    that every row reads (evaluation, generation)."""

    slot: int | None = None
    dropout_on: bool = False


# Sibling projections that read the same input (Llama-style names): their LoRA products can be
# batched (`PackedLoRA.grouped`).
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _Group:
    """Modules that read one input (q/k/v; gate/up). The first one called in a training step
    computes every member's update in batched products; the others pick theirs up. A (and B, when
    every member has the same output width) are one leaf [slots, k, ...] each, contiguous in the
    flat buffer, so the batched product needs no gather and hands back one gradient."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor | None):
        self.A, self.B = A, B  # [slots, k, r, d_in], [slots, k, d_out, r] or None
        self.members: list[PackedLoRALinear] = []
        self.src: torch.Tensor | None = None  # the input the pending updates were computed from
        self.pending: dict[int, torch.Tensor] = {}  # member index -> its update


class PackedLoRALinear(nn.Module):
    """A frozen linear layer plus one LoRA adapter per slot. A and B view into the packer's flat
    buffer (leaf tensors, or slices of a group's leaf); after backward the leaves' gradients are
    concatenated into its flat gradient buffer in one kernel.

    The products are written as A @ h^T and B @ (A h^T) (`transposed`): autograd then hands each
    leaf a contiguous gradient. Written as h @ A^T, the gradient comes back transposed and
    AccumulateGrad copies it to the leaf's layout: one copy kernel per leaf, 420 per step for
    SmolLM2."""

    def __init__(
        self,
        base: nn.Linear,
        ctx: _Ctx,
        A: torch.Tensor,
        B: torch.Tensor,
        scaling: float,
        p: float,
        transposed: bool = True,
        group: _Group | None = None,
        index: int = 0,
    ):
        super().__init__()
        self.base, self.ctx, self.scaling, self.p = base, ctx, scaling, p
        self._A, self._B = A, B  # [slots, r, d_in], [slots, d_out, r] (None: in the group's leaf)
        self.group, self.index, self.transposed = group, index, transposed
        self.r, self.d_in, self.d_out = self.A.shape[1], base.in_features, base.out_features
        # `PackedLoRA.cast_base`: the frozen base weight (and bias) already in the step's
        # autocast dtype, used by training steps run under that autocast
        self.base_lp: torch.Tensor | None = None
        self.bias_lp: torch.Tensor | None = None

    @property
    def A(self) -> torch.Tensor:
        return self._A if self._A is not None else self.group.A[:, self.index]

    @property
    def B(self) -> torch.Tensor:
        return self._B if self._B is not None else self.group.B[:, self.index]

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, training=True) if (self.ctx.dropout_on and self.p > 0) else x

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        w = self.base_lp
        if (
            w is not None
            and self.ctx.slot is None
            and torch.is_autocast_enabled(x.device.type)
            and torch.get_autocast_dtype(x.device.type) == w.dtype
        ):  # what autocast computes, without casting the fp32 weight again in every step
            return F.linear(x.to(w.dtype), w, self.bias_lp)
        return self.base(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._base(x)
        s = self.ctx.slot
        shape = x.shape
        if s is None and self.group is not None:
            upd = self._grouped_update(x)
        else:
            A, B = (self.A, self.B) if s is None else (self.A[s : s + 1], self.B[s : s + 1])
            # Training: the batch holds each slot's rows one after the other (`rows_per_slot`
            # each), so grouping it by slot needs only a reshape. Evaluation: every row reads
            # one slot.
            h3 = self._dropout(x).reshape(A.shape[0], -1, shape[-1]).to(A.dtype)
            if self.transposed:
                upd = torch.bmm(B, torch.bmm(A, h3.transpose(1, 2))).transpose(1, 2)
            else:
                upd = torch.bmm(torch.bmm(h3, A.transpose(1, 2)), B.transpose(1, 2))
        return y + (self.scaling * upd).reshape(*shape[:-1], self.d_out).to(y.dtype)

    def _grouped_update(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        if self.index > 0 and g.src is x and self.index in g.pending:
            upd = g.pending.pop(self.index)  # by member, whatever order the model calls them in
            if not g.pending:
                g.src = None
            return upd
        # The first member (or a call out of the expected order): every member's update at once.
        # Each member keeps its own dropout mask: dropout of the input broadcast to k copies
        # draws k independent masks, and the k products run as one batched product.
        A = g.A
        slots, k = A.shape[0], A.shape[1]
        h = x.reshape(slots, 1, -1, x.shape[-1]).to(A.dtype)
        if self.ctx.dropout_on and self.p > 0:
            h = F.dropout(h.expand(slots, k, *h.shape[2:]), self.p, training=True)
            hA = torch.matmul(A, h.transpose(-1, -2))  # [slots, k, r, n]
        else:  # one input: the members' A side by side are one [k*r, d_in] matrix per slot
            hA = torch.bmm(A.flatten(1, 2), h[:, 0].transpose(1, 2)).view(slots, k, self.r, -1)
        if g.B is not None:
            ups = torch.matmul(g.B, hA).transpose(-1, -2).unbind(1)
        else:
            ups = [torch.bmm(m._B, t).transpose(1, 2) for m, t in zip(g.members, hA.unbind(1))]
        if self.index != 0:  # a follower called out of order: its own update, none left pending
            return ups[self.index]
        g.src, g.pending = x, dict(enumerate(ups))
        del g.pending[0]
        return ups[0]
