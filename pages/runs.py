"""Every stored run: filter, compare, export, delete."""

import streamlit as st

from core import analysis, charts, runner
from core.errors import LabError
from core.labels import short_names
from pages._ui import (
    changed,
    export_bytes,
    labels,
    measure_select,
    no_results,
    read,
    runs,
    store,
    table,
    via_app,
)

via_app(__file__)

st.title("Runs")
df = runs()
if df.empty:
    no_results("runs")
    st.stop()
c1, c2, c3, c4 = st.columns(4)
f_status = c1.multiselect("Status", sorted(df.status_effective.unique()))
f_model = c2.multiselect("Model", sorted(df.model.unique()))
f_method = c3.multiselect("Method", sorted(df.method.unique()))
f_domain = c4.multiselect("Domain", sorted(df.domain.unique()))
view = df
for col, sel in (
    ("status_effective", f_status),
    ("model", f_model),
    ("method", f_method),
    ("domain", f_domain),
):
    if sel:
        view = view[view[col].isin(sel)]
run_table = view[
    [
        "name",
        "status_effective",
        "points_done",
        "n_points",
        "model",
        "method",
        "lora_rank",
        "domain",
        "device",
        "created_at",
        "error",
        "run_id",
    ]
].rename(columns={"status_effective": "status"})
table(run_table)

lab = labels(view)
st.subheader("Compare")
chosen = st.multiselect("Runs to compare", list(lab), default=list(lab)[:2], format_func=lab.get)
if chosen:
    pts = read("points_df", tuple(chosen))
    measure = measure_select(pts, chosen, "runs_measure", "the comparison chart")
    curves = analysis.metric_curves(pts, measure)
    if not curves.empty:
        title = (
            "general PPL change"
            if measure == "degradation_pct"
            else analysis.METRICS[measure].title
        )
        st.plotly_chart(charts.compare_figure(curves, lab, title, ratio_axis=True), key="cmp")
        st.caption("Use the camera icon on any chart to download it as PNG.")
    short = dict(zip(chosen, short_names([lab.get(r, r) for r in chosen])))
    agg = analysis.run_summary(pts)
    cols = ["model_mem_mb", "disk_mb", "trainable_pct", "ms_per_step", "gen_tokens_per_s"]
    agg.insert(0, "run", agg.pop("run_id").map(lambda r: short.get(r, r)))
    # two narrow tables rather than one that scrolls past its cost figures
    table(agg[["run", "points", "max_degradation", "smoke_failures", "train_seconds"]])
    table(
        agg[
            [
                c
                for c in ("run", "peak_mem_mb", "ms_per_step", "gen_tokens_per_s", *cols[:3])
                if c in agg
            ]
        ]
    )
    if len(chosen) == 2:
        a, b = (pts[pts.run_id == r] for r in chosen)
        met = analysis.METRICS[measure]
        st.markdown(
            f"**Welch's t-test per dataset size** ({met.title}, in {met.unit}; the measure chosen "
            "above; needs ≥ 2 seeds in both runs)"
        )
        lacking = [short[r] for r in chosen if r in analysis.runs_without(pts, measure)]
        w = analysis.welch_by_scale(a, b, measure)
        if lacking:
            st.caption(
                f"No test: {' and '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no "
                f"values of {met.title} (measured before it existed, or a method that cannot "
                "provide it). Choose another measure above."
            )
        elif w.empty:
            st.caption("No dataset size with at least two seeds in both runs.")
        else:
            # the means in the measure's own unit: a nats measure's columns say so
            sfx = "_nats" if met.unit == "nats" else ""
            what = "mean (nats)" if sfx else "mean change"
            w = w.rename(columns={"mean_a": f"mean_a{sfx}", "mean_b": f"mean_b{sfx}"})
            table(
                w,
                overrides={
                    f"mean_a{sfx}": f"{what}, {short[chosen[0]]}",
                    f"mean_b{sfx}": f"{what}, {short[chosen[1]]}",
                },
            )

st.subheader("Export")
fmt = st.radio("Format", ["csv", "parquet"], horizontal=True)
scope = chosen if chosen else None
try:
    n, payload = export_bytes(fmt, scope)
    st.download_button(
        f"Download {n} point rows ({fmt})",
        payload,
        file_name=f"forgetting-lab-points.{fmt}",
        mime="text/csv" if fmt == "csv" else "application/octet-stream",
    )
except LabError as e:
    st.error(str(e))

st.subheader("Delete")
victim = st.selectbox(
    "Run to delete", [None, *lab], format_func=lambda r: "—" if r is None else lab[r]
)
if victim:
    sure = st.checkbox(f"Yes, delete {victim} and all its points", key="confirm_delete")
    if st.button("Delete run", type="secondary", disabled=not sure):
        try:
            runner.delete_run(store(), victim)  # refuses a queued or running run
            changed()
            st.success(f"Deleted {victim} (points, saved adapters, checkpoints).")
            st.rerun()
        except LabError as e:
            st.error(str(e))
