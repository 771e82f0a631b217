"""Continuous batching: which run trains in which slot, when a finished run hands its slot to the
next, when losses are read back from the device and when the state is checkpointed."""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import torch
from torch import nn

from ..config import RunSpec
from ..train import epoch_order, lr_factor, step_precision
from .checkpoint import Checkpoint, init_from_peft
from .packer import PackedLoRA

log = logging.getLogger(__name__)
# Losses are read back from the device every this many packed steps (one sync for all of them).
SYNC_EVERY = 16


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
    lr: float = 0.0  # its learning rate (series of one pass may differ in it)

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


class Scheduler:
    """One packed sweep's continuous batching (`train_packed` says what it does; it takes this
    class's arguments). When no run
    waits any more and at most half the slots train, the live runs move to a smaller packer
    (`shrink_packer`): a paper-size sweep spends most of its steps on its two or three largest
    runs. Its state:

    - `queue`: the runs still waiting for a slot, in order; `by_key`: every run by its key;
    - `live[s]`: the run training in slot s (None: the slot is idle);
    - `inits`: each seed's initial adapter (taken from peft once per seed);
    - `pending`: the steps whose losses are still on the device, as (slots that had a row,
      per-slot losses), read back together by `read_back`;
    - `step_no`: packed steps taken (continued from a checkpoint); `last_save`, `saved_step`:
      when and at which step the state was last checkpointed;
    - `meta`: the checkpoint being resumed, or None (a fresh start)."""

    shrink: bool = True  # move the last runs to a smaller packer (`shrink_due`)

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        spec: RunSpec,
        runs: list[tuple],
        slots: int,
        on_done: Callable[[PackedLoRA, int, Slot], None],
        on_step: Callable[[list[Slot | None], list[float]], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        cuda_graphs: bool = True,
        compile_step: bool = False,
        sync_every: int = SYNC_EVERY,
        checkpoint: Checkpoint | None = None,
    ):
        from ..models import target_modules

        self.model, self.tokenizer, self.spec, self.runs = model, tokenizer, spec, runs
        self.on_done, self.on_step, self.should_stop = on_done, on_step, should_stop
        self.checkpoint = checkpoint
        targets = target_modules(model, spec.target_modules)
        self.queue = list(runs)
        self.by_key = {r[0]: r for r in runs}
        slots = max(1, min(slots, len(self.queue)))
        meta = checkpoint.load_meta(self.by_key) if checkpoint is not None else None
        if meta is not None:
            slots = meta["slots"]
        self.sync_every = max(1, int(sync_every))
        self.targets, self.cuda_graphs, self.compile_step = targets, cuda_graphs, compile_step
        self.packer = packer = PackedLoRA(model, spec, slots, targets)
        # another adapter layout (saved before grouped layouts had a name: per-module): start afresh
        if meta is not None and (
            meta["P"] != packer.params_per_slot
            or meta.get("layout", "per-module-v1") != packer.layout_id
        ):
            meta = None
        self.meta = meta
        self._ready(packer)
        self.inits: dict[int, torch.Tensor] = {}
        self.live: list[Slot | None] = [None] * slots
        self.pending: list[tuple[list[int], torch.Tensor]] = []  # (slots that had a row, losses)
        model.train()
        self.step_no = meta["step"] if meta else 0
        self.last_save, self.saved_step = time.monotonic(), self.step_no

    def _ready(self, packer: PackedLoRA) -> None:
        if self.cuda_graphs:
            packer.enable_graphs()
        if self.compile_step:
            packer.compile()

    def shrink_due(self) -> bool:
        """No run waits for a slot and at most half the slots train: every idle slot still costs
        a padded row in each step, so the live runs move to a packer of their own size."""
        n = sum(x is not None for x in self.live)
        return self.shrink and not self.queue and 0 < n <= len(self.live) // 2

    def shrink_packer(self) -> None:
        """Move the live runs (adapters, AdamW state, step counts, learning rates) into a new
        packer with one slot each; the old one's modules and captured graphs go. Each run's
        numbers do not change: rows never interact (tests/test_packed.py checks it)."""
        self.read_back()  # pending losses are indexed by the old slots
        keep = [s for s, x in enumerate(self.live) if x is not None]
        old = self.packer
        state = {a: getattr(old, a)[keep].clone() for a in PackedLoRA.STATE}
        old.remove()
        old.graphs = None
        self.packer = PackedLoRA(self.model, self.spec, len(keep), self.targets)
        self._ready(self.packer)
        with torch.no_grad():
            for a, t in state.items():
                getattr(self.packer, a).copy_(t)
        self.live = [self.live[s] for s in keep]
        log.info("packed trainer: %d slots -> %d", len(old.weights), len(keep))

    def place(self, s: int, run, pos: int = 0, losses: list[float] | None = None) -> None:
        """Run `run` trains in slot s from step `pos` (the slot's weights are set by the caller)."""
        key, seed, samples = run[:3]
        spec = self.spec
        lr = run[3] if len(run) > 3 else spec.learning_rate
        rows = self.tokenizer(samples, truncation=True, max_length=spec.max_length)["input_ids"]
        self.live[s] = Slot(
            key, seed, rows, spec.epochs, pos, list(losses or []), batch=spec.batch_size, lr=lr
        )
        self.packer.lr[s] = lr

    def fill(self, s: int) -> None:
        """Slot s takes the next queued run, starting from its seed's initial adapter."""
        run = self.queue.pop(0)
        seed = run[1]
        if seed not in self.inits:
            self.inits[seed] = init_from_peft(self.model, self.spec, seed, self.packer)
        self.packer.reset_slot(s, self.inits[seed])
        self.place(s, run)

    def read_back(self) -> None:
        """One host-device sync for every step since the last one."""
        pending, live = self.pending, self.live
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
        if self.on_step is not None:
            self.on_step(live, [x.losses[-1] if x and x.losses else math.nan for x in live])

    def resume(self) -> None:
        """The checkpoint's state back in the packer and its runs back in their slots."""
        self.checkpoint.restore(self.packer)
        for s, x in enumerate(self.meta["live"]):
            key = tuple(x["key"]) if x else None
            if key not in self.by_key:
                continue  # an empty slot, or a run finished (and stored) after the save
            self.queue.remove(self.by_key[key])
            self.place(s, self.by_key[key], x["pos"], x["losses"])

    def checkpoint_due(self) -> bool:
        """Whether the checkpoint's interval (time, or steps) has passed."""
        checkpoint = self.checkpoint
        return checkpoint is not None and bool(
            time.monotonic() - self.last_save >= checkpoint.every_s
            or (checkpoint.every_steps and self.step_no % checkpoint.every_steps == 0)
        )

    def save_checkpoint(self) -> None:
        """Save the whole state, unless nothing moved since the last save."""
        if self.checkpoint is None or self.step_no == self.saved_step:
            return
        self.read_back()  # a stop saves too: a cancelled or signalled run loses no step
        try:
            self.checkpoint.save(self.packer, self.live, self.step_no)
        except OSError as e:  # e.g. disk full: training goes on without it
            log.warning("checkpoint not saved: %s", e)
        self.last_save, self.saved_step = time.monotonic(), self.step_no

    def step(self) -> None:
        """One packed step for every live slot; losses stay on the device until `read_back`."""
        spec, packer, live = self.spec, self.packer, self.live
        rows = [x.next_rows() if x is not None else None for x in live]
        if spec.warmup_ratio > 0:  # per-slot warm-up, same schedule as the sequential loop
            lrs = [x.lr * lr_factor(x.pos, x.total, spec.warmup_ratio) if x else 0.0 for x in live]
            packer.lr.copy_(torch.tensor(lrs, dtype=packer.lr.dtype))
        with step_precision(spec.precision, packer.weights.device):  # captured graphs keep it
            losses = packer.step(rows, self.tokenizer.pad_token_id)
        self.step_no += 1
        self.pending.append(([s for s, x in enumerate(live) if x is not None], losses))
        for x in live:
            if x is not None:
                x.pos += 1
        if len(self.pending) >= self.sync_every or any(x and x.pos >= x.total for x in live):
            self.read_back()

    def hand_over(self) -> None:
        """Every run that ended (all steps taken, or diverged) goes to `on_done` while its
        weights are still in its slot; the slot then takes the next queued run."""
        for s, x in enumerate(self.live):
            if x is not None and (x.pos >= x.total or x.diverged):
                self.model.eval()
                self.packer.use_slot(s)
                self.on_done(self.packer, s, x)
                self.model.train()
                self.live[s] = None
                if self.queue:
                    self.fill(s)

    def run(self) -> str:
        """Train until every run has ended ('done') or `should_stop` says so ('cancelled');
        the model gets its own modules back either way."""
        try:
            if self.meta is not None:
                self.resume()  # also restores the random state of the save
            else:  # dropout masks: one stream for the sweep, the same on every invocation
                torch.manual_seed(self.runs[0][1] if self.runs else 0)
            for s in range(len(self.live)):
                if self.live[s] is None and self.queue:
                    self.fill(s)
            while any(x is not None for x in self.live):
                due = self.checkpoint_due()
                stop = self.should_stop()
                if due or stop:
                    self.save_checkpoint()
                if stop:
                    return "cancelled"
                self.step()
                self.hand_over()
                if self.shrink_due():
                    self.shrink_packer()
            return "done"
        finally:
            self.model.eval()
            self.packer.remove()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _takes_args_of(init: Callable[_P, object]) -> Callable[[Callable[..., _R]], Callable[_P, _R]]:
    """Give the decorated forwarder `init`'s parameters: for a type checker (through `_P`) and
    for help() and inspect (its `__signature__`), so the one signature to keep is `init`'s."""

    def give(f: Callable[..., _R]) -> Callable[_P, _R]:
        sig = inspect.signature(init)
        f.__signature__ = sig.replace(return_annotation=inspect.signature(f).return_annotation)
        return f

    return give


@_takes_args_of(Scheduler)
def train_packed(*args, **kwargs) -> str:
    """Train every run (key, seed, samples[, learning rate]; without one, the spec's) with
    continuous batching over `slots` slots. When a
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
    e.g. finished and stored after the save, are dropped). The caller clears it when done.

    Takes `Scheduler`'s arguments (model, tokenizer, spec, runs, slots, on_done, on_step,
    should_stop, cuda_graphs, compile_step, sync_every, checkpoint) and forwards them as given."""
    return Scheduler(*args, **kwargs).run()
