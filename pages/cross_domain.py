"""Train on one domain, evaluate on every domain: the cross-domain matrix, and methods/ranks
compared on the same axes."""

import streamlit as st

from core import analysis, charts, reference
from pages._ui import (
    all_labels,
    measure_select,
    no_results,
    pick_runs,
    points_for,
    read,
    runs,
    via_app,
)

via_app(__file__)

st.title("Cross-domain")
st.caption(
    "Each cell: mean perplexity change on an evaluation set after training on a domain "
    "(red = worse, blue = better). Rows come from runs; columns from the evaluation sets each run measured."
)
df = runs()
done = df[df["points_done"] > 0] if not df.empty else df
# reference sets of one method each (the methods and rank sets would average methods per cell)
sources = {
    "your runs": None,
    **{f"reference: {reference.set_title(n)}": n for n in reference.CROSS_DOMAIN_SETS},
}
source = st.radio(
    "Source",
    list(sources),
    horizontal=True,
    index=0 if not done.empty else len(sources) - 1,  # the all-domains reference set
    help="Reference runs are shipped with the app and read-only.",
)
if sources[source] is None:
    if done.empty:
        no_results("finished points")
        st.stop()
    ev = read("evals_df", tuple(done.run_id))
else:
    ev = reference.evals()
    ev = ev[ev.ref_set == sources[source]]
if ev.empty:
    no_results("evaluations")
    st.stop()
scales = sorted(ev.scale.unique())
scale = st.select_slider(
    "Dataset size",
    scales,
    value=scales[-1],
    format_func=lambda v: f"{int(v):,}",
    help="Cells use the points trained at this size (mean over runs and seeds).",
)
m = analysis.cross_domain_matrix(ev, scale)
st.plotly_chart(
    charts.heatmap(m, f"Perplexity change after training on {scale:,} samples", "PPL change"),
    key="xdomain",
)
if len(m.index) < 2:
    st.caption("Only one training domain so far: queue runs on other domains to fill more rows.")

st.subheader("Methods and ranks on the same axes")
what = st.radio(
    "Metric",
    ["general", "domain_improvement_pct"],
    horizontal=True,
    format_func={
        "general": "general forgetting",
        "domain_improvement_pct": "domain improvement %",
    }.get,
)
chosen = pick_runs(df, "xd_runs", max_default=4)
lab = all_labels(df)
if chosen:
    pts = points_for(chosen)
    if what == "general":
        measure = measure_select(pts, chosen, "xd_measure", "the chart")
        curves = analysis.metric_curves(pts, measure)
        title = (
            "general PPL change"
            if measure == "degradation_pct"
            else analysis.METRICS[measure].title
        )
    else:
        curves = analysis.per_scale(pts, what)
        title = "domain PPL drop"
    st.plotly_chart(
        charts.compare_figure(curves, lab, title, ratio_axis=what == "general"),
        key="methods",
    )
