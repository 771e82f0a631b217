"""Which phase each measured dataset size falls in, and where each run enters a phase."""

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
    runs,
    table,
    via_app,
)

via_app(__file__)

st.title("Phases")
st.caption(
    "Phases by general-knowledge degradation: safe < 10 %, threshold 10–50 %, catastrophic "
    "50–1,000 %, exponential 1,000–10,000 %, collapse above (defaults from our reading of "
    f"{sources.cite('000')}; change them on the Threshold page's sidebar), under the forgetting "
    "measure chosen below."
)
df = runs()
chosen = pick_runs(df, "phase_runs")
if not chosen:
    no_results("finished points")
    st.stop()
cutoffs = tuple(st.session_state.get(f"cut{i}", v) for i, v in enumerate(analysis.DEFAULT_CUTOFFS))
try:
    cutoffs = analysis.validate_cutoffs(cutoffs)
except ValueError:
    cutoffs = analysis.DEFAULT_CUTOFFS
pts = points_for(chosen)
measure = measure_select(pts, chosen, "phase_measure", "the phases")
curves = analysis.metric_curves(pts, measure)
if curves.empty:
    st.warning("No finished points in the selected runs.")
    st.stop()
lab = all_labels(df)
ids = list(curves["run_id"].unique())
short = dict(zip(ids, short_names([lab.get(r, r) for r in ids])))
tables = {
    short[r]: analysis.phase_table(c, cutoffs) for r, c in curves.groupby("run_id", sort=False)
}
st.plotly_chart(charts.phase_timeline(tables), key="phase_timeline")

entries = []
for r, c in curves.groupby("run_id", sort=False):
    row = {"run": short[r]}
    for e in analysis.phase_entries(c, cutoffs):
        row[f"first_{e.phase}"] = e.first_scale or None
    entries.append(row)
st.subheader("Smallest measured dataset size in each phase")
table(pd.DataFrame(entries))

st.subheader("Per point")
met = analysis.METRICS[measure]
mean_label = met.title + (" (% equivalent)" if met.unit == "nats" else "") + ", mean over seeds"
for r, (name, t) in zip(ids, tables.items()):
    st.markdown(f"**{lab.get(r, name)}**")
    table(t, overrides={"mean": mean_label})
