"""A run spec is plain data: one flat dataclass, validated once by `validate()`.

Every field carries its help text in `metadata["help"]`; the CLI and the app's form read it from
here, so the wording lives in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

METHODS = ("lora", "qlora", "full", "adaptq")
SELECTIONS = ("activation", "random", "first-k", "last-k")
QUANT_ORDERS = ("quantize-first", "adapt-first")
FROZEN_BITS = (4, 8, 16)
BACKENDS = ("local", "ray")
PRECISIONS = ("fp32", "tf32", "bf16")
CONSTRUCTIONS = ("varied", "paper")
PROBES = ("general-200", "paper-8")
TARGET_PRESETS = ("all-linear", "attention")
DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_SCALE = 1_000_000
MAX_SCALES = 64


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class RunSpec:
    name: str = _f("", "A label for the run (free text, shown in tables).")
    model: str = _f(
        "smollm2-135m",
        "Model: 'smollm2-135m' (embedded), 'tiny' (random, for tests), a local directory, "
        "or a Hugging Face id already in the local cache.",
    )
    method: str = _f("lora", "How the model is fine-tuned.", choices=METHODS)
    domain: str = _f("legal", "Training domain (a file under data/domains/ or an uploaded one).")
    construction: str = _f(
        "varied",
        "How domain samples are built: 'varied' (slot-filled templates) or 'paper' "
        "(Martz 2025: prefix + lowercased base sentence, rotated).",
        choices=CONSTRUCTIONS,
    )
    scales: tuple[int, ...] = _f((50, 100, 150, 250, 500), "Dataset sizes to sweep (samples).")
    seeds: tuple[int, ...] = _f((42,), "Random seeds; each scale is trained once per seed.")
    epochs: int = _f(3, "Passes over each scale's data.")
    learning_rate: float = _f(5e-5, "AdamW learning rate (constant).")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    batch_size: int = _f(1, "Samples per optimizer step (Martz 2025 uses 1).")
    max_length: int = _f(512, "Tokens per sample after truncation.")
    grad_clip: float = _f(0.0, "Clip the gradient norm to this value; 0 turns clipping off.")
    lora_rank: int = _f(8, "LoRA rank r.")
    lora_alpha: float = _f(16.0, "LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = _f(0.1, "Dropout on the LoRA input.")
    target_modules: str = _f(
        "all-linear",
        "'all-linear', 'attention', or a comma list of module names (e.g. q_proj,v_proj).",
    )
    warmup_ratio: float = _f(
        0.0,
        "Fraction of a point's steps with a linear learning-rate warm-up (ADAPT-Q paper: 0.1); "
        "constant afterwards.",
    )
    replay: float = _f(
        0.0,
        "Mitigation (Johnson 2025): general-text sentences mixed into training, as a fraction of the "
        "domain samples (0.1 adds one general sentence per ten domain ones). Never the probe.",
    )
    adaptq_fraction: float = _f(
        0.5, "ADAPT-Q: fraction of transformer blocks trained full-rank (K = floor(fraction x L))."
    )
    adaptq_selection: str = _f(
        "activation",
        "ADAPT-Q: how blocks are chosen: 'activation' (mean |hidden| on domain samples, as in "
        "the ADAPT-Q paper), or the ablations 'random', 'first-k', 'last-k'.",
        choices=SELECTIONS,
    )
    adaptq_profile_samples: int = _f(
        64, "ADAPT-Q: domain samples used for activation profiling (ADAPT-Q paper: 50-100)."
    )
    frozen_bits: int = _f(
        4,
        "ADAPT-Q: precision of the frozen blocks: 4 (NF4), 8 (LLM.int8) or 16 (fp16/bf16). "
        "2-bit is not offered: bitsandbytes has no 2-bit layers.",
        choices=FROZEN_BITS,
    )
    quant_order: str = _f(
        "quantize-first",
        "qlora and adaptq: 'quantize-first' trains against the quantized frozen weights; "
        "'adapt-first' trains against full precision and quantizes them before measuring "
        "(the ADAPT-Q paper's order check).",
        choices=QUANT_ORDERS,
    )
    smoke_every: int = _f(
        0,
        "In-training smoke test (Johnson 2025) every N optimizer steps and at the end of each epoch; "
        "0 turns it off.",
    )
    smoke_stop: bool = _f(
        False,
        "Stop a point early when the in-training smoke test finds zero tokens or a degenerate "
        "answer (status 'stopped').",
    )
    spectral: bool = _f(
        True,
        "Spectral analysis of every adapted weight (Rathore et al. 2025): ||dW||_F, effective rank, cosine "
        "of top singular vectors. Exact SVDs; adds seconds per point.",
    )
    spectral_topk: int = _f(16, "Singular vectors compared per matrix in the spectral analysis.")
    probe: str = _f(
        "general-200",
        "General-knowledge probe: 'general-200' (broad, own-written) or 'paper-8' (Martz 2025's eight facts).",
        choices=PROBES,
    )
    probe_items: int = _f(
        0,
        "General-probe statements measured: 0 = all of them; N = a fixed subset of N spread evenly "
        "over the probe (the same statements before and after, at every size). Fewer statements "
        "measure faster and less precisely.",
    )
    domain_eval_size: int = _f(50, "Held-out domain sentences used for domain perplexity.")
    eval_all_domains: bool = _f(
        True, "Also evaluate every other domain's held-out split (feeds the cross-domain matrix)."
    )
    mc_eval: bool = _f(
        True,
        "Also score the 108 own-written four-option general-knowledge questions before and after "
        "(multiple-choice accuracy, a second forgetting metric).",
    )
    mc_items: int = _f(
        0,
        "Multiple-choice questions scored: 0 = all 108; N = a fixed subset of N spread evenly over "
        "the set.",
    )
    eval_batch_size: int = _f(16, "Sentences per forward pass during evaluation.")
    smoke_max_new_tokens: int = _f(20, "Tokens generated per smoke-test prompt.")
    save_adapters: bool = _f(True, "Save each point's adapter (needed by the Smoke test page).")
    trainer: str = _f(
        "auto",
        "'packed': LoRA runs of a sweep share each forward/backward (exact batch-size-1 semantics; "
        "much faster on a GPU: README, Speed); 'sequential': one run after another "
        "(the reference loop, faster on CPU); 'auto': packed on CUDA, sequential elsewhere.",
        choices=("auto", "packed", "sequential"),
    )
    pack_slots: int = _f(8, "How many runs the packed trainer advances together.")
    precision: str = _f(
        "fp32",
        "Arithmetic of the training steps: 'fp32' (faithful to Martz 2025), 'tf32' (fp32 weights, "
        "TensorFloat-32 matrix products on NVIDIA GPUs: faster per packed step, measured in "
        "README, Speed; no effect on a CPU), 'bf16' (autocast; adapters and optimizer state stay "
        "fp32). Evaluation always runs in fp32, so every setting is measured the same way.",
        choices=PRECISIONS,
    )
    compile_step: bool = _f(
        True,
        "torch.compile the packed trainer's step on CUDA (fused kernels: faster per step after "
        "some seconds of compiling per sweep; measured in README, Speed). Same "
        "arithmetic up to rounding. Ignored on CPU and by the sequential loop.",
    )
    device: str = _f(
        "auto", "Device: auto (cuda, then mps, then cpu), cpu, cuda or mps.", choices=DEVICES
    )
    backend: str = _f(
        "local",
        "'local': this machine, one process; 'ray': work units scheduled on a Ray cluster "
        "(pip install '.[distributed]'), results written by one process here.",
        choices=BACKENDS,
    )
    ray_address: str = _f(
        "",
        "Ray cluster to join (e.g. ray://head:10001 or auto); empty: $RAY_ADDRESS, else a local "
        "Ray is started.",
    )
    ray_units: int = _f(
        0,
        "Work units the sweep is split into; 0: as many as can run at once on the cluster.",
    )
    ray_gpus_per_unit: float = _f(
        1.0, "GPUs each work unit reserves when the cluster has GPUs (0.5: two units per GPU)."
    )

    # -- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        d["seeds"] = list(self.seeds)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return validate(cls(**d))

    def points(self) -> list[tuple[int, int]]:
        """(scale, seed) pairs in execution order: small scales first, so curves fill left to right."""
        return [(s, seed) for s in self.scales for seed in self.seeds]


def field_help(name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(RunSpec) if f.name == name)


def field_choices(name: str) -> tuple[str, ...] | None:
    return next(f.metadata.get("choices") for f in fields(RunSpec) if f.name == name)


PRESETS: dict[str, dict[str, Any]] = {
    # The Martz 2025 protocol, exactly: fresh adapter per scale, bs 1, constant lr, 3 epochs.
    "paper-000": dict(
        name="paper-000",
        construction="paper",
        scales=(50, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000),
        seeds=(42,),
        epochs=3,
        learning_rate=5e-5,
        weight_decay=0.01,
        batch_size=1,
        max_length=512,
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=0.1,
        target_modules="all-linear",
        probe="paper-8",
        domain_eval_size=50,
    ),
    # The embedded model's first curve on two CPU cores in about two minutes (measured: see
    # README). It trades fidelity for speed: one epoch, 4 samples per optimizer step with a 40x
    # larger learning rate (2e-3; a CPU trains 4 rows in about the time of 2), 48-token samples,
    # sizes 4-64 (the sizes set the wait), no spectral analysis (about 6 s per point), and half
    # of the general probe (100 of 213 statements, spread over every topic) and of the
    # multiple-choice set (54 of 108): each half costs ~2.5 s per measurement, seven a run.
    "quick-cpu": dict(
        name="quick-cpu",
        model="smollm2-135m",
        scales=(4, 8, 16, 32, 64),
        seeds=(42,),
        epochs=1,
        batch_size=4,
        learning_rate=2e-3,
        max_length=48,
        probe="general-200",
        domain_eval_size=24,
        eval_all_domains=False,
        eval_batch_size=32,
        smoke_max_new_tokens=12,
        spectral=False,
        probe_items=100,
        mc_items=54,
    ),
    # A random two-layer model: the whole sweep takes seconds; used by the tests.
    "tiny-test": dict(
        name="tiny-test",
        model="tiny",
        scales=(4, 8, 16),
        seeds=(0,),
        epochs=1,
        learning_rate=5e-3,
        max_length=32,
        probe="paper-8",
        domain_eval_size=8,
        eval_batch_size=8,
        smoke_max_new_tokens=6,
        device="cpu",
    ),
}


# ADAPT-Q (Martz 2025) on the Martz 2025 protocol: half the blocks full-rank, the rest NF4,
# warm-up 10 %, gradient clip 1.0, scales up to 500.
PRESETS["adaptq-001"] = {
    **PRESETS["paper-000"],
    "name": "adaptq-001",
    "method": "adaptq",
    "scales": (50, 100, 150, 250, 500),
    "warmup_ratio": 0.1,
    "grad_clip": 1.0,
    "adaptq_fraction": 0.5,
    "adaptq_selection": "activation",
    "frozen_bits": 4,
}


# FAST MODE, not the Martz 2025 protocol: each run takes 8 samples per optimizer step (the packed
# trainer gives every run its own 8 rows), so the 50K run needs 18,750 sequential steps instead
# of 150,000; the learning rate is scaled by sqrt(8) (the usual rule for Adam). Curves from it
# answer "where does forgetting start" faster, but they are not the paper's numbers.
PRESETS["fast-000"] = {
    **PRESETS["paper-000"],
    "name": "fast-000 (batch 8, not the Martz 2025 protocol)",
    "batch_size": 8,
    "learning_rate": round(5e-5 * 8**0.5, 8),
}


# What a run name mentions when a setting differs from its preset, in this order.
_NAMED_CHANGES = (
    ("model", lambda v: str(v).rstrip("/").rsplit("/", 1)[-1]),
    ("method", str),
    ("lora_rank", lambda v: f"r{v}"),
    ("domain", str),
    ("scales", lambda v: f"{v[0]:,}–{v[-1]:,}" if len(v) > 1 else f"{v[0]:,}"),
    ("seeds", lambda v: f"{len(v)} seeds" if len(v) > 1 else f"seed {v[0]}"),
    ("epochs", lambda v: f"{v} ep"),
    ("learning_rate", lambda v: f"lr {v:g}"),
    ("batch_size", lambda v: f"bs {v}"),
    ("replay", lambda v: f"replay {v:g}"),
    ("precision", str),
    ("target_modules", str),
    ("probe_items", lambda v: f"probe {v}" if v else "whole probe"),
)


def run_name(preset_name: str, spec: RunSpec) -> str:
    """A name that says how a run differs from its preset, e.g. 'quick-cpu · r16 · medical'."""
    base = preset(preset_name)
    parts = [preset_name]
    for name, fmt in _NAMED_CHANGES:
        if getattr(spec, name) != getattr(base, name):
            parts.append(fmt(getattr(spec, name)))
    return " · ".join(parts)[:200]


def preset(preset_name: str, /, **overrides: Any) -> RunSpec:
    if preset_name not in PRESETS:
        raise ConfigError(f"unknown preset '{preset_name}'; choose one of: {', '.join(PRESETS)}")
    values = {**PRESETS[preset_name], **{k: v for k, v in overrides.items() if v is not None}}
    return RunSpec.from_dict(values)


# -- parsing helpers shared by the CLI and the app ----------------------------------------------
def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """'50,100, 1e3' -> (50, 100, 1000). Rejects non-integers with a message naming the item."""
    items = [t.strip() for t in str(text).replace(";", ",").split(",")]
    if not any(items):
        raise ConfigError(f"{what}: give at least one number, e.g. 50,100,150")
    out = []
    for t in items:
        if not t:
            raise ConfigError(f"{what}: empty item in '{text}'")
        try:
            v = float(t.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{what}: '{t}' is not a number") from None
        if not math.isfinite(v) or v != int(v):
            raise ConfigError(f"{what}: '{t}' is not a whole number")
        out.append(int(v))
    return tuple(out)


def validate(spec: RunSpec) -> RunSpec:
    """Check every field once; return a normalised spec (sorted scales) or raise ConfigError
    listing every problem found."""
    problems: list[str] = []

    def bad(msg: str) -> None:
        problems.append(msg)

    def as_ints(name: str, value: Any) -> tuple[int, ...]:
        if isinstance(value, str):
            return parse_int_list(value, name)
        try:
            vals = tuple(value)
        except TypeError:
            raise ConfigError(f"{name}: expected a list of whole numbers, got {value!r}") from None
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
                raise ConfigError(f"{name}: {v!r} is not a whole number")
        return tuple(int(v) for v in vals)

    try:
        scales = as_ints("scales", spec.scales)
    except ConfigError as e:
        bad(str(e))
        scales = ()
    try:
        seeds = as_ints("seeds", spec.seeds)
    except ConfigError as e:
        bad(str(e))
        seeds = ()

    if not scales and not problems:
        bad("scales: give at least one dataset size")
    for s in scales:
        if s <= 0:
            bad(f"scales: {s} is not a positive dataset size")
        elif s > MAX_SCALE:
            bad(f"scales: {s} is larger than the supported maximum {MAX_SCALE:,}")
    dups = sorted({s for s in scales if scales.count(s) > 1})
    if dups:
        bad(f"scales: {', '.join(map(str, dups))} appear(s) more than once")
    if len(scales) > MAX_SCALES:
        bad(f"scales: at most {MAX_SCALES} dataset sizes per run, got {len(scales)}")
    if not seeds and not any(p.startswith("seeds") for p in problems):
        bad("seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        bad("seeds: a seed appears more than once")
    for s in seeds:
        if s < 0 or s >= 2**32:
            bad(f"seeds: {s} must be between 0 and 2**32-1")

    def int_in_range(name: str, lo: int = 1, hi: int = 10**7) -> None:
        v = getattr(spec, name)
        if isinstance(v, bool) or not isinstance(v, int):
            bad(f"{name}: expected a whole number, got {v!r}")
        elif not lo <= v <= hi:
            bad(f"{name}: {v} is outside {lo}..{hi:,}")

    def real(name: str, lo: float, hi: float, lo_open: bool = False) -> None:
        v = getattr(spec, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad(f"{name}: expected a number, got {v!r}")
        elif v < lo or v > hi or (lo_open and v == lo):
            bad(f"{name}: {v} is outside {'(' if lo_open else '['}{lo}, {hi}]")

    int_in_range("epochs", 1, 1000)
    int_in_range("batch_size", 1, 4096)
    int_in_range("max_length", 8, 32768)
    int_in_range("lora_rank", 1, 4096)
    int_in_range("domain_eval_size", 1, 100_000)
    int_in_range("probe_items", 0, 100_000)
    int_in_range("mc_items", 0, 100_000)
    int_in_range("eval_batch_size", 1, 4096)
    int_in_range("smoke_max_new_tokens", 1, 512)
    int_in_range("pack_slots", 1, 1024)
    int_in_range("adaptq_profile_samples", 1, 10_000)
    int_in_range("smoke_every", 0, 10**7)
    int_in_range("spectral_topk", 1, 4096)
    int_in_range("ray_units", 0, 100_000)
    real("ray_gpus_per_unit", 0.0, 64.0, lo_open=True)
    if not isinstance(spec.ray_address, str) or any(ord(c) < 32 for c in spec.ray_address):
        bad("ray_address: give an address such as ray://head:10001, or leave it empty")
    real("warmup_ratio", 0.0, 0.9)
    real("replay", 0.0, 10.0)
    real("adaptq_fraction", 0.0, 1.0, lo_open=True)
    if spec.frozen_bits not in FROZEN_BITS or isinstance(spec.frozen_bits, bool):
        bad(
            f"frozen_bits: {spec.frozen_bits!r} is not offered; choose 4, 8 or 16 "
            "(bitsandbytes has no 2-bit layers)"
        )
    real("learning_rate", 0.0, 1.0, lo_open=True)
    real("weight_decay", 0.0, 1.0)
    real("grad_clip", 0.0, 1e6)
    real("lora_alpha", 0.0, 1e6, lo_open=True)
    real("lora_dropout", 0.0, 0.95)

    for name, allowed in (
        ("method", METHODS),
        ("construction", CONSTRUCTIONS),
        ("probe", PROBES),
        ("device", DEVICES),
        ("trainer", ("auto", "packed", "sequential")),
        ("adaptq_selection", SELECTIONS),
        ("quant_order", QUANT_ORDERS),
        ("backend", BACKENDS),
        ("precision", PRECISIONS),
    ):
        if getattr(spec, name) not in allowed:
            bad(
                f"{name}: unknown value '{getattr(spec, name)}'; choose one of: {', '.join(allowed)}"
            )

    if not isinstance(spec.model, str) or not spec.model.strip():
        bad("model: give a model name, directory or Hugging Face id")
    elif any(ord(c) < 32 for c in spec.model):
        bad("model: the name contains control characters")
    if not isinstance(spec.domain, str) or not spec.domain.strip():
        bad("domain: give a domain name")
    tm = str(spec.target_modules).strip()
    if tm not in TARGET_PRESETS:
        names = [t.strip() for t in tm.split(",")]
        if not tm or not all(n.replace("_", "").replace(".", "").isalnum() for n in names):
            bad(
                f"target_modules: '{tm}' is not 'all-linear', 'attention' or a comma list of "
                "module names"
            )
    if not isinstance(spec.name, str) or len(spec.name) > 200:
        bad("name: at most 200 characters")

    if problems:
        raise ConfigError("; ".join(problems))
    return dataclasses.replace(
        spec,
        scales=tuple(sorted(scales)),
        seeds=seeds,
        model=spec.model.strip(),
        domain=spec.domain.strip(),
        target_modules=tm,
        learning_rate=float(spec.learning_rate),
        weight_decay=float(spec.weight_decay),
        grad_clip=float(spec.grad_clip),
        lora_alpha=float(spec.lora_alpha),
        lora_dropout=float(spec.lora_dropout),
        warmup_ratio=float(spec.warmup_ratio),
        replay=float(spec.replay),
        adaptq_fraction=float(spec.adaptq_fraction),
        ray_gpus_per_unit=float(spec.ray_gpus_per_unit),
        ray_address=spec.ray_address.strip(),
    )


def rank_series(spec: RunSpec, ranks: tuple[int, ...], alpha_2r: bool = False) -> list[RunSpec]:
    """One spec per LoRA rank (a rank sweep); `alpha_2r` sets alpha = 2 x rank (Rathore et al. 2025)."""
    if not ranks:
        raise ConfigError("rank: give at least one rank")
    if len(set(ranks)) != len(ranks):
        raise ConfigError("rank: a rank appears more than once")
    return [
        validate(
            dataclasses.replace(
                spec,
                lora_rank=r,
                lora_alpha=2.0 * r if alpha_2r else spec.lora_alpha,
                name=f"{spec.name} r{r}".strip() if len(ranks) > 1 else spec.name,
            )
        )
        for r in ranks
    ]
