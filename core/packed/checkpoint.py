"""The packed trainer's files: a slot's initial adapter taken from peft (`init_from_peft`), a
slot's adapter written in peft's format (`save_peft_adapter`), and the whole trainer's state saved
and restored across a crash or a stop (`Checkpoint`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import RunSpec

if TYPE_CHECKING:
    from .packer import PackedLoRA
    from .scheduler import Slot

# The trainer state a checkpoint holds: its name in the file (kept from the first version, so
# older checkpoints still load) -> the `PackedLoRA` attribute.
SAVED = {"W": "weights", "m": "exp_avg", "v": "exp_avg_sq", "t": "step_count"}


def init_from_peft(model: nn.Module, spec: RunSpec, seed: int, packer: PackedLoRA) -> torch.Tensor:
    """The exact initial adapter the sequential path would start from for `seed`."""
    from peft import get_peft_model

    dev = packer.weights.device
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
    # the runs it trains, written into its description: deleting any of them finds it
    # (`paths.discard_run_files`) even when its name starts with another run's id
    runs: tuple[str, ...] = ()

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

        tensors = {key: getattr(packer, attr) for key, attr in SAVED.items()}
        tensors["rng_cpu"] = torch.get_rng_state()
        if packer.weights.device.type == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state(packer.weights.device)
        meta = {
            "version": 1,
            "step": step,
            "slots": len(live),
            "P": packer.params_per_slot,
            "layout": packer.layout_id,
            "runs": list(self.runs),
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
            for key, attr in SAVED.items():
                getattr(packer, attr).copy_(t[key])
        torch.set_rng_state(t["rng_cpu"])
        if "rng_cuda" in t and packer.weights.device.type == "cuda":
            torch.cuda.set_rng_state(t["rng_cuda"], packer.weights.device)
