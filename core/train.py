"""The training loop for one scale point, read top to bottom.

Seed 000's protocol: AdamW, constant learning rate, `epochs` passes, batch size 1 by default,
a per-epoch shuffle drawn from the point's seed. The loss is the mean over the batch's real
(non-padded) tokens. A non-finite loss stops the point at once as 'diverged'.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import RunSpec


@dataclass
class TrainResult:
    status: str  # done | diverged | cancelled | stopped
    steps: int
    seconds: float
    final_loss: float | None
    losses: list[float] = field(default_factory=list)
    message: str = ""


@contextmanager
def step_precision(precision: str, device: torch.device):
    """The arithmetic of a training step (see RunSpec.precision). Only the step is wrapped:
    evaluation and smoke tests called from inside the loop run in fp32."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and device.type == "cuda":
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a shuffle seeded by (seed, epoch) alone, so any trainer
    that calls this sees the same order."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def total_steps(n_samples: int, spec: RunSpec) -> int:
    return spec.epochs * math.ceil(n_samples / spec.batch_size)


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Learning-rate multiplier for 0-based `step`: linear warm-up over the first
    ceil(warmup_ratio x total) steps, then constant (seed 000's constant rate when 0)."""
    warm = math.ceil(warmup_ratio * total)
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0


def train_point(
    model: nn.Module,
    tokenizer,
    samples: list[str],
    spec: RunSpec,
    seed: int,
    on_step: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    check: Callable[[int], str | None] | None = None,
) -> TrainResult:
    """Train `model`'s trainable parameters on `samples`. `check(step)` (the in-training smoke
    test) runs every `spec.smoke_every` steps and after each epoch; it returns a reason when the
    model fails, which stops the point as 'stopped' if `spec.smoke_stop` is set."""
    device = next(model.parameters()).device
    enc = tokenizer(samples, truncation=True, max_length=spec.max_length)["input_ids"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=spec.learning_rate, weight_decay=spec.weight_decay, betas=(0.9, 0.999)
    )
    pad = tokenizer.pad_token_id
    n_total = total_steps(len(enc), spec)
    torch.manual_seed(seed)  # LoRA dropout masks
    model.train()
    losses: list[float] = []
    step = 0
    t0 = time.perf_counter()
    for epoch in range(spec.epochs):
        order = epoch_order(len(enc), seed, epoch)
        for i in range(0, len(order), spec.batch_size):
            rows = [enc[j] for j in order[i : i + spec.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for k, r in enumerate(rows):
                ids[k, : len(r)] = torch.tensor(r)
                mask[k, : len(r)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)

            with step_precision(spec.precision, device):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss_v = float(loss.detach())
            if not math.isfinite(loss_v):
                model.eval()
                return TrainResult(
                    "diverged",
                    step,
                    time.perf_counter() - t0,
                    loss_v,
                    losses,
                    f"loss became {loss_v} at step {step + 1}",
                )
            with step_precision(spec.precision, device):  # TF32 applies to backward too
                loss.backward()
            if spec.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            for g in opt.param_groups:
                g["lr"] = spec.learning_rate * lr_factor(step, n_total, spec.warmup_ratio)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append(loss_v)
            if on_step is not None:
                on_step(step, n_total, loss_v)
            if should_stop is not None and should_stop():
                model.eval()
                return TrainResult("cancelled", step, time.perf_counter() - t0, loss_v, losses)
            last_of_epoch = i + spec.batch_size >= len(order)
            if check is not None and (
                (spec.smoke_every and step % spec.smoke_every == 0) or last_of_epoch
            ):
                reason = check(step)
                if reason and spec.smoke_stop:
                    model.eval()
                    return TrainResult(
                        "stopped",
                        step,
                        time.perf_counter() - t0,
                        loss_v,
                        losses,
                        f"stopped: silent failure at step {step} ({reason})",
                    )
    model.eval()
    return TrainResult(
        "done", step, time.perf_counter() - t0, losses[-1] if losses else None, losses
    )
