"""`PackedLoRA`: the flat adapter buffer of every slot, the packed training step (forward,
per-slot loss, backward, per-slot AdamW), its compiled and CUDA-graph variants, and the switches
that choose them (`transposed`, `grouped`, `fused_adamw`, `cast_base`, `fused_head`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunSpec
from .layers import SHARED_INPUT, PackedLoRALinear, _Ctx, _Group, _set_module


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
def _compiled_forward(
    layer_type: type, dynamic: bool | None, mode: str | None = None, combo_kernels: bool = False
) -> Callable:
    """One compiled forward per layer class, kept for the process: a later sweep (or packer)
    reuses what an earlier one compiled when its shapes pass the guards. `combo_kernels`:
    Inductor's horizontal fusion (independent small kernels of one graph launched as one);
    torch.compile takes options or a mode, not both."""
    if combo_kernels:
        return torch.compile(layer_type.forward, dynamic=dynamic, options={"combo_kernels": True})
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


class PackedLoRA:
    """Inject packed LoRA into `model` (in place) for `slots` concurrent runs.

    The class attributes below switch the step's variants (bench/trainer.py --ablate times them
    side by side; docs/ARCHITECTURE.md has the numbers); tests/test_packed_variants.py checks each
    against the plain expression, tests/test_packed.py the defaults against the sequential loop."""

    # the per-slot tensors that make up the training state (a checkpoint saves the first four)
    STATE = ("weights", "exp_avg", "exp_avg_sq", "step_count", "lr", "weight_decay")

    # the step's switches (bench/trainer.py times them, tests/test_packed_variants.py checks them)
    SWITCHES = (
        "transposed",
        "grouped",
        "fused_adamw",
        "cast_base",
        "fused_head",
        "combo_kernels",
    )
    transposed: bool = True  # LoRA products as A @ h^T: contiguous leaf gradients, no copies
    grouped: bool = True  # one batched LoRA product for the projections sharing an input
    fused_adamw: bool = True  # with compile(): the optimizer as one compiled function
    cast_base: bool = True  # bf16 steps: frozen base weights cast to bf16 once, not every step
    fused_head: bool = True  # with compile(): LM head + cross-entropy as one compiled function
    # with compile(): Inductor's horizontal fusion of small kernels. Off: measured mixed on an
    # H200 (bf16: -0.7 ms at 5 rows, +0.1-0.3 ms at 2 rows; docs/ARCHITECTURE.md)
    combo_kernels: bool = False

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
        from ..methods.lora import lora_config

        self.peft_config = lora_config(model, spec)  # on the plain model, before injection
        groups = {g[0]: g for g in self._shared_input_groups(found)} if self.grouped else {}
        spans = self._lay_out(found, groups)
        # Adapters and optimizer state stay fp32 (fp64 when the base is fp64, for exactness tests).
        self.weights = torch.zeros(slots, self.params_per_slot, device=device, dtype=dtype)
        self.grads = torch.zeros_like(self.weights)
        self.exp_avg = torch.zeros_like(self.weights)
        self.exp_avg_sq = torch.zeros_like(self.weights)
        self.step_count = torch.zeros(slots, device=device, dtype=dtype)
        self.lr = torch.full((slots,), spec.learning_rate, device=device, dtype=dtype)
        self.weight_decay = torch.full((slots,), spec.weight_decay, device=device, dtype=dtype)
        # in layout order: their gradients concatenated are `grads`
        self.leaves = [
            self.weights[:, a:b].view(slots, *shape).detach().requires_grad_()
            for a, b, shape in spans
        ]
        self._inject(found, groups, {a: t for (a, _, _), t in zip(spans, self.leaves)})

    def _lay_out(
        self, found: list[tuple[str, nn.Module]], groups: dict[str, tuple[str, ...]]
    ) -> list[tuple[int, int, tuple[int, ...]]]:
        """Place every target module's A and B in the flat buffer: sets `layout` (name -> (A's
        offset, B's offset, B's end)), `params_per_slot` and `layout_id`, and returns `spans` = every leaf
        (start, end, shape) in layout order. A group's A blocks lie side by side, then its B
        blocks, so each is one [slots, k, ...] leaf."""
        r = self.spec.lora_rank
        mods = dict(found)
        grouped = {n for g in groups.values() for n in g}
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
        self.params_per_slot = off
        self.layout_id = "grouped-v1" if groups else "per-module-v1"
        return spans

    def _inject(
        self,
        found: list[tuple[str, nn.Module]],
        groups: dict[str, tuple[str, ...]],
        leaf: dict[int, torch.Tensor],
    ) -> None:
        """Replace every target module by its `PackedLoRALinear` (`leaf`: each leaf by the
        offset where it starts)."""
        spec, model = self.spec, self.model
        mods = dict(found)
        grouped = {n for g in groups.values() for n in g}
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
            self.weights[s].copy_(init)
            self.exp_avg[s].zero_()
            self.exp_avg_sq[s].zero_()
            self.step_count[s] = 0

    def slot_state(self, s: int) -> dict[str, torch.Tensor]:
        """The slot's adapter in peft's key layout (for `save_file` / comparison)."""
        out = {}
        for name, pm in self.modules.items():
            out[f"base_model.model.{name}.lora_A.weight"] = pm.A[s].detach().clone()
            out[f"base_model.model.{name}.lora_B.weight"] = pm.B[s].detach().clone()
        return out

    def flat_from_peft(self, peft_model: nn.Module) -> torch.Tensor:
        """Read an initialised peft adapter into this layout (so init matches peft exactly)."""
        flat = torch.zeros(
            self.params_per_slot, device=self.weights.device, dtype=self.weights.dtype
        )
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
            dev = self.weights.device
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
        torch.cat([leaf.grad.view(self.slots, -1) for leaf in self.leaves], dim=1, out=self.grads)
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
        combo = self.combo_kernels
        if combo and mode is not None:
            raise ValueError("combo_kernels (an Inductor option) excludes a compile mode")
        fwd = {t: _compiled_forward(t, dynamic, mode, combo) for t in {type(m) for m in layers}}

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
        if self.weights.device.type == "cuda":
            self.graphs = {}

    def _graph_step(self, ids, mask, active) -> torch.Tensor:
        key = ids.shape[1]
        if key not in self.graphs:
            dev = self.weights.device
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
        g = self.grads
        a = active[:, None]
        if self.spec.grad_clip > 0:  # per slot, like clip_grad_norm_ over that run's tensors
            norm = g.norm(dim=1, keepdim=True)
            g.mul_((self.spec.grad_clip / (norm + 1e-6)).clamp(max=1.0))
        self.step_count += active.to(self.step_count.dtype)
        t = self.step_count.clamp(min=1)[:, None]
        self.exp_avg.copy_(torch.where(a, self.exp_avg * b1 + (1 - b1) * g, self.exp_avg))
        self.exp_avg_sq.copy_(
            torch.where(a, self.exp_avg_sq * b2 + (1 - b2) * g * g, self.exp_avg_sq)
        )
        lr, wd = self.lr[:, None], self.weight_decay[:, None]
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
        denom = (self.exp_avg_sq.sqrt() / bc2.sqrt()) + eps
        new = self.weights * (1 - lr * wd) - (lr / bc1) * self.exp_avg / denom
        self.weights.copy_(torch.where(a, new, self.weights))
