"""A run spec is plain data: one flat dataclass, validated once by `validate()`.

Every field is declared with `setting(...)`, which puts everything known about it in the field's
metadata: its help text, the form label, its allowed values (`choices`) or its bounds (`lo`, `hi`,
`lo_open` when the lower bound itself is excluded). `validate()` checks every field against that
metadata; the CLI and the app's form read the same metadata, so each bound and wording lives in
one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import data
from .analysis import METRICS
from .errors import ConfigError

METHODS = ("lora", "qlora", "full", "adaptq")
SELECTIONS = ("activation", "random", "first-k", "last-k")
QUANT_ORDERS = ("quantize-first", "adapt-first")
FROZEN_BITS = (4, 8, 16)
BACKENDS = ("local", "ray")
PRECISIONS = ("fp32", "tf32", "bf16")
CONSTRUCTIONS = ("varied", "paper")
TARGET_PRESETS = ("all-linear", "attention")
DEVICES = ("auto", "cpu", "cuda", "mps")
TRAINERS = ("auto", "packed", "sequential")
MAX_SCALE = 1_000_000
MAX_SCALES = 64


def setting(
    default: Any,
    help: str,
    *,
    label: str = "",
    choices: tuple | None = None,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    **ui: Any,
) -> Any:
    """A RunSpec field with its help text, form label and allowed values in its metadata.

    `choices`: the only values allowed. `lo`/`hi`: inclusive bounds of a number (`lo_open`: `lo`
    itself is excluded, as for a learning rate). Further keywords are for the Launch form
    (`step`, `format`, `form_min`: the form's lowest value where `lo` is excluded) and for
    messages (`note`, appended to a refused choice) only.
    """
    meta = {
        "help": help,
        "label": label,
        "choices": choices,
        "lo": lo,
        "hi": hi,
        "lo_open": lo_open,
    }
    meta.update(ui)
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunSpec:
    name: str = setting("", "A label for the run (free text, shown in tables).", label="Name")
    model: str = setting(
        "smollm2-135m",
        "Model: 'smollm2-135m' (embedded), 'tiny' (random, for tests), a local directory, "
        "or a Hugging Face id already in the local cache.",
        label="Model",
    )
    method: str = setting("lora", "How the model is fine-tuned.", choices=METHODS, label="Method")
    domain: str = setting(
        "legal", "Training domain (a file under data/domains/ or an uploaded one).", label="Domain"
    )
    construction: str = setting(
        "varied",
        "How domain samples are built: 'varied' (slot-filled templates) or 'paper' "
        "(Martz 2025: prefix + lowercased base sentence, rotated).",
        choices=CONSTRUCTIONS,
        label="Sample construction",
    )
    scales: tuple[int, ...] = setting(
        (50, 100, 150, 250, 500),
        "Dataset sizes to sweep (samples).",
        label="Dataset sizes",
        lo=1,
        hi=MAX_SCALE,
    )
    seeds: tuple[int, ...] = setting(
        (42,),
        "Random seeds; each scale is trained once per seed.",
        label="Seeds",
        lo=0,
        hi=2**32 - 1,
    )
    epochs: int = setting(3, "Passes over each scale's data.", label="Epochs", lo=1, hi=1000)
    learning_rate: float = setting(
        5e-5,
        "AdamW learning rate (constant).",
        label="Learning rate",
        lo=0.0,
        hi=1.0,
        lo_open=True,
        step=1e-5,
        format="%.2e",
    )
    weight_decay: float = setting(0.01, "AdamW weight decay.", label="Weight decay", lo=0.0, hi=1.0)
    batch_size: int = setting(
        1, "Samples per optimizer step (Martz 2025 uses 1).", label="Batch size", lo=1, hi=4096
    )
    max_length: int = setting(
        512, "Tokens per sample after truncation.", label="Max length (tokens)", lo=8, hi=32768
    )
    grad_clip: float = setting(
        0.0,
        "Clip the gradient norm to this value; 0 turns clipping off.",
        label="Gradient clip",
        lo=0.0,
        hi=1e6,
    )
    lora_rank: int = setting(8, "LoRA rank r.", label="LoRA rank", lo=1, hi=4096)
    lora_alpha: float = setting(
        16.0, "LoRA alpha (scaling = alpha / r).", label="LoRA alpha", lo=0.0, hi=1e6, lo_open=True
    )
    lora_dropout: float = setting(
        0.1, "Dropout on the LoRA input.", label="LoRA dropout", lo=0.0, hi=0.95
    )
    target_modules: str = setting(
        "all-linear",
        "'all-linear', 'attention', or a comma list of module names (e.g. q_proj,v_proj).",
        label="Target modules",
    )
    warmup_ratio: float = setting(
        0.0,
        "Fraction of a point's steps with a linear learning-rate warm-up (ADAPT-Q paper: 0.1); "
        "constant afterwards.",
        label="Warm-up fraction",
        lo=0.0,
        hi=0.9,
        step=0.05,
    )
    replay: float = setting(
        0.0,
        "Mitigation (Johnson 2025): general-text sentences mixed into training, as a fraction of the "
        "domain samples (0.1 adds one general sentence per ten domain ones). Never the probe.",
        label="Replay fraction",
        lo=0.0,
        hi=10.0,
        step=0.05,
    )
    adaptq_fraction: float = setting(
        0.5,
        "ADAPT-Q: fraction of transformer blocks trained full-rank (K = floor(fraction x L)).",
        label="Fraction of blocks",
        lo=0.0,
        hi=1.0,
        lo_open=True,
    )
    adaptq_selection: str = setting(
        "activation",
        "ADAPT-Q: how blocks are chosen: 'activation' (mean |hidden| on domain samples, as in "
        "the ADAPT-Q paper), or the ablations 'random', 'first-k', 'last-k'.",
        choices=SELECTIONS,
        label="Block selection",
    )
    adaptq_profile_samples: int = setting(
        64,
        "ADAPT-Q: domain samples used for activation profiling (ADAPT-Q paper: 50-100).",
        label="Profiling samples",
        lo=1,
        hi=10_000,
    )
    frozen_bits: int = setting(
        4,
        "ADAPT-Q: precision of the frozen blocks: 4 (NF4), 8 (LLM.int8) or 16 (fp16/bf16). "
        "2-bit is not offered: bitsandbytes has no 2-bit layers.",
        choices=FROZEN_BITS,
        label="Frozen blocks",
        note="bitsandbytes has no 2-bit layers",
    )
    quant_order: str = setting(
        "quantize-first",
        "qlora and adaptq: 'quantize-first' trains against the quantized frozen weights; "
        "'adapt-first' trains against full precision and quantizes them before measuring "
        "(the ADAPT-Q paper's order check).",
        choices=QUANT_ORDERS,
        label="Order",
    )
    smoke_every: int = setting(
        0,
        "In-training smoke test (Johnson 2025) every N optimizer steps and at the end of each epoch; "
        "0 turns it off.",
        label="Smoke test every N steps",
        lo=0,
        hi=10**7,
    )
    smoke_stop: bool = setting(
        False,
        "Stop a point early when the in-training smoke test finds zero tokens or a degenerate "
        "answer (status 'stopped').",
        label="Stop a point on a silent failure",
    )
    spectral: bool = setting(
        True,
        "Spectral analysis of every adapted weight (Rathore et al. 2025): ||dW||_F, effective rank, cosine "
        "of top singular vectors. Exact SVDs; adds seconds per point.",
        label="Spectral analysis of ΔW",
    )
    spectral_topk: int = setting(
        16,
        "Singular vectors compared per matrix in the spectral analysis.",
        label="Singular vectors compared",
        lo=1,
        hi=4096,
    )
    intruder_k: int = setting(
        10,
        "Intruder dimensions (Shuttleworth et al. 2024, LoRA vs full fine-tuning: an illusion of "
        "equivalence): how many of each adapted matrix's k leading singular vectors after "
        "training are counted when they have no close match (|cosine| below the similarity "
        "threshold) among the base matrix's singular vectors; the point stores the sum over "
        "matrices. Default 10, as in the authors' published code; 0 turns the count off. Needs "
        "the spectral analysis; keeps every base singular vector in memory during a run.",
        label="Intruder dimensions: leading vectors k",
        lo=0,
        hi=4096,
    )
    intruder_eps: float = setting(
        0.5,
        "Intruder dimensions: a leading singular vector after training is an intruder when its "
        "largest |cosine| with any singular vector of the base is below this threshold "
        "(epsilon). Default 0.5, as in the authors' published code.",
        label="Intruder dimensions: similarity threshold",
        lo=0.0,
        hi=1.0,
        lo_open=True,
        step=0.05,
        form_min=0.01,
    )
    headline_metric: str = setting(
        "degradation_pct",
        "The forgetting measure a run's headline (threshold, phases, report) uses by default: "
        "'degradation_pct' (token-weighted perplexity change), 'degradation_stmt_pct' (mean of "
        "per-statement perplexities, Martz 2025's aggregation: the paper-000 preset), "
        "'general_ce_delta' or 'kl_to_base'. Every measure stays selectable; a run without "
        "values of this one falls back to the token-weighted change.",
        choices=tuple(METRICS),
        label="Headline forgetting measure",
    )
    probe: str = setting(
        "general",
        f"General-knowledge probe: 'general' ({len(data.load_probe('general'))} broad, own-written "
        "statements over six topics; runs stored before it was renamed call it 'general-200') or "
        "'paper-8' (Martz 2025's eight facts).",
        choices=tuple(data.list_probes()),
        label="General probe",
    )
    probe_items: int = setting(
        0,
        "General-probe statements measured: 0 = all of them; N = a fixed subset of N spread evenly "
        "over the probe (the same statements before and after, at every size). Fewer statements "
        "measure faster and less precisely.",
        label="Probe statements",
        lo=0,
        hi=100_000,
    )
    domain_eval_size: int = setting(
        50,
        "Held-out domain sentences used for domain perplexity.",
        label="Domain evaluation sentences",
        lo=1,
        hi=100_000,
    )
    eval_all_domains: bool = setting(
        True,
        "Also evaluate every other domain's held-out split (feeds the cross-domain matrix).",
        label="Evaluate every domain",
    )
    mc_eval: bool = setting(
        True,
        f"Also score the {len(data.load_mc())} own-written four-option general-knowledge questions "
        "before and after (multiple-choice accuracy, a second forgetting metric).",
        label="Multiple-choice questions",
    )
    mc_items: int = setting(
        0,
        f"Multiple-choice questions scored: 0 = all {len(data.load_mc())}; N = a fixed subset of N "
        "spread evenly over the set.",
        label="Multiple-choice items",
        lo=0,
        hi=100_000,
    )
    eval_batch_size: int = setting(
        16,
        "Sentences per forward pass during evaluation.",
        label="Evaluation batch size",
        lo=1,
        hi=4096,
    )
    smoke_max_new_tokens: int = setting(
        20, "Tokens generated per smoke-test prompt.", label="Smoke-test tokens", lo=1, hi=512
    )
    save_adapters: bool = setting(
        True, "Save each point's adapter (needed by the Smoke test page).", label="Save adapters"
    )
    trainer: str = setting(
        "auto",
        "'packed': LoRA runs of a sweep share each forward/backward (exact batch-size-1 semantics; "
        "much faster on a GPU: README, Speed); 'sequential': one run after another "
        "(the reference loop, faster on CPU); 'auto': packed on CUDA, sequential elsewhere.",
        choices=TRAINERS,
        label="Trainer",
    )
    pack_slots: int = setting(
        8, "How many runs the packed trainer advances together.", label="Packed runs", lo=1, hi=1024
    )
    precision: str = setting(
        "fp32",
        "Arithmetic of the training steps: 'fp32' (faithful to Martz 2025), 'tf32' (fp32 weights, "
        "TensorFloat-32 matrix products on NVIDIA GPUs: faster per packed step, measured in "
        "README, Speed; no effect on a CPU), 'bf16' (autocast; adapters and optimizer state stay "
        "fp32). Evaluation always runs in fp32, so every setting is measured the same way.",
        choices=PRECISIONS,
        label="Training arithmetic",
    )
    compile_step: bool = setting(
        True,
        "torch.compile the packed trainer's step on CUDA (fused kernels: faster per step after "
        "some seconds of compiling per sweep; measured in README, Speed). Same "
        "arithmetic up to rounding. Ignored on CPU and by the sequential loop.",
        label="Compile the packed training step (CUDA)",
    )
    device: str = setting(
        "auto",
        "Device: auto (cuda, then mps, then cpu), cpu, cuda or mps.",
        choices=DEVICES,
        label="Device",
    )
    backend: str = setting(
        "local",
        "'local': this machine, one process; 'ray': work units scheduled on a Ray cluster "
        "(pip install '.[distributed]'), results written by one process here.",
        choices=BACKENDS,
        label="Backend",
    )
    ray_address: str = setting(
        "",
        "Ray cluster to join (e.g. ray://head:10001 or auto); empty: $RAY_ADDRESS, else a local "
        "Ray is started.",
        label="Ray address",
    )
    ray_units: int = setting(
        0,
        "Work units the sweep is split into; 0: as many as can run at once on the cluster.",
        label="Ray work units",
        lo=0,
        hi=100_000,
    )
    ray_gpus_per_unit: float = setting(
        1.0,
        "GPUs each work unit reserves when the cluster has GPUs (0.5: two units per GPU).",
        label="GPUs per Ray work unit",
        lo=0.0,
        hi=64.0,
        lo_open=True,
        step=0.25,
        form_min=0.05,
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


# Every setting's dataclass field by name: its metadata holds help, label, choices and bounds.
SETTINGS: dict[str, dataclasses.Field] = {f.name: f for f in fields(RunSpec)}


def field_help(name: str) -> str:
    return SETTINGS[name].metadata["help"]


def field_choices(name: str) -> tuple | None:
    return SETTINGS[name].metadata["choices"]


def field_labels() -> dict[str, str]:
    """The form's label of each setting, so a message can name the field the user sees."""
    return {name: f.metadata["label"] for name, f in SETTINGS.items() if f.metadata["label"]}


# Presets are data: one TOML file per preset under data/presets/ (its comments say what it trades).
# The file's name is the preset's name; `based_on = "other"` starts from another preset's values.
PRESET_DIR = data.DATA_DIR / "presets"


def load_presets(directory: Path = PRESET_DIR) -> dict[str, dict[str, Any]]:
    """Every preset's settings by name (lists as tuples, as in a RunSpec), sorted by name."""
    raw = {p.stem: tomllib.loads(p.read_text("utf-8")) for p in sorted(directory.glob("*.toml"))}

    def resolve(key: str, seen: tuple[str, ...]) -> dict[str, Any]:
        values = dict(raw[key])
        parent = values.pop("based_on", None)
        if parent is None:
            return values
        if parent not in raw or parent in seen:
            raise ConfigError(f"preset '{key}': based_on '{parent}' is not another preset")
        return {**resolve(parent, (*seen, key)), **values}

    return {
        key: {k: tuple(v) if isinstance(v, list) else v for k, v in resolve(key, ()).items()}
        for key in raw
    }


PRESETS: dict[str, dict[str, Any]] = load_presets()


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


# The settings that make a run follow the Martz 2025 protocol as the paper-000 preset fixes it
# (training and general probe); sizes, seeds, domain, precision and evaluation extras may differ.
PAPER_PROTOCOL = (
    "construction",
    "method",
    "epochs",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "max_length",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "warmup_ratio",
    "grad_clip",
    "replay",
    "probe",
)


def follows_paper_protocol(spec: RunSpec) -> bool:
    """Whether `spec` trains and probes as the paper-000 preset does (`PAPER_PROTOCOL`)."""
    base = preset("paper-000")
    return all(getattr(spec, k) == getattr(base, k) for k in PAPER_PROTOCOL)


def headline_measure(spec: RunSpec | None) -> str:
    """The forgetting measure a run's headline uses by default (the Threshold, Phases and Runs
    pages' select, `analyze`): its `headline_metric` setting when that names another measure
    than the token-weighted change; Martz 2025's per-statement aggregation for a run that follows
    the paper-000 protocol (`follows_paper_protocol`: also runs stored before the setting
    existed, e.g. the shipped reference sets); else the token-weighted change. No settings
    (a reference run recorded without them): the token-weighted change."""
    if spec is None:
        return "degradation_pct"
    if spec.headline_metric != "degradation_pct":
        return spec.headline_metric
    return "degradation_stmt_pct" if follows_paper_protocol(spec) else "degradation_pct"


# -- parsing helpers shared by the CLI and the app ----------------------------------------------
def _numbers(text: str, what: str, example: str) -> list[tuple[str, float]]:
    """'50, 1e3' -> [('50', 50.0), ('1e3', 1000.0)]: each item with its value, or a message
    naming the item that is not a number."""
    items = [t.strip() for t in str(text).replace(";", ",").split(",")]
    if not any(items):
        raise ConfigError(f"{what}: give at least one number, e.g. {example}")
    out = []
    for t in items:
        if not t:
            raise ConfigError(f"{what}: empty item in '{text}'")
        try:
            out.append((t, float(t.replace("_", ""))))
        except ValueError:
            raise ConfigError(f"{what}: '{t}' is not a number") from None
    return out


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """'50,100, 1e3' -> (50, 100, 1000). Rejects non-integers with a message naming the item."""
    out = []
    for t, v in _numbers(text, what, "50,100,150"):
        if not math.isfinite(v) or v != int(v):
            raise ConfigError(f"{what}: '{t}' is not a whole number")
        out.append(int(v))
    return tuple(out)


def _int_list(name: str, value: Any) -> tuple[int, ...]:
    """A list setting (scales, seeds) as whole numbers; text is parsed as '50, 100'."""
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


def _list_problems(name: str, vals: tuple[int, ...]) -> list[str]:
    """What is wrong with the dataset sizes or the seeds (bounds from the field's metadata)."""
    lo, hi = SETTINGS[name].metadata["lo"], SETTINGS[name].metadata["hi"]
    if name == "seeds":
        bad = [f"seeds: {s} must be between {lo} and 2**32-1" for s in vals if not lo <= s <= hi]
        if not vals:
            return ["seeds: give at least one seed"]
        return bad + (
            ["seeds: a seed appears more than once"] if len(set(vals)) < len(vals) else []
        )
    if not vals:
        return ["scales: give at least one dataset size"]
    bad = [
        f"scales: {s} is not a positive dataset size"
        if s < lo
        else f"scales: {s} is larger than the supported maximum {hi:,}"
        for s in vals
        if not lo <= s <= hi
    ]
    dups = sorted({s for s in vals if vals.count(s) > 1})
    if dups:
        bad.append(f"scales: {', '.join(map(str, dups))} appear(s) more than once")
    if len(vals) > MAX_SCALES:
        bad.append(f"scales: at most {MAX_SCALES} dataset sizes per run, got {len(vals)}")
    return bad


def _field_problem(f: dataclasses.Field, v: Any) -> str | None:
    """Check one value against its field's type, choices and bounds; None when it is fine."""
    m, name = f.metadata, f.name
    if m["choices"] is not None:
        if isinstance(v, bool) or v not in m["choices"]:
            note = f" ({m['note']})" if m.get("note") else ""
            allowed = ", ".join(map(str, m["choices"]))
            return f"{name}: unknown value '{v}'; choose one of: {allowed}{note}"
    elif f.type == "bool":
        if not isinstance(v, bool):
            return f"{name}: expected true or false, got {v!r}"
    elif f.type == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{name}: expected a whole number, got {v!r}"
        if not m["lo"] <= v <= m["hi"]:
            return f"{name}: {v} is outside {m['lo']}..{m['hi']:,}"
    elif f.type == "float":
        lo, hi, lo_open = m["lo"], m["hi"], m["lo_open"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{name}: expected a number, got {v!r}"
        if v < lo or v > hi or (lo_open and v == lo):
            return f"{name}: {v} is outside {'(' if lo_open else '['}{lo}, {hi}]"
    return None


def _text_problems(spec: RunSpec) -> list[str]:
    """The free-text settings: what each must look like."""
    bad = []
    if not isinstance(spec.model, str) or not spec.model.strip():
        bad.append("model: give a model name, directory or Hugging Face id")
    elif any(ord(c) < 32 for c in spec.model):
        bad.append("model: the name contains control characters")
    if not isinstance(spec.domain, str) or not spec.domain.strip():
        bad.append("domain: give a domain name")
    tm = str(spec.target_modules).strip()
    names = [t.strip() for t in tm.split(",")]
    if tm not in TARGET_PRESETS and (
        not tm or not all(n.replace("_", "").replace(".", "").isalnum() for n in names)
    ):
        bad.append(
            f"target_modules: '{tm}' is not 'all-linear', 'attention' or a comma list of "
            "module names"
        )
    if not isinstance(spec.ray_address, str) or any(ord(c) < 32 for c in spec.ray_address):
        bad.append("ray_address: give an address such as ray://head:10001, or leave it empty")
    if not isinstance(spec.name, str) or len(spec.name) > 200:
        bad.append("name: at most 200 characters")
    return bad


def validate(spec: RunSpec) -> RunSpec:
    """Check every field once against its metadata; return a normalised spec (sorted scales,
    floats as floats, text stripped) or raise ConfigError listing every problem found."""
    problems: list[str] = []
    if isinstance(spec.probe, str):  # a probe's former name (old runs, old spec files) still loads
        spec = dataclasses.replace(spec, probe=data.probe_name(spec.probe))
    lists: dict[str, tuple[int, ...]] = {}
    for name in ("scales", "seeds"):
        try:
            lists[name] = _int_list(name, getattr(spec, name))
            problems += _list_problems(name, lists[name])
        except ConfigError as e:
            problems.append(str(e))
    for f in fields(RunSpec):
        if f.type in ("int", "float", "bool") or f.metadata["choices"] is not None:
            problem = _field_problem(f, getattr(spec, f.name))
            if problem:
                problems.append(problem)
    problems += _text_problems(spec)
    if problems:
        raise ConfigError("; ".join(problems))
    floats = {f.name: float(getattr(spec, f.name)) for f in fields(RunSpec) if f.type == "float"}
    return dataclasses.replace(
        spec,
        **floats,
        scales=tuple(sorted(lists["scales"])),
        seeds=lists["seeds"],
        model=spec.model.strip(),
        domain=spec.domain.strip(),
        target_modules=str(spec.target_modules).strip(),
        ray_address=spec.ray_address.strip(),
    )


def parse_float_list(text: str, what: str) -> tuple[float, ...]:
    """'0, 0.05, 1e-1' -> (0.0, 0.05, 0.1). Rejects non-numbers with a message naming the item."""
    out = []
    for t, v in _numbers(text, what, "0,0.1"):
        if not math.isfinite(v):
            raise ConfigError(f"{what}: '{t}' is not a finite number")
        out.append(v)
    return tuple(out)


# The sweep axes: a list of values for one of these settings queues one run ("series") per value.
# (setting, how a series' name shows its value, the word its problems are named by, its noun)
SWEEP_AXES = (
    ("domain", lambda v: v, "domain", "domain"),
    ("lora_rank", lambda v: f"r{v}", "rank", "rank"),
    ("replay", lambda v: f"replay {v:g}", "replay", "replay fraction"),
    ("learning_rate", lambda v: f"lr {v:g}", "learning_rate", "learning rate"),
)


def sweep_series(
    spec: RunSpec,
    ranks: tuple[int, ...] | None = None,
    replays: tuple[float, ...] | None = None,
    learning_rates: tuple[float, ...] | None = None,
    alpha_2r: bool = False,
    domains: tuple[str, ...] | None = None,
) -> list[RunSpec]:
    """One spec per combination of the listed values (a sweep over domain, LoRA rank, replay
    fraction and learning rate: one series, i.e. one run, each); an axis left None keeps the
    spec's value.
    `alpha_2r` sets alpha = 2 x rank (Rathore et al. 2025). A swept axis' value is appended to
    the series' name. Every series is validated here, before any is stored."""
    import itertools

    given = {
        "domain": domains,
        "lora_rank": ranks,
        "replay": replays,
        "learning_rate": learning_rates,
    }
    axes: list[tuple[str, tuple]] = []
    for name, _, word, noun in SWEEP_AXES:
        values = given[name]
        if values is None:
            values = (getattr(spec, name),)
        values = tuple(values)
        if not values:
            raise ConfigError(f"{word}: give at least one value")
        if len(set(values)) != len(values):
            raise ConfigError(f"{word}: a {noun} appears more than once")
        axes.append((name, values))
    swept = {name for name, values in axes if len(values) > 1}
    fmt = {name: f for name, f, _, _ in SWEEP_AXES}
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        values = dict(zip((name for name, _ in axes), combo))
        suffix = " ".join(fmt[n](values[n]) for n, _ in axes if n in swept)
        r = values["lora_rank"]
        out.append(
            validate(
                dataclasses.replace(
                    spec,
                    **values,
                    lora_alpha=2.0 * r if alpha_2r else spec.lora_alpha,
                    name=f"{spec.name} {suffix}".strip() if suffix else spec.name,
                )
            )
        )
    return out


# Settings that choose only a series' data, its learning rate or how it is measured: series that
# differ in nothing else train together in one packed pass (`pack_conflict`). Everything else
# (model, method, rank, epochs, batch size, precision...) shapes the shared step itself.
PER_SERIES = frozenset(
    {
        "name",
        "domain",
        "construction",
        "scales",
        "seeds",
        "replay",
        "learning_rate",
        "headline_metric",
        "probe",
        "probe_items",
        "domain_eval_size",
        "eval_all_domains",
        "mc_eval",
        "mc_items",
        "eval_batch_size",
        "smoke_max_new_tokens",
        "save_adapters",
        "spectral",
        "spectral_topk",
        "intruder_k",
        "intruder_eps",
    }
)


def pack_conflict(specs: list[RunSpec]) -> str | None:
    """None when these series can share one packed pass, else the first setting that differs
    between them (by its label), e.g. 'LoRA rank'."""
    first = specs[0]
    for f in dataclasses.fields(RunSpec):
        if f.name in PER_SERIES:
            continue
        if any(getattr(s, f.name) != getattr(first, f.name) for s in specs[1:]):
            return f.metadata.get("label") or f.name
    return None


def pack_groups(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """The series split into groups that can each share one packed pass (no `pack_conflict`
    within a group), in the order each group's first series comes: a rank x domain sweep is
    one group per rank."""
    groups: list[list[RunSpec]] = []
    for spec in specs:
        for group in groups:
            if pack_conflict([group[0], spec]) is None:
                group.append(spec)
                break
        else:
            groups.append([spec])
    return groups
