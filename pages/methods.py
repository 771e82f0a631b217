"""Compare fine-tuning methods on the same forgetting axes: curves, cost, spectral analysis of the
weight update (Rathore et al. 2025) and ADAPT-Q's block selection (Martz 2025, ADAPT-Q)."""

import pandas as pd
import streamlit as st

from core import analysis, charts, sources
from core.labels import short_names
from pages._ui import (
    all_labels,
    measure_select,
    no_results,
    pick_runs,
    points_for,
    run_info_for,
    runs,
    spectral_for,
    table,
    via_app,
)

via_app(__file__)

st.title("Methods")
st.caption(
    "LoRA, QLoRA, ADAPT-Q and full fine-tuning measured the same way. Pick runs of different "
    "methods (or LoRA ranks) trained on the same domain to compare them."
)
df = runs()
shown = st.radio(
    "Start from the reference",
    ("methods_smollm2_h100", "rank_smollm2_h100"),
    format_func={
        "methods_smollm2_h100": "methods (LoRA, QLoRA, ADAPT-Q, full)",
        "rank_smollm2_h100": "LoRA ranks r = 8-128 (Rathore et al. 2025)",
    }.get,
    horizontal=True,
    help="Which shipped reference runs are preselected when you have no runs of your own.",
)
chosen = pick_runs(df, f"method_runs_{shown}", max_default=6, default_sets=(shown,))
if not chosen:
    no_results("finished points")
    st.stop()
lab = all_labels(df)
pts = points_for(chosen)
short = dict(zip(chosen, short_names([lab.get(r, r) for r in chosen])))

measure = measure_select(pts, chosen, "m_measure", "the forgetting chart and table")
met = analysis.METRICS[measure]
c1, c2 = st.columns(2)
deg = analysis.metric_curves(pts, measure)
if deg.empty:
    st.warning("No finished points in the selected runs.")
    st.stop()
y_title = "general PPL change" if measure == "degradation_pct" else met.title
c1.markdown(f"**Forgetting: {met.title}** (lower is better)")
c1.plotly_chart(charts.compare_figure(deg, lab, y_title, ratio_axis=True), key="m_deg")
gain = analysis.per_scale(pts, "domain_improvement_pct")
c2.markdown("**Domain perplexity improvement** (higher is better)")
c2.plotly_chart(charts.compare_figure(gain, lab, "domain PPL improvement"), key="m_gain")

st.subheader("Cost per run")
summary = analysis.method_summary(pts, measure)
summary.insert(0, "run", summary["run_id"].map(lambda r: short.get(r, lab.get(r, r))))
# two narrow tables rather than one that scrolls: the cost figures are what this one compares
table(
    summary[
        [
            "run",
            "peak_mem_mb",
            "ms_per_step",
            "gen_tokens_per_s",
            "model_mem_mb",
            "disk_mb",
            "trainable_pct",
            "trainable_params",
        ]
    ]
)
st.markdown("**What it did at its largest dataset size**")
table(
    summary[
        [
            "run",
            "largest_scale",
            "degradation_at_largest",
            "intruder_dims_at_largest",
            "domain_gain_at_largest",
        ]
    ],
    overrides={"degradation_at_largest": f"{met.title} there"},
)
st.caption(
    "Medians over finished points. Memory counts the measured model's tensors (4-bit weights at "
    "their packed size plus quantization constants). Step times of the shipped H100 reference "
    "runs were measured with several runs sharing the GPU (see docs/RESULTS.md)."
)

st.subheader("Intruder dimensions")
intr = analysis.per_scale(pts, "intruder_dims") if "intruder_dims" in pts else pd.DataFrame()
spectral = spectral_for(chosen)
totals = analysis.spectral_totals(spectral)
if intr.empty:
    st.caption(
        "None of the selected runs counted intruder dimensions: they come from runs of this "
        "version with the spectral analysis on (the shipped reference runs predate them)."
    )
else:
    st.caption(
        "Of each adapted matrix's k leading singular vectors after training, those with no close "
        "match (largest |cosine| below the similarity threshold) among the base matrix's "
        "singular vectors; summed over matrices, mean over seeds. Defaults k = 10 and threshold "
        "0.5, those of the authors' published code (a run's own values are in its settings). "
        f"{sources.MEASURE_SOURCES['intruder_dims']} report that LoRA creates them, full "
        "fine-tuning hardly does, and that models with more of them forget more of the "
        "pre-training distribution: compare with the forgetting chart above."
    )
    i1, i2 = st.columns(2)
    i1.markdown("**Intruder dimensions against dataset size**")
    i1.plotly_chart(charts.compare_figure(intr, lab, "intruder dimensions", unit=""), key="m_intr")
    counted = totals[totals["intruder_dims"].notna()] if not totals.empty else totals
    if counted[counted["method"].isin(["lora", "qlora"])]["rank"].nunique() > 1:
        i2.markdown("**Intruder dimensions against LoRA rank**")
        i2.plotly_chart(
            charts.fro_vs_rank(counted, "intruder_dims", "intruder dimensions"), key="m_intr_rank"
        )
    else:
        i2.caption("Pick LoRA runs of two or more ranks to see intruder dimensions against rank.")

st.subheader("Spectral analysis of the weight update")
if spectral.empty:
    st.info(
        "No spectral rows in the selected runs: they come from runs of this version with "
        "'Spectral analysis' on (Launch → Mitigation and checks).",
        icon=":material/info:",
    )
else:
    st.caption(
        "Exact SVDs of every adapted matrix. ||ΔW||_F: size of the update; effective rank: "
        "exp(entropy) of ΔW's singular values; top-k cosine: how well the base weights' leading "
        "singular directions survive (1 = kept). Rathore et al. 2025 (LoRA rank trade-offs) "
        "report that LoRA keeps them better than full fine-tuning and that ||ΔW||_F grows "
        "roughly logarithmically with rank."
    )
    lora_ranks = totals[totals["method"].isin(["lora", "qlora"])]["rank"].nunique()
    if lora_ranks > 1:
        st.plotly_chart(charts.fro_vs_rank(totals), key="m_fro")
    else:
        st.caption(
            "Pick LoRA runs of two or more ranks (e.g. the reference rank sweep) to see "
            "||ΔW||_F against rank."
        )
    t = totals.copy()
    t.insert(0, "run", t["run_id"].map(lambda r: short.get(r, lab.get(r, r))))
    table(t.drop(columns=["run_id"]))
    c1, c2, c3 = st.columns(3)
    run_sel = c1.selectbox(
        "Run", list(spectral["run_id"].unique()), format_func=lambda r: lab.get(r, r), key="m_srun"
    )
    one = spectral[spectral["run_id"] == run_sel]
    scale_sel = c2.selectbox("Dataset size", sorted(one["scale"].unique()), key="m_sscale")
    values = ["topk_cos", "eff_rank", "fro_norm"]
    if "intruder_dims" in one and one["intruder_dims"].notna().any():
        values.append("intruder_dims")
    what = c3.selectbox(
        "Value",
        values,
        format_func={
            "topk_cos": "top-k singular-vector cosine",
            "eff_rank": "effective rank of ΔW",
            "fro_norm": "||ΔW||_F",
            "intruder_dims": "intruder dimensions",
        }.get,
        key="m_sval",
    )
    mat = analysis.layer_matrix(one[one["scale"] == scale_sel], what)
    names = {
        "topk_cos": "top-k cosine",
        "eff_rank": "effective rank",
        "fro_norm": "||ΔW||_F",
        "intruder_dims": "intruder dimensions",
    }
    st.plotly_chart(charts.layer_heatmap(mat, names[what]), key="m_heat")

adapt = [r for r in chosen if run_info_for(r).get("profile")]
if adapt:
    st.subheader(f"ADAPT-Q: which blocks train ({sources.cite('001')})")
    r = st.selectbox("ADAPT-Q run", adapt, format_func=lambda x: lab.get(x, x), key="m_arun")
    info = run_info_for(r)
    st.plotly_chart(charts.profile_figure(info["profile"], info["selected"]), key="m_prof")
    before = pts[(pts["run_id"] == r)]["general_ppl_before"].dropna()
    facts = {
        "blocks trained": f"{info['k']} of {info['blocks']} ({info['selection']} selection)",
        "frozen blocks": {4: "4-bit NF4", 8: "8-bit (LLM.int8)", 16: "16-bit"}[info["frozen_bits"]],
        "order": info["quant_order"],
        "model in memory": f"{info['model_mb_mixed']:.1f} MB mixed vs "
        f"{info['model_mb_full_precision']:.1f} MB full precision",
    }
    if "general_ppl_full_precision" in info and not before.empty:
        fp, q = info["general_ppl_full_precision"], float(before.iloc[0])
        facts["quantization alone"] = (
            f"general PPL {fp:.2f} → {q:.2f} ({analysis.percent_change(fp, q):+.1f}%) "
            "before any training"
        )
    st.table(pd.DataFrame({"": list(facts), "value": list(facts.values())}).set_index(""))
