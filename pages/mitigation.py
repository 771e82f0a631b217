"""Mitigation planner: how much replay keeps forgetting below a level at a dataset size, and what
it costs in domain improvement (core/mitigation.py answers; this page lays it out)."""

import pandas as pd
import streamlit as st

from core import analysis, charts, mitigation, reference, sources
from pages._ui import read, runs, via_app

via_app(__file__)

st.title("Mitigation planner")
st.caption(
    f"Replay ({sources.cite('003')}) mixes general sentences into training, as a fraction of the "
    "domain samples. From runs that differ only in that fraction, this page reads how much "
    "replay keeps general forgetting below a level at a dataset size, and what it costs in "
    "domain improvement — interpolated between what you measured, never extrapolated."
)

df = runs()
own_ids = tuple(df["run_id"]) if not df.empty else ()
parts = [read("points_df", own_ids)] if own_ids else []
ref = reference.points()
if not ref.empty and "replay" in ref:  # a shipped replay reference, when there is one
    parts.append(ref)
points = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
# your own sweeps first, then the shipped reference's
families = sorted(mitigation.families(points), key=lambda f: f.source in reference.REF_SETS)
if not any(f.source not in reference.REF_SETS for f in families):
    st.info(
        "**No replay sweep of your own yet**"
        + (
            " — below: the shipped reference (measured on an H200, see docs/RESULTS.md)."
            if families
            else "."
        )
        + " The planner needs runs that differ only in their replay fraction (same model, "
        "method, domain, LoRA rank and learning rate), with two or more fractions. Launch one "
        f"from the command line:\n\n```\n{mitigation.planner_command()}\n```\n\n"
        "or on the **Launch** page: *Mitigation and checks* → *Replay fraction(s)* "
        "`0, 0.05, 0.1, 0.3` (one run per fraction; two or more seeds give the answer an "
        "interval).",
        icon=":material/info:",
    )
if not families:
    st.stop()

c1, c2, c3, c4 = st.columns([3, 1, 1, 2])
fam = c1.selectbox(
    "Replay sweep",
    range(len(families)),
    format_func=lambda i: families[i].label(),
    key="mit_family",
    help="Runs grouped by everything the export records except the replay fraction.",
)
family = families[fam]
metrics = analysis.available_metrics(points[points["run_id"].isin(family.run_ids)])
metric = c4.selectbox(
    "Forgetting measure",
    metrics,
    format_func=lambda m: analysis.metric_of(m).title,
    key="mit_metric",
)
g = mitigation.grid(points, family, metric)
level = c2.number_input(
    "Keep it below (%)",
    min_value=0.1,
    max_value=100_000.0,
    value=10.0,
    step=5.0,
    key="mit_level",
    help="The forgetting level not to exceed, in % of general perplexity change (a measure "
    "in nats: its perplexity-ratio equivalent).",
)
size = c3.number_input(
    "at N samples",
    min_value=1,
    max_value=10_000_000,
    value=int(max(g.scales)),
    step=50,
    key="mit_size",
    help=f"Measured sizes: {', '.join(f'{s:,}' for s in g.scales)}. Between them the planner "
    "interpolates in log size; outside them it cannot say.",
)

answer = mitigation.plan(g, float(level), float(size))
if answer.status == mitigation.CANNOT_SAY:
    st.warning(answer.sentence(), icon=":material/help:")
else:
    st.success(answer.sentence(), icon=":material/check_circle:")

left, right = st.columns(2)
left.markdown("**General forgetting** (mean over seeds; • at or above the level)")
left.plotly_chart(
    charts.replay_heatmap(g.degradation, "general PPL change", "lower", g.seeds, float(level)),
    key="mit_deg",
)
right.markdown("**Domain improvement** (mean over seeds; higher is better)")
right.plotly_chart(
    charts.replay_heatmap(g.improvement, "domain PPL drop", "higher", g.seeds),
    key="mit_gain",
)
if answer.degradation_by_replay:
    st.markdown(f"**At {size:,} samples, against the replay fraction**")
    shown = (answer.replay, answer.replay_interval) if answer.replay is not None else None
    st.plotly_chart(
        charts.replay_curve(list(answer.degradation_by_replay), float(level), shown),
        key="mit_curve",
    )
st.caption(
    f"{len(family.run_ids)} run(s); fractions {', '.join(f'{r:g}' for r in g.replays)}. "
    "Runs that differ in settings the export does not record (epochs, batch size) would be "
    "grouped together: launch a sweep in one command or one form."
)
