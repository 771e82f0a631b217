"""The packed trainer: many LoRA runs share every forward/backward of one frozen base.

Each run (a scale point x seed) owns one slot. A step feeds one row per slot; a row only ever
reads its own slot's adapter, so the gradient a slot receives is exactly its own batch-size-1
gradient: rows never interact (causal attention with right padding, per-token norms, each row's
loss averaged over its own tokens). The longest run's sequential steps are the critical path.

Layout: every slot's adapters live in one flat buffer `PackedLoRA.weights` of shape [slots, P]
(P = `params_per_slot`); a target module's A (r x d_in) and B (d_out x r) are views into it. With
one row per slot no gather is needed in training, and the optimizer is a handful of kernels on
[slots, P] tensors (`grads`, `exp_avg`, `exp_avg_sq`; `step_count`, `lr`, `weight_decay` per
slot). A checkpoint names them as it always did (W, m, v, t).

The optimizer is AdamW written per slot: its own step count (bias correction), learning rate and
weight decay, and a mask so a slot without a row in a step is not touched at all (plain AdamW
would still move it through momentum and weight decay). Gradient clipping is per slot.

Same semantics as `train.train_point` with peft (checked by tests/test_packed.py): identical
initialisation (taken from peft with the run's seed), identical per-epoch data order
(`train.epoch_order`), identical AdamW. Dropout masks are drawn per row but not from the same
random stream as the sequential loop, so bit-equality holds for dropout 0 only; the stream is
seeded from the sweep's first run, so the same sweep gives the same numbers on every invocation,
and a checkpoint (`Checkpoint`) carries it across a crash.

Where to read (in this order):

- `layers.py`: the injected modules (`PackedLoRALinear`: a frozen linear layer plus one LoRA
  adapter per slot; `_Group`: sibling projections sharing batched products);
- `packer.py`: `PackedLoRA`, the flat adapter buffer, one packed training step with its
  per-slot AdamW, and the compiled / CUDA-graph variants of that step;
- `checkpoint.py`: peft-format initialisation and export, and the saved trainer state;
- `scheduler.py`: `Slot`, `Scheduler` (continuous batching over the slots) and `train_packed`.
"""

from .checkpoint import Checkpoint, init_from_peft, save_peft_adapter
from .layers import SHARED_INPUT, PackedLoRALinear
from .packer import CAUSAL_ATTENTION, PackedLoRA, bucket_width, causal_attention
from .scheduler import SYNC_EVERY, Scheduler, Slot, train_packed

__all__ = [
    "CAUSAL_ATTENTION",
    "SHARED_INPUT",
    "SYNC_EVERY",
    "Checkpoint",
    "PackedLoRA",
    "PackedLoRALinear",
    "Scheduler",
    "Slot",
    "bucket_width",
    "causal_attention",
    "init_from_peft",
    "save_peft_adapter",
    "train_packed",
]
