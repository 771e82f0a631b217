"""Interactive smoke tests: the base model and a point's saved adapter answer the same prompt.
One model in memory serves both: peft's `disable_adapter()` gives the base's answer."""

from __future__ import annotations

import contextlib
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .engine import adapter_abspath
from .errors import DataError, LabError
from .evaluate import verdict
from .models import load_model

MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 256
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class StoredCheck:
    """The smoke test stored with a point (its fixed prompts, answered after training): None when
    it stored none, else whether every answer passed and why the others failed."""

    passed: bool | None
    prompts: int = 0
    failures: tuple[str, ...] = ()

    def sentence(self) -> str:
        if self.passed is None:
            return "No smoke-test answers were stored with this point."
        if self.passed:
            return (
                f"The smoke test stored with this point passed: {self.prompts} prompt(s) answered."
            )
        return (
            f"The smoke test stored with this point failed {len(self.failures)} of "
            f"{self.prompts} prompt(s): " + "; ".join(self.failures)
        )


def stored_check(generations) -> StoredCheck:
    """`StoredCheck` of a point from its stored answers (`Store.generations_df(run, scale,
    seed)` rows; the base model's rows are left out)."""
    after = generations[generations["stage"] == "after"] if len(generations) else generations
    if len(after) == 0:
        return StoredCheck(None)
    bad = after[after["ok"] == False]  # noqa: E712  (NULL: an answer stored before verdicts)
    failures = tuple(
        f"'{str(r.prompt)[:30]}': {r.reason if isinstance(r.reason, str) and r.reason else 'failed'}"
        for r in bad.itertuples()
    )
    return StoredCheck(not failures, len(after), failures)


def clean_prompt(prompt: str) -> str:
    """Refuse prompts a model cannot sensibly take; return the trimmed prompt."""
    if prompt is None or not prompt.strip():
        raise DataError("type a prompt first")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DataError(
            f"the prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}"
        )
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in prompt):
        raise DataError("the prompt contains control characters")
    return prompt.strip()


def check_settings(max_new_tokens: int, temperature: float) -> None:
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise DataError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}")
    if not 0.0 <= float(temperature) <= MAX_TEMPERATURE:
        raise DataError(f"temperature must be between 0 and {MAX_TEMPERATURE}")


@dataclass
class StreamResult:
    text: str = ""
    new_tokens: int = 0
    ok: bool = False
    reasons: list[str] = field(default_factory=list)  # why the answer failed, empty when ok
    pieces: list[str] = field(default_factory=list)


class SmokeModel:
    """A base model with one point's adapter attached."""

    def __init__(self, model_name: str, adapter_rel: str | None, device: str = "cpu"):
        from peft import PeftModel

        lm = load_model(model_name, device)
        self.tokenizer = lm.tokenizer
        self.has_adapter = bool(adapter_rel)
        if adapter_rel:
            path = adapter_abspath(adapter_rel)
            if not path or not (path / "adapter_config.json").is_file():
                raise LabError(
                    "this point's adapter is missing on disk (deleted, or saved on another machine)"
                )
            self.model = PeftModel.from_pretrained(lm.model, str(path), is_trainable=False)
        else:
            self.model = lm.model
        self.model.eval()

    @classmethod
    def for_point(cls, run: dict, adapter_rel: str | None) -> SmokeModel:
        return cls(run["model"], adapter_rel, "cuda" if torch.cuda.is_available() else "cpu")

    def stream(
        self,
        prompt: str,
        adapted: bool,
        max_new_tokens: int = 40,
        temperature: float = 0.0,
        seed: int = 0,
        result: StreamResult | None = None,
    ) -> Iterator[str]:
        """Yield text as it is generated; fill `result` with the full text and token count."""
        from transformers import TextIteratorStreamer

        prompt = clean_prompt(prompt)
        check_settings(max_new_tokens, temperature)
        result = result if result is not None else StreamResult()
        tok = self.tokenizer
        enc = tok(prompt, return_tensors="pt").to(next(self.model.parameters()).device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kw = dict(
            do_sample=temperature > 0,
            max_new_tokens=int(max_new_tokens),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            streamer=streamer,
        )
        if temperature > 0:
            kw["temperature"] = float(temperature)
        out: dict = {}

        def work():
            ctx = (
                contextlib.nullcontext()
                if adapted or not self.has_adapter
                else self.model.disable_adapter()
            )
            with ctx, torch.no_grad():
                torch.manual_seed(seed)
                out["ids"] = self.model.generate(**enc, **kw)

        th = threading.Thread(target=work, daemon=True)
        th.start()
        for piece in streamer:
            result.pieces.append(piece)
            yield piece
        th.join()
        new = out["ids"][0, enc["input_ids"].shape[1] :].tolist()
        new = [t for t in new if t not in (tok.eos_token_id, tok.pad_token_id)]
        result.text = "".join(result.pieces)
        result.new_tokens = len(new)
        result.ok, result.reasons = verdict(result.text, len(new), prompt)
