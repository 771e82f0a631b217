"""Pareto explorer: any two metrics of every stored run and the reference, the front drawn."""

import streamlit as st

from core import analysis, charts, pareto, reference
from pages._ui import all_labels, generations_for, read, runs, static_table, table, via_app

via_app(__file__)

st.title("Pareto explorer")
st.caption(
    "Every finished (run, dataset size) of your runs and of the shipped reference, averaged over "
    "seeds. Pick two metrics: the dashed line joins the points no other point beats on both. "
    "Colour = dataset size (log scale), symbol = method and LoRA rank (and replay fraction when "
    "the points differ in it). Click a point to see its "
    "smoke-test answers below the chart."
)


def generations_panel(picked: pareto.PickedPoint) -> None:
    """The stored smoke-test answers (base and fine-tuned) of the clicked point."""
    where = (
        f"shipped reference · {reference.set_title(picked.ref_set)}"
        if picked.source == "reference"
        else "your run"
    )
    st.markdown(f"**{picked.label}** · {picked.scale:,} samples · {where}")
    seed = picked.seeds[0]
    if len(picked.seeds) > 1:
        seed = st.selectbox("Seed", picked.seeds, key="pareto_seed")
    gens = generations_for(picked.run_id, picked.scale, seed)
    if gens.empty or not (gens["stage"] == "after").any():
        st.caption(
            "No smoke-test answers are stored for this point: reference sets measured before "
            "answers were stored have none (the re-measured Martz 2025 set and the replay set on "
            "the H200 have them), nor do points whose smoke test was off."
        )
        return
    st.markdown("**Stored smoke-test generations** (greedy decoding)")
    static_table(analysis.smoke_table(gens))
    st.caption(
        "The verdict (ok, why it failed) judges the answer after fine-tuning: no new tokens, only "
        "punctuation, a repetition loop, one word over most of it, few distinct words, or a copy "
        "of the prompt fail it."
    )


df = runs()
own_ids = tuple(df["run_id"]) if not df.empty else ()
own = read("points_df", own_ids) if own_ids else None
data = pareto.assemble(own, reference.points(), all_labels(df))
if data.empty:
    st.info("No finished points yet, and no shipped reference found.")
    st.stop()

with st.sidebar:
    st.subheader("Filters")
    domains = sorted(data["domain"].dropna().unique())
    pick_dom = st.multiselect("Domain", domains, default=domains, key="pareto_domain")
    methods = sorted(data["method"].dropna().unique())
    pick_m = st.multiselect("Method", methods, default=methods, key="pareto_method")
    sources = st.multiselect(
        "Runs", ["yours", "reference"], default=["yours", "reference"], key="pareto_source"
    )
data = data[
    data["domain"].isin(pick_dom) & data["method"].isin(pick_m) & data["source"].isin(sources)
]
cols = pareto.metric_columns(data)
if len(cols) < 2 or data.empty:
    st.info("No points match the filters (or fewer than two metrics have values).")
    st.stop()
c1, c2 = st.columns(2)
x = c1.selectbox(
    "x axis",
    cols,
    index=cols.index("degradation_pct") if "degradation_pct" in cols else 0,
    format_func=pareto.metric_label,
    key="pareto_x",
)
y_default = "domain_improvement_pct" if "domain_improvement_pct" in cols else cols[1]
y = c2.selectbox(
    "y axis", cols, index=cols.index(y_default), format_func=pareto.metric_label, key="pareto_y"
)
front = pareto.pareto_front(data, x, y)
event = st.plotly_chart(
    charts.pareto_figure(data, x, y, front),
    key="pareto_chart",
    on_select="rerun",
    selection_mode="points",
)
better = {"min": "lower is better", "max": "higher is better"}
st.caption(
    f"x: {better[pareto.better(x)]}; y: {better[pareto.better(y)]}. "
    f"{int(front.sum())} of {int(data[[x, y]].notna().all(axis=1).sum())} points on the front."
)
table(pareto.front_table(data, front, x, y))
st.download_button(
    "Download all points (CSV)",
    data.assign(on_front=front).drop(columns=["seed_list"], errors="ignore").to_csv(index=False),
    file_name="pareto_points.csv",
    mime="text/csv",
    key="pareto_csv",
)

st.subheader("Generations of a point")
picked = pareto.picked_point(data, event)
if picked is None:
    st.caption(
        "Click a point in the chart to see the base model's and the fine-tuned model's stored "
        "smoke-test answers at that size."
    )
else:
    generations_panel(picked)
