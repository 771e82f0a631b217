"""Human names for every column a table shows: one map, used by every page (through
`pages/_ui.table`) so a column reads the same everywhere and no table shows `general_ppl_before`
or `smoke_ok`. Formats are printf-style as Streamlit's number columns take them; missing values
show as `MISSING`."""

from __future__ import annotations

from dataclasses import dataclass

from pandas import NA

from .analysis import PHASES

MISSING = "—"


@dataclass(frozen=True)
class Col:
    label: str
    kind: str = "number"  # number | text | bool | time
    format: str | None = None  # printf-style ("%.2f", "%+.1f%%") or a Streamlit preset name
    help: str = ""
    width: str | None = None  # "small" | "medium" | "large"; None lets the table decide


# The columns a short per-point summary shows (CLI `show`, the app's progress panel).
POINT_SUMMARY = [
    "scale",
    "seed",
    "status",
    "general_ppl_before",
    "general_ppl_after",
    "degradation_pct",
    "domain_improvement_pct",
    "smoke_ok",
]


_PCT = "%+.1f%%"
COLUMNS: dict[str, Col] = {
    # runs
    "run": Col("run", "text", width="medium"),
    "run_id": Col("run id", "text"),
    "run_name": Col("run name", "text"),
    "name": Col("name", "text"),
    "status": Col("status", "text"),
    "status_effective": Col("status", "text"),
    "points_done": Col("points done", format="%d"),
    "n_points": Col("points planned", format="%d"),
    "model": Col("model", "text"),
    "method": Col("method", "text"),
    "rank": Col("LoRA rank", format="%d"),
    "lora_rank": Col("LoRA rank", format="%d"),
    "replay": Col(
        "replay fraction",
        format="%.3g",
        help="general sentences mixed into training, as a fraction of the domain samples",
    ),
    "learning_rate": Col("learning rate", format="%.2e"),
    "domain": Col("domain", "text"),
    "device": Col("device", "text"),
    "created_at": Col("created", "time"),
    "finished_at": Col("finished", "time"),
    "git_commit": Col("code version", "text"),
    "error": Col("error or stop reason", "text"),
    # one point
    "scale": Col("dataset size", format="localized", help="training samples"),
    "seed": Col("seed", format="%d", help="random seed of the point (data order, initialisation)"),
    "seed_ids": Col("seeds", "text", help="the random seeds the row averages over", width="small"),
    "general_ppl_before": Col("general PPL before", format="%.2f"),
    "general_ppl_after": Col("general PPL after", format="%.2f"),
    "degradation_pct": Col(
        "general PPL change",
        format=_PCT,
        help="change of perplexity on the general probe after fine-tuning (positive = worse)",
    ),
    "general_ppl_stmt_before": Col(
        "general PPL before (per statement)",
        format="%.2f",
        help="mean over probe statements of each statement's perplexity (Martz 2025's aggregation)",
    ),
    "general_ppl_stmt_after": Col("general PPL after (per statement)", format="%.2f"),
    "degradation_stmt_pct": Col(
        "general PPL change (per statement)",
        format=_PCT,
        help="change of the per-statement mean perplexity (Martz 2025, scale-dependent "
        "forgetting); positive = worse",
    ),
    "kl_to_base": Col(
        "KL to base",
        format="%.4f",
        help="mean per-token KL(base || tuned) on the general probe, nats (Kalajdzievski 2024, "
        "scaling laws for forgetting when fine-tuning LLMs); empty: not measured",
    ),
    "general_ce_delta": Col(
        "general CE change",
        format="%+.4f",
        help="mean per-token cross-entropy on the general probe after minus before, nats "
        "(peft's method comparison forgetting metric)",
    ),
    "domain_ppl_before": Col("domain PPL before", format="%.2f"),
    "domain_ppl_after": Col("domain PPL after", format="%.2f"),
    "domain_improvement_pct": Col(
        "domain PPL drop", format=_PCT, help="fall of perplexity on the domain (positive = better)"
    ),
    "smoke_ok": Col(
        "smoke test",
        "bool",
        help="every smoke-test prompt got an answer that is not empty, not a loop, not degenerate",
    ),
    "smoke_min_new_tokens": Col("fewest new tokens", format="%d"),
    "steps": Col("steps", format="localized"),
    "final_loss": Col("final loss", format="%.3f"),
    "train_seconds": Col("training s", format="%.1f"),
    "eval_seconds": Col("evaluation s", format="%.1f"),
    "trainable_params": Col("trainable params", format="localized"),
    "total_params": Col("all params", format="localized"),
    "trainable_pct": Col("trainable %", format="%.3f"),
    "peak_mem_mb": Col(
        "peak memory MB",
        format="%.0f",
        help="CUDA max allocated on a GPU; peak resident set size of the process on a CPU",
    ),
    "model_mem_mb": Col("model MB", format="%.1f", help="the measured model's tensors in memory"),
    "disk_mb": Col("saved MB / point", format="%.2f", help="the adapter a point saved"),
    "ms_per_step": Col("ms / step", format="%.1f", help="median training time per optimizer step"),
    "gen_tokens_per_s": Col(
        "gen. tokens/s", format="%.1f", help="smoke-test generation speed after training"
    ),
    "mc_acc_before": Col("MC accuracy before", format="percent"),
    "mc_acc_after": Col("MC accuracy after", format="percent"),
    "mc_drop_pts": Col("MC drop (points)", format="%+.1f"),
    "stop_step": Col("stopped at step", format="%d"),
    "adapter_path": Col("saved adapter", "text"),
    # summaries
    "points": Col("points", format="%d"),
    "max_degradation": Col("max general PPL change", format=_PCT),
    "smoke_failures": Col("smoke-test failures", format="%d"),
    "largest_scale": Col("largest size", format="localized"),
    "degradation_at_largest": Col("general PPL change there", format=_PCT),
    "domain_gain_at_largest": Col("domain PPL drop there", format=_PCT),
    "intruder_dims_at_largest": Col(
        "intruder dimensions there",
        format="%.1f",
        help="intruder dimensions summed over the adapted matrices, mean over seeds (Shuttleworth "
        "et al. 2024); empty: not counted",
    ),
    "mean": Col("general PPL change (mean over seeds)", format=_PCT),
    "phase": Col("phase", "text"),
    **{
        f"first_{p}": Col(p, format="localized", help=f"smallest measured size in the {p} phase")
        for p in PHASES
    },
    "accuracy_before": Col("MC accuracy before", format="%.1f%%"),
    # spectral
    "fro_norm": Col("‖ΔW‖_F", format="%.4g", help="size of the whole weight update"),
    "eff_rank": Col(
        "effective rank (mean)", format="%.2f", help="exp(entropy) of ΔW's singular values"
    ),
    "topk_cos": Col(
        "top-k cosine (mean)",
        format="%.4f",
        help="how well the base weights' leading singular directions survive (1 = kept)",
    ),
    "intruder_dims": Col(
        "intruder dimensions",
        format="%.1f",
        help="leading singular vectors after training with no close match among the base's "
        "(Shuttleworth et al. 2024, LoRA vs full fine-tuning: an illusion of equivalence), summed "
        "over the adapted matrices; empty: not counted",
    ),
    # Welch's test
    "mean_a": Col("mean change, run A", format=_PCT),
    "mean_b": Col("mean change, run B", format=_PCT),
    # the same means under a measure in nats (KL to the base, cross-entropy change)
    "mean_a_nats": Col("mean, run A (nats)", format="%.4f"),
    "mean_b_nats": Col("mean, run B (nats)", format="%.4f"),
    "t": Col("t", format="%.2f"),
    "p": Col("p", format="%.3g", help="two-sided p-value of Welch's t-test"),
    # generations
    "prompt": Col("prompt", "text", width="medium"),
    "base_output": Col("base model", "text", width="medium"),
    "output": Col("answer", "text", width="medium"),
    "after_output": Col("after fine-tuning", "text", width="medium"),
    "new_tokens": Col("new tokens", format="%d", width="small"),
    "ok": Col("ok", "bool", help="the smoke-test verdict on the fine-tuned answer", width="small"),
    "reason": Col("why it failed", "text", width="medium"),
    # do the measures agree? (analysis.measure_agreement)
    "measure": Col("forgetting measure", "text", width="large"),
    "threshold": Col("threshold (samples)", format="%.0f"),
    "interval_low": Col("95 % interval low", format="%.0f"),
    "interval_high": Col("95 % interval high", format="%.0f"),
    "largest_safe": Col("largest size below the level", format="%.0f"),
    # what was forgotten (core/forgotten.py)
    "item": Col("statement no.", format="%d"),
    "text": Col("statement", "text", width="large"),
    "ppl_before": Col("PPL before", format="%.2f"),
    "change_pct": Col("PPL change at the largest size", format="%+.1f%%"),
    "first_crossed": Col("first crossed the level at", format="%.0f"),
    "base": Col("base model", "text"),
    # multiple-choice questions that flipped (core/forgotten.py)
    "question_no": Col("question no.", format="%d"),
    "question": Col("question", "text", width="large"),
    "answer": Col("right answer", "text"),
    "first_flipped": Col(
        "first flipped at", format="%.0f", help="smallest size at which a seed got it wrong"
    ),
    "flipped_at_largest": Col(
        "seeds wrong at the largest size", format="percent", help="share of seeds"
    ),
    "right_to_wrong": Col(
        "right → wrong",
        format="%.1f",
        help="questions the base got right, wrong after (mean over seeds)",
    ),
    "wrong_to_right": Col("wrong → right", format="%.1f", help="mean over seeds"),
    "questions": Col("questions scored", format="%d"),
}


def col(name: str) -> Col:
    """The column's entry; a column not in the map gets its name with spaces for underscores."""
    return COLUMNS.get(name) or Col(name.replace("_", " "), "text")


def label(name: str) -> str:
    return col(name).label


# A verdict as text: an unticked grey checkbox was easy to miss for a failed smoke test
VERDICT = {True: "✓ passed", False: "✗ failed"}


def cell(name: str, value) -> str:
    """One value as text for a static table: '—' when missing, ✓ / ✗ for a verdict, numbers in
    the column's printf format (Streamlit's named formats print plainly)."""
    if value is None or value is NA or (isinstance(value, float) and value != value):
        return MISSING
    c = col(name)
    if c.kind == "bool":
        return VERDICT[bool(value)]
    if c.kind == "number" and c.format and c.format.startswith("%"):
        try:
            return c.format % value
        except (TypeError, ValueError):
            return str(value)
    if c.kind == "number" and isinstance(value, (int, float)):
        return f"{value:,}"
    return str(value)


def short_names(labels: list[str]) -> list[str]:
    """Legend names: the parts of ' · '-separated run labels that differ between the runs
    (the full label stays on hover). One run keeps its name (its first part after 'reference')."""
    parts = [str(x).split(" · ") for x in labels]
    if not parts:
        return []
    if len(parts) == 1:
        rest = [q for q in parts[0] if q != "reference"]
        return [(rest or parts[0])[0]]
    width = max(map(len, parts))
    differ = [k for k in range(width) if len({p[k] if k < len(p) else "" for p in parts}) > 1]
    out = [" · ".join(p[k] for k in differ if k < len(p)) or " · ".join(p) for p in parts]
    return [o if len(o) <= 48 else o[:47] + "…" for o in out]
