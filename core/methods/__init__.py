"""Fine-tuning methods behind one interface (see `base.Method`). A method decides how the base
model is loaded, which parameters train, and how to get the pristine base back for the next
point; the training loop, evaluation and storage are shared."""

from __future__ import annotations

from ..errors import ConfigError
from .adaptq import AdaptQ
from .base import Method
from .full import FullFineTune
from .lora import LoRA
from .qlora import QLoRA

REGISTRY: dict[str, type[Method]] = {
    "lora": LoRA,
    "qlora": QLoRA,
    "full": FullFineTune,
    "adaptq": AdaptQ,
}


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ConfigError(
            f"unknown method '{name}'; choose one of: {', '.join(REGISTRY)}"
        ) from None


__all__ = ["Method", "get_method", "REGISTRY"]
