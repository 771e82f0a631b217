"""The packed trainer: many LoRA runs share every forward/backward of one frozen base.

Each run (a scale point x seed) owns one slot. A step feeds one row per slot; a row only ever
reads its own slot's adapter, so the gradient a slot receives is exactly its own batch-size-1
gradient: rows never interact (causal attention with right padding, per-token norms, each row's
loss averaged over its own tokens). The longest run's sequential steps are the critical path.

Layout: every slot's adapters live in one flat parameter `W` of shape [slots, P]; a target
module's A (r x d_in) and B (d_out x r) are views into it. With one row per slot no gather is
needed in training, and the optimizer is a handful of kernels on [slots, P] tensors.

The optimizer is AdamW written per slot: its own step count (bias correction), learning rate and
weight decay, and a mask so a slot without a row in a step is not touched at all (plain AdamW
would still move it through momentum and weight decay). Gradient clipping is per slot.

Same semantics as `train.train_point` with peft (checked by tests/test_packed.py): identical
initialisation (taken from peft with the run's seed), identical per-epoch data order
(`train.epoch_order`), identical AdamW. Dropout masks are drawn per row but not from the same
random stream as the sequential loop, so bit-equality holds for dropout 0 only; the stream is
seeded from the sweep's first run, so the same sweep gives the same numbers on every invocation,
and a checkpoint (`Checkpoint`) carries it across a crash.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunSpec
from .train import epoch_order, lr_factor, step_precision

log = logging.getLogger(__name__)
# Losses are read back from the device every this many packed steps (one sync for all of them).
SYNC_EVERY = 16


def _set_module(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, mod)


def bucket_width(width: int, max_length: int) -> int:
    """Round a step's width up to a multiple of 16 (at most 32 buckets for 512 tokens), so a few
    captured graphs serve every step. (Multiples of 8 were measured too: no gain on an H200 at
    the full grid's 22 rows, 64.6 vs 65.6 ms per step, and more graphs to capture.)"""
    return min(-(-width // 16) * 16, max_length)


CAUSAL_ATTENTION = "forgetting_lab_causal"


def _causal_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention for training steps: rows are right-padded and causal, so no mask is needed (a
    real token never sees a pad; pads are out of the loss). transformers' own sdpa path does the
    same when it is not traced, but materialises a mask under CUDA-graph capture or compile,
    which makes a captured graph differ from its warm-up and costs kernels."""
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        dropout_p=dropout,
        scale=scaling,
        is_causal=query.shape[2] > 1,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


@functools.cache  # once per process
def _register_causal_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(CAUSAL_ATTENTION, _causal_sdpa)
    AttentionMaskInterface.register(CAUSAL_ATTENTION, lambda *args, **kwargs: None)


@contextmanager
def causal_attention(model: nn.Module):
    """The model's sdpa attention replaced by `_causal_sdpa` for a moment (other attention
    implementations are left as they are)."""
    cfg = model.config
    old = getattr(cfg, "_attn_implementation", None)
    if old != "sdpa":
        yield
        return
    _register_causal_attention()
    cfg._attn_implementation = CAUSAL_ATTENTION
    try:
        yield
    finally:
        cfg._attn_implementation = old


@functools.cache
def _compiled_forward(layer_type: type, dynamic: bool | None, mode: str | None = None) -> Callable:
    """One compiled forward per layer class, kept for the process: a later sweep (or packer)
    reuses what an earlier one compiled when its shapes pass the guards."""
    return torch.compile(layer_type.forward, dynamic=dynamic, mode=mode)


def _head_loss(hidden, weight, bias, ids, mask, slots: int) -> torch.Tensor:
    """`PackedLoRA._slot_loss` from the decoder's last hidden state: LM head, then each slot's
    mean token cross-entropy (the same expression, compiled as one function by
    `PackedLoRA.fused_head`)."""
    logits = F.linear(hidden, weight, bias)
    n, width, vocab = logits.shape
    tgt = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    valid = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    lg = logits.reshape(n * width, vocab)
    lg = lg.float() if lg.dtype in (torch.float16, torch.bfloat16) else lg
    tok = F.cross_entropy(lg, tgt.reshape(-1), reduction="none").view(slots, -1)
    valid = valid.view(slots, -1)
    return (tok * valid).sum(1) / valid.sum(1).clamp(min=1)


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


@dataclass
class Slot:
    key: tuple  # (scale, seed) or anything the caller uses to name a run
    seed: int
    rows: list[list[int]]  # tokenised samples
    epochs: int
    pos: int = 0  # optimizer steps taken
    losses: list[float] = field(default_factory=list)
    diverged: bool = False
    started: float = field(default_factory=time.perf_counter)  # when it took its slot
    batch: int = 1  # samples per optimizer step

    @property
    def per_epoch(self) -> int:
        return math.ceil(len(self.rows) / self.batch)

    @property
    def total(self) -> int:
        return self.epochs * self.per_epoch

    def next_rows(self) -> list[list[int]]:
        """The samples of the next step: the sequential loop's batch at the same step (the last
        batch of an epoch may be short)."""
        e, j = divmod(self.pos, self.per_epoch)
        if not hasattr(self, "_order") or self._epoch != e:
            self._order, self._epoch = epoch_order(len(self.rows), self.seed, e), e
        return [self.rows[i] for i in self._order[j * self.batch : (j + 1) * self.batch]]


class PackedLoRA:
    """Inject packed LoRA into `model` (in place) for `slots` concurrent runs.

    The class attributes below switch the step's variants (bench/trainer.py --ablate times them
    side by side; docs/ARCHITECTURE.md has the numbers); tests/test_packed_variants.py checks each
    against the plain expression, tests/test_packed.py the defaults against the sequential loop."""

    transposed: bool = True  # LoRA products as A @ h^T: contiguous leaf gradients, no copies
    grouped: bool = True  # one batched LoRA product for the projections sharing an input
    fused_adamw: bool = True  # with compile(): the optimizer as one compiled function
    cast_base: bool = True  # bf16 steps: frozen base weights cast to bf16 once, not every step
    fused_head: bool = True  # with compile(): LM head + cross-entropy as one compiled function

    def __init__(self, model: nn.Module, spec: RunSpec, slots: int, targets: list[str]):
        self.model, self.spec, self.slots = model, spec, slots
        self.rows_per_slot = spec.batch_size  # each run's batch: its own rows in every step
        self.ctx = _Ctx()
        self.scaling = spec.lora_alpha / spec.lora_rank
        self.modules: dict[str, PackedLoRALinear] = {}
        self._orig: dict[str, nn.Module] = {}
        device = next(model.parameters()).device
        dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
        found = []
        for name, mod in list(model.named_modules()):
            if (
                isinstance(mod, nn.Linear)
                and "lm_head" not in name
                and any(name == t or name.endswith("." + t) for t in targets)
            ):
                found.append((name, mod))
        if not found:
            raise ValueError("no target modules found for the packed trainer")
        from .methods.lora import lora_config

        self.peft_config = lora_config(model, spec)  # on the plain model, before injection
        r = spec.lora_rank
        mods = dict(found)
        groups = {g[0]: g for g in self._shared_input_groups(found)} if self.grouped else {}
        grouped = {n for g in groups.values() for n in g}
        # name -> (A's offset, B's offset, B's end). A group's A blocks lie side by side, then its B
        # blocks, so each is one [slots, k, ...] leaf; `spans` = every leaf in layout order.
        self.layout: dict[str, tuple[int, int, int]] = {}
        spans: list[tuple[int, int, tuple[int, ...]]] = []
        off = 0
        for name, _ in found:
            if name in grouped and name not in groups:
                continue  # laid out with its group
            members = groups.get(name, (name,))
            ms = [mods[n] for n in members]
            a_offs = [off + i * r * ms[0].in_features for i in range(len(ms))]
            off = a_offs[-1] + r * ms[0].in_features
            for n, m, a_off in zip(members, ms, a_offs):
                self.layout[n] = (a_off, off, off + m.out_features * r)
                off += m.out_features * r
            if len(ms) == 1:
                spans.append((a_offs[0], self.layout[name][1], (r, ms[0].in_features)))
            else:
                spans.append(
                    (a_offs[0], a_offs[-1] + r * ms[0].in_features, (len(ms), r, ms[0].in_features))
                )
            if len(ms) > 1 and len({m.out_features for m in ms}) == 1:
                b0, end = self.layout[members[0]][1], self.layout[members[-1]][2]
                spans.append((b0, end, (len(ms), ms[0].out_features, r)))
            else:
                spans += [
                    (self.layout[n][1], self.layout[n][2], (m.out_features, r))
                    for n, m in zip(members, ms)
                ]
        self.P = off
        self.layout_id = "grouped-v1" if groups else "per-module-v1"
        # Adapters and optimizer state stay fp32 (fp64 when the base is fp64, for exactness tests).
        self.W = torch.zeros(slots, off, device=device, dtype=dtype)
        self.G = torch.zeros_like(self.W)
        self.m = torch.zeros_like(self.W)
        self.v = torch.zeros_like(self.W)
        self.t = torch.zeros(slots, device=device, dtype=dtype)
        self.lr = torch.full((slots,), spec.learning_rate, device=device, dtype=dtype)
        self.wd = torch.full((slots,), spec.weight_decay, device=device, dtype=dtype)
        # in layout order: their gradients concatenated are G
        self.leaves = [
            self.W[:, a:b].view(slots, *shape).detach().requires_grad_() for a, b, shape in spans
        ]
        leaf = {a: t for (a, _, _), t in zip(spans, self.leaves)}
        for name, _ in found:
            if name in grouped and name not in groups:
                continue
            members = groups.get(name, (name,))
            group = None
            if len(members) > 1:
                a0, b0, _ = self.layout[members[0]]
                gb = leaf[b0] if leaf[b0].dim() == 4 else None
                group = _Group(leaf[a0], gb)
            for i, n in enumerate(members):
                a_off, b_off, _ = self.layout[n]
                A = None if group else leaf[a_off]
                B = None if group and group.B is not None else leaf[b_off]
                pm = PackedLoRALinear(
                    mods[n],
                    self.ctx,
                    A,
                    B,
                    self.scaling,
                    spec.lora_dropout,
                    self.transposed,
                    group,
                    i,
                )
                if group is not None:
                    group.members.append(pm)
                if (
                    self.cast_base
                    and spec.precision == "bf16"
                    and mods[n].weight.is_floating_point()
                ):
                    # autocast would cast the fp32 weight afresh in every step (a kernel and a
                    # full read + write of the weight per module); the weight is frozen, so once
                    # is enough. Evaluation (fp32, no autocast) still reads the fp32 weight.
                    pm.base_lp = mods[n].weight.detach().to(torch.bfloat16)
                    if mods[n].bias is not None:
                        pm.bias_lp = mods[n].bias.detach().to(torch.bfloat16)
                _set_module(model, n, pm)
                self.modules[n], self._orig[n] = pm, mods[n]

    def _shared_input_groups(self, found: list[tuple[str, nn.Module]]) -> list[tuple[str, ...]]:
        """Target modules of one parent that read the same input (`SHARED_INPUT`), in the
        parent's call order."""
        names = {n for n, _ in found}
        feats = dict((n, m.in_features) for n, m in found)
        out = []
        for parent in {n.rpartition(".")[0] for n in names}:
            pre = parent + "." if parent else ""
            for sib in SHARED_INPUT:
                g = tuple(pre + x for x in sib if pre + x in names)
                if len(g) > 1 and len({feats[n] for n in g}) == 1:
                    out.append(g)
        return out

    # -- slot lifecycle ---------------------------------------------------------------------
    def reset_slot(self, s: int, init: torch.Tensor) -> None:
        with torch.no_grad():
            self.W[s].copy_(init)
            self.m[s].zero_()
            self.v[s].zero_()
            self.t[s] = 0

    def slot_state(self, s: int) -> dict[str, torch.Tensor]:
        """The slot's adapter in peft's key layout (for `save_file` / comparison)."""
        out = {}
        for name, pm in self.modules.items():
            out[f"base_model.model.{name}.lora_A.weight"] = pm.A[s].detach().clone()
            out[f"base_model.model.{name}.lora_B.weight"] = pm.B[s].detach().clone()
        return out

    def flat_from_peft(self, peft_model: nn.Module) -> torch.Tensor:
        """Read an initialised peft adapter into this layout (so init matches peft exactly)."""
        flat = torch.zeros(self.P, device=self.W.device, dtype=self.W.dtype)
        named = dict(peft_model.named_modules())
        for name, (a_off, b_off, end) in self.layout.items():
            lora = named[f"base_model.model.{name}"]
            a = lora.lora_A["default"].weight.detach().reshape(-1)
            flat[a_off : a_off + a.numel()] = a  # in a group, the next member's A follows
            flat[b_off:end] = lora.lora_B["default"].weight.detach().reshape(-1)
        return flat

    def use_slot(self, s: int) -> None:
        """Route every row to slot s (evaluation and generation)."""
        self.ctx.slot = s
        self.ctx.dropout_on = False

    def remove(self) -> nn.Module:
        for name, mod in self._orig.items():
            _set_module(self.model, name, mod)
        self.ctx.slot = None
        return self.model

    @contextmanager
    def unpacked(self):
        """The plain modules back in place for a moment (e.g. to inject peft), then the packed
        ones again, with the slot being evaluated unchanged."""
        slot = self.ctx.slot
        self.remove()
        try:
            yield self.model
        finally:
            for name, pm in self.modules.items():
                _set_module(self.model, name, pm)
            self.ctx.slot = slot

    # -- one optimizer step for every active slot -----------------------------------------
    def step(self, rows: list, pad_id: int) -> torch.Tensor:
        """rows[s] is slot s's batch (a list of token-id lists, at most `rows_per_slot`; a single
        token-id list is read as a batch of one) or None if the slot is idle. Returns the
        per-slot loss (nan for idle slots)."""
        b = self.rows_per_slot
        batches = [None if r is None else ([r] if r and isinstance(r[0], int) else r) for r in rows]
        width = max(len(x) for bt in batches if bt for x in bt)
        if self.graphs is not None:
            width = bucket_width(width, self.spec.max_length)  # one captured graph per bucket
        ids = torch.full((self.slots * b, width), pad_id, dtype=torch.long)
        mask = torch.zeros((self.slots * b, width), dtype=torch.bool)
        for s, bt in enumerate(batches):
            for k, r in enumerate(bt or []):
                ids[s * b + k, : len(r)] = torch.tensor(r)
                mask[s * b + k, : len(r)] = True
        active = torch.tensor([bt is not None for bt in batches])
        if self.graphs is None:
            dev = self.W.device
            return self._step(ids.to(dev), mask.to(dev), active.to(dev)).detach()
        return self._graph_step(ids, mask, active)

    def _step(self, ids: torch.Tensor, mask: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Forward, per-row loss, backward and AdamW: tensor ops only (CUDA-graph capturable).
        No attention mask is needed: with right padding and causal attention a real token never
        sees a pad, and pads are left out of the loss."""
        self.ctx.slot = None
        self.ctx.dropout_on = self.spec.lora_dropout > 0
        with causal_attention(self.model):
            slot_loss = (self._compiled or self._slot_loss)(ids, mask)
        for leaf in self.leaves:  # backward hands each leaf its gradient (no accumulation kernel)
            leaf.grad = None
        (slot_loss * active).sum().backward()
        # one concatenation fills the flat gradient (instead of one add per leaf: 420 kernels for
        # SmolLM2's 210 adapted matrices)
        torch.cat([leaf.grad.view(self.slots, -1) for leaf in self.leaves], dim=1, out=self.G)
        (self._adamw_compiled or self._adamw)(active)
        return torch.where(active, slot_loss.detach(), torch.full_like(slot_loss, float("nan")))

    _compiled = None
    _adamw_compiled = None
    _head_compiled = None
    _head_lp: torch.Tensor | None = None

    def _head_parts(self) -> tuple[nn.Module, nn.Linear] | None:
        """(decoder, LM head) of a plain causal LM whose logits are `head(decoder(ids))`, or None
        (then the step runs the model's own forward)."""
        m, cfg = self.model, self.model.config
        dec, head = getattr(m, "model", None), m.get_output_embeddings()
        if (
            not type(m).__name__.endswith("ForCausalLM")
            or not isinstance(dec, nn.Module)
            or type(head) is not nn.Linear
            or getattr(cfg, "final_logit_softcapping", None)
            or getattr(cfg, "logit_scale", None)
        ):
            return None
        return dec, head

    def compile(self, dynamic: bool | None = None, mode: str | None = None) -> None:
        """Run every decoder layer of the training step through torch.compile: its fused kernels
        replace most elementwise kernels of the eager step (on an H100 with SmolLM2-135M, 7,003
        kernels per step become 3,390; bench/step_anatomy.py). One layer's forward is compiled
        and shared by all layers of its type (seconds instead of minutes of compiling), and only
        training steps use it: evaluation and generation run the plain modules. `dynamic=None`
        compiles the first length bucket for its shape and the second for any width."""
        layers = [m for m in self.model.modules() if type(m).__name__.endswith("DecoderLayer")]
        if self.fused_head and self._head_parts() is not None:
            # the head's logits, their fp32 copy and cross-entropy's passes over them fuse into a
            # few kernels (the logits are the step's largest tensor: rows x width x vocab)
            self._head_compiled = torch.compile(_head_loss, dynamic=dynamic, mode=mode)
            head = self._head_parts()[1]
            if self.cast_base and self.spec.precision == "bf16" and head.bias is None:
                # the largest frozen weight (vocab x hidden; tied to the embedding in SmolLM2,
                # whose lookup keeps reading the fp32 one)
                self._head_lp = head.weight.detach().to(torch.bfloat16)
        if not layers:  # an architecture without such layers: the whole forward
            self._compiled = torch.compile(self._slot_loss, dynamic=dynamic, mode=mode)
        if self.fused_adamw:
            # eager, the update is a chain of elementwise kernels, each a pass over [slots, P]
            # (P = 2.4M for SmolLM2); compiled, they fuse (2.5 ms per step at 22 rows on an H200)
            self._adamw_compiled = torch.compile(self._adamw, dynamic=dynamic, mode=mode)
        if not layers:
            return
        fwd = {t: _compiled_forward(t, dynamic, mode) for t in {type(m) for m in layers}}

        def run(ids, mask):
            for layer in layers:
                layer.forward = functools.partial(fwd[type(layer)], layer)
            try:
                return self._slot_loss(ids, mask)
            finally:
                for layer in layers:
                    del layer.forward

        self._compiled = run

    def _slot_loss(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each slot's loss: the mean over its own batch's real tokens."""
        parts = self._head_parts() if self._head_compiled is not None else None
        if parts is not None:
            dec, head = parts
            hidden = dec(input_ids=ids, use_cache=False).last_hidden_state
            w = head.weight
            if self._head_lp is not None and torch.is_autocast_enabled(ids.device.type):
                w = self._head_lp  # `cast_base`: the head's weight in bf16, cast once
            return self._head_compiled(hidden, w, head.bias, ids, mask, self.slots)
        logits = self.model(input_ids=ids, use_cache=False).logits
        n, width, vocab = logits.shape
        # Position i predicts token i+1. Shift the targets, not the logits: the logits stay one
        # contiguous [rows x width, vocab] matrix (no copy), and cross-entropy runs on its fast
        # 2-D path. (Giving it [rows, vocab, width] instead - class dimension in the middle -
        # sends it to a strided kernel that costs several ms per row on a GPU.)
        tgt = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)  # last column: a placeholder, masked
        valid = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
        lg = logits.reshape(n * width, vocab)
        lg = lg.float() if lg.dtype in (torch.float16, torch.bfloat16) else lg
        tok = F.cross_entropy(lg, tgt.reshape(-1), reduction="none").view(self.slots, -1)
        valid = valid.view(self.slots, -1)  # a slot's rows side by side
        n_tok = valid.sum(1).clamp(min=1)
        # each run: mean over its own batch's real tokens (as the sequential loop's HF loss)
        return (tok * valid).sum(1) / n_tok

    # -- CUDA graphs: one captured step per length bucket --------------------------------------
    graphs: dict | None = None

    def enable_graphs(self) -> None:
        """Capture the whole step (forward, backward, optimizer) once per length bucket and replay
        it: the step is launch-bound, and a replay launches its ~10^4 kernels at once."""
        if self.W.device.type == "cuda":
            self.graphs = {}

    def _graph_step(self, ids, mask, active) -> torch.Tensor:
        key = ids.shape[1]
        if key not in self.graphs:
            dev = self.W.device
            st = {"ids": ids.to(dev), "mask": mask.to(dev), "active": active.to(dev)}
            # Warm up on a side stream (allocator, cuBLAS workspaces) with inactive slots only,
            # so no slot's weights move; then capture.
            saved_active = st["active"].clone()
            st["active"].zero_()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step(st["ids"], st["mask"], st["active"])
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                st["out"] = self._step(st["ids"], st["mask"], st["active"])
            st["active"].copy_(saved_active)
            st["graph"] = graph
            self.graphs[key] = st
        st = self.graphs[key]
        # From pinned memory the copies are truly asynchronous: the host goes on to prepare the
        # next step while this one runs (the caching host allocator keeps the buffers alive).
        st["ids"].copy_(ids.pin_memory(), non_blocking=True)
        st["mask"].copy_(mask.pin_memory(), non_blocking=True)
        st["active"].copy_(active.pin_memory(), non_blocking=True)
        st["graph"].replay()
        return st["out"].clone()

    @torch.no_grad()
    def _adamw(self, active: torch.Tensor) -> None:
        b1, b2, eps = 0.9, 0.999, 1e-8
        g = self.G
        a = active[:, None]
        if self.spec.grad_clip > 0:  # per slot, like clip_grad_norm_ over that run's tensors
            norm = g.norm(dim=1, keepdim=True)
            g.mul_((self.spec.grad_clip / (norm + 1e-6)).clamp(max=1.0))
        self.t += active.to(self.t.dtype)
        t = self.t.clamp(min=1)[:, None]
        self.m.copy_(torch.where(a, self.m * b1 + (1 - b1) * g, self.m))
        self.v.copy_(torch.where(a, self.v * b2 + (1 - b2) * g * g, self.v))
        lr, wd = self.lr[:, None], self.wd[:, None]
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
        denom = (self.v.sqrt() / bc2.sqrt()) + eps
        new = self.W * (1 - lr * wd) - (lr / bc1) * self.m / denom
        self.W.copy_(torch.where(a, new, self.W))


def init_from_peft(model: nn.Module, spec: RunSpec, seed: int, packer: PackedLoRA) -> torch.Tensor:
    """The exact initial adapter the sequential path would start from for `seed`."""
    from peft import get_peft_model

    dev = packer.W.device
    # forked: seeding here must not move the dropout stream of the runs in flight (a resumed
    # sweep computes inits at other moments than the original did)
    with packer.unpacked(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        pm = get_peft_model(model, packer.peft_config)
        flat = packer.flat_from_peft(pm)
        pm.unload()
    return flat


def save_peft_adapter(packer: PackedLoRA, slot: int, spec: RunSpec, out: Path) -> Path:
    """Write a slot's adapter in peft's format (adapter_config.json + adapter_model.safetensors)."""
    import copy

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(packer.peft_config)
    cfg.base_model_name_or_path = spec.model
    cfg.save_pretrained(str(out))
    save_file(
        {k: v.contiguous().cpu() for k, v in packer.slot_state(slot).items()},
        str(out / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    return out


@dataclass
class Checkpoint:
    """Where and how often the packed trainer saves its whole state, so a long sweep that is
    killed (worker crash, machine taken away, a 10-minute command limit) resumes at the last
    save instead of retraining every run in flight from step 0.

    State = every slot's adapter, AdamW moments and step count (`<path>.safetensors`), each
    slot's run, position and losses, and the random-number state (`<path>.json`). Written to a
    temporary name and renamed, so a crash mid-save leaves the previous checkpoint intact. A
    resumed slot continues exactly where it was saved: same weights, same data order, same
    dropout stream (on a CPU bit for bit, tests/test_packed.py; on a GPU the dropout masks of a
    re-captured graph may differ)."""

    path: Path  # without suffix
    every_s: float = 600.0
    every_steps: int = 0  # also save every N packed steps (0 = time only; tests use it)

    @property
    def files(self) -> tuple[Path, Path]:
        return self.path.with_suffix(".safetensors"), self.path.with_suffix(".json")

    def exists(self) -> bool:
        return all(f.is_file() for f in self.files)

    def clear(self) -> None:
        for f in self.files:
            f.unlink(missing_ok=True)

    def save(self, packer: PackedLoRA, live: list[Slot | None], step: int) -> None:
        import json
        import os

        from safetensors.torch import save_file

        tensors = {"W": packer.W, "m": packer.m, "v": packer.v, "t": packer.t}
        tensors["rng_cpu"] = torch.get_rng_state()
        if packer.W.device.type == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state(packer.W.device)
        meta = {
            "version": 1,
            "step": step,
            "slots": len(live),
            "P": packer.P,
            "layout": packer.layout_id,
            "live": [
                None
                if x is None
                else {"key": list(x.key), "seed": x.seed, "pos": x.pos, "losses": x.losses}
                for x in live
            ],
        }
        st, js = self.files
        st.parent.mkdir(parents=True, exist_ok=True)
        tmp_st, tmp_js = st.with_name(st.name + ".tmp"), js.with_name(js.name + ".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp_st))
        tmp_js.write_text(json.dumps(meta))
        os.replace(tmp_st, st)
        os.replace(tmp_js, js)

    def load_meta(self, keys=None) -> dict | None:
        """The saved state's description, or None if there is none (or it is unreadable). With
        `keys` (the runs still to train), also None when it holds none of them."""
        import json

        if not self.exists():
            return None
        try:
            meta = json.loads(self.files[1].read_text())
        except (OSError, ValueError):
            return None
        if meta.get("version") != 1:
            return None
        if keys is not None and not any(x and tuple(x["key"]) in keys for x in meta["live"]):
            return None  # nothing of it is still to do
        return meta

    def restore(self, packer: PackedLoRA) -> None:
        from safetensors.torch import load_file

        t = load_file(str(self.files[0]))
        with torch.no_grad():
            for k in ("W", "m", "v", "t"):
                getattr(packer, k).copy_(t[k])
        torch.set_rng_state(t["rng_cpu"])
        if "rng_cuda" in t and packer.W.device.type == "cuda":
            torch.cuda.set_rng_state(t["rng_cuda"], packer.W.device)


def train_packed(
    model: nn.Module,
    tokenizer,
    spec: RunSpec,
    runs: list[tuple[tuple, int, list[str]]],
    slots: int,
    on_done: Callable[[PackedLoRA, int, Slot], None],
    on_step: Callable[[list[Slot | None], list[float]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    cuda_graphs: bool = True,
    compile_step: bool = False,
    sync_every: int = SYNC_EVERY,
    checkpoint: Checkpoint | None = None,
) -> str:
    """Train every run (key, seed, samples) with continuous batching over `slots` slots. When a
    run finishes, `on_done(packer, slot, run)` evaluates/saves it while its weights are still
    in the slot; then the slot takes the next queued run. Returns 'done' or 'cancelled'.

    Losses stay on the device and are read back every `sync_every` steps (and whenever a run
    finishes), so the host prepares the next steps while the GPU computes instead of waiting
    for each one. `on_step(live, latest_losses)` is called at each read-back. A run whose loss
    turns non-finite is ended as diverged at that step (its `losses` end with the bad value);
    its slot may have run up to `sync_every - 1` further steps, which change nothing but its
    already non-finite weights.

    With `checkpoint`, the state is saved every `checkpoint.every_s` seconds and when
    `should_stop` ends the sweep early (cancel, SIGTERM), and a run that
    finds a matching checkpoint continues from it (runs it lists that are no longer in `runs`,
    e.g. finished and stored after the save, are dropped). The caller clears it when done."""
    from .models import target_modules

    targets = target_modules(model, spec.target_modules)
    queue = list(runs)
    by_key = {r[0]: r for r in runs}
    slots = max(1, min(slots, len(queue)))
    meta = checkpoint.load_meta(by_key) if checkpoint is not None else None
    if meta is not None:
        slots = meta["slots"]
    sync_every = max(1, int(sync_every))
    packer = PackedLoRA(model, spec, slots, targets)
    # another adapter layout (saved before grouped layouts had a name: per-module): start afresh
    if meta is not None and (
        meta["P"] != packer.P or meta.get("layout", "per-module-v1") != packer.layout_id
    ):
        meta = None
    if cuda_graphs:
        packer.enable_graphs()
    if compile_step:
        packer.compile()
    inits: dict[int, torch.Tensor] = {}
    live: list[Slot | None] = [None] * slots
    pending: list[tuple[list[int], torch.Tensor]] = []  # (slots that had a row, losses)
    model.train()

    def new_slot(run, pos: int = 0, losses: list[float] | None = None) -> Slot:
        key, seed, samples = run
        rows = tokenizer(samples, truncation=True, max_length=spec.max_length)["input_ids"]
        return Slot(key, seed, rows, spec.epochs, pos, list(losses or []), batch=spec.batch_size)

    def fill(s: int) -> None:
        run = queue.pop(0)
        seed = run[1]
        if seed not in inits:
            inits[seed] = init_from_peft(model, spec, seed, packer)
        packer.reset_slot(s, inits[seed])
        live[s] = new_slot(run)

    def read_back() -> None:
        """One host-device sync for every step since the last one."""
        if not pending:
            return
        values = torch.stack([v for _, v in pending]).tolist()
        for (had_row, _), row in zip(pending, values):
            for s in had_row:
                x = live[s]
                if x is not None and not x.diverged:
                    x.losses.append(row[s])
                    x.diverged = not math.isfinite(row[s])
        pending.clear()
        for x in live:
            if x is not None and x.diverged:
                x.pos = len(x.losses)  # the step at which it diverged
        if on_step is not None:
            on_step(live, [x.losses[-1] if x and x.losses else math.nan for x in live])

    def resume() -> None:
        checkpoint.restore(packer)
        for s, x in enumerate(meta["live"]):
            key = tuple(x["key"]) if x else None
            if key not in by_key:
                continue  # an empty slot, or a run finished (and stored) after the save
            queue.remove(by_key[key])
            live[s] = new_slot(by_key[key], x["pos"], x["losses"])

    step_no = meta["step"] if meta else 0
    last_save, saved_step = time.monotonic(), step_no
    try:
        if meta is not None:
            resume()  # also restores the random state of the save
        else:  # dropout masks: one stream for the sweep, the same on every invocation
            torch.manual_seed(runs[0][1] if runs else 0)
        for s in range(slots):
            if live[s] is None and queue:
                fill(s)
        while any(x is not None for x in live):
            due = checkpoint is not None and (
                time.monotonic() - last_save >= checkpoint.every_s
                or (checkpoint.every_steps and step_no % checkpoint.every_steps == 0)
            )
            stop = should_stop()
            if checkpoint is not None and step_no != saved_step and (due or stop):
                read_back()  # a stop saves too: a cancelled or signalled run loses no step
                try:
                    checkpoint.save(packer, live, step_no)
                except OSError as e:  # e.g. disk full: training goes on without it
                    log.warning("checkpoint not saved: %s", e)
                last_save, saved_step = time.monotonic(), step_no
            if stop:
                return "cancelled"
            rows = [x.next_rows() if x is not None else None for x in live]
            if spec.warmup_ratio > 0:  # per-slot warm-up, same schedule as the sequential loop
                lrs = [
                    spec.learning_rate * lr_factor(x.pos, x.total, spec.warmup_ratio) if x else 0.0
                    for x in live
                ]
                packer.lr.copy_(torch.tensor(lrs, dtype=packer.lr.dtype))
            with step_precision(spec.precision, packer.W.device):  # captured graphs keep it
                losses = packer.step(rows, tokenizer.pad_token_id)
            step_no += 1
            pending.append(([s for s, x in enumerate(live) if x is not None], losses))
            for x in live:
                if x is not None:
                    x.pos += 1
            if len(pending) >= sync_every or any(x and x.pos >= x.total for x in live):
                read_back()
            for s, x in enumerate(live):
                if x is not None and (x.pos >= x.total or x.diverged):
                    model.eval()
                    packer.use_slot(s)
                    on_done(packer, s, x)
                    model.train()
                    live[s] = None
                    if queue:
                        fill(s)
        return "done"
    finally:
        model.eval()
        packer.remove()
