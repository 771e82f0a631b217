"""Pareto explorer: any two metrics of every stored run and the reference, the front drawn."""

import streamlit as st

from core import charts, pareto, reference
from pages._ui import all_labels, read, runs, table, via_app

via_app(__file__)

st.title("Pareto explorer")
st.caption(
    "Every finished (run, dataset size) of your runs and of the shipped reference, averaged over "
    "seeds. Pick two metrics: the dashed line joins the points no other point beats on both. "
    "Colour = dataset size (log scale), symbol = method and LoRA rank."
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
st.plotly_chart(charts.pareto_figure(data, x, y, front), key="pareto_chart")
better = {"min": "lower is better", "max": "higher is better"}
st.caption(
    f"x: {better[pareto.better(x)]}; y: {better[pareto.better(y)]}. "
    f"{int(front.sum())} of {int(data[[x, y]].notna().all(axis=1).sum())} points on the front."
)
shown = data.assign(on_front=front)[pareto.KEYS + ["seeds", x, y, "on_front"]]
shown = shown.loc[:, ~shown.columns.duplicated()]
table(shown[shown["on_front"]].drop(columns=["on_front"]).sort_values(x))
st.download_button(
    "Download all points (CSV)",
    data.assign(on_front=front).to_csv(index=False),
    file_name="pareto_points.csv",
    mime="text/csv",
    key="pareto_csv",
)
