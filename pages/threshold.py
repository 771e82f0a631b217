"""Degradation vs dataset size, the threshold, phase bands, and a slider to read any scale."""

import streamlit as st

from core import analysis, charts, data, forecast, forgotten, reference, sources
from pages._ui import (
    agreement_for,
    all_labels,
    analysis_for,
    generations_for,
    items_for,
    mc_items_for,
    measure_select,
    no_results,
    pick_runs,
    points_for,
    read,
    runs,
    spec_for,
    static_table,
    table,
    timed_fragment,
    via_app,
)

via_app(__file__)

st.title("Threshold")
st.caption(
    "General-knowledge degradation = change of perplexity on the general probe after fine-tuning "
    "(positive = worse). The y axis is logarithmic in the perplexity ratio, so −20 % and +20,000 % "
    "both stay readable."
)

df = runs()
chosen = pick_runs(df, "thr_runs", default_sets=reference.THRESHOLD_SETS)
with st.sidebar:
    st.subheader("Threshold settings")
    level = st.number_input(
        "Threshold level (% degradation)",
        0.1,
        100000.0,
        10.0,
        step=5.0,
        help="The threshold is where degradation first rises above this level.",
    )
    with st.expander("Phase cut-offs (%)"):
        st.caption(f"Defaults: our reading of the phases in {sources.cite('000')}.")
        cuts = [
            st.number_input(f"{a} → {b}", value=v, key=f"cut{i}")
            for i, (a, b, v) in enumerate(
                zip(analysis.PHASES, analysis.PHASES[1:], analysis.DEFAULT_CUTOFFS)
            )
        ]
    show_guidance = st.checkbox(
        "Deployment guidance lines (alert, rollback)",
        value=True,
        help=f"The guidance of {sources.cite('000')}: alert above 20 %, consider a rollback "
        "above 50 %.",
    )
    g1, g2 = st.columns(2)
    alert = g1.number_input("alert above %", 0.0, 1e6, analysis.ALERT_PCT, key="alert_pct")
    rollback = g2.number_input(
        "rollback above %", 0.0, 1e6, analysis.ROLLBACK_PCT, key="rollback_pct"
    )
    show_paper = st.checkbox(
        "Overlay the claimed curves (Martz 2025)",
        value=bool(set(chosen)) and all(r.startswith(reference.REF_PREFIX) for r in chosen),
        help=f"Numbers printed in {sources.cite('000')} for GPT-2 124M, one curve per domain; "
        "not measured here.",
    )
try:
    cutoffs = analysis.validate_cutoffs(cuts)
except ValueError as e:
    st.error(str(e))
    cutoffs = analysis.DEFAULT_CUTOFFS

if not chosen:
    no_results("finished points")
    st.stop()

pts = points_for(chosen)
metric = st.radio(
    "Forgetting metric",
    ["perplexity", "multiple choice"],
    horizontal=True,
    format_func={
        "perplexity": "general perplexity change",
        "multiple choice": "multiple-choice accuracy (four-option questions)",
    }.get,
    help="Perplexity on the general probe, or accuracy on own-written four-option questions scored "
    "by option log-likelihood.",
)
if metric == "multiple choice":
    mc = analysis.mc_curves(pts)
    if mc.empty:
        st.info(
            "The selected runs have no multiple-choice scores (runs made before this metric existed, "
            "or with it turned off)."
        )
        st.stop()
    lab = all_labels(df)
    st.plotly_chart(charts.mc_figure(mc.per_scale, lab, mc.before.to_dict()), key="mc_chart")
    table(
        mc.before.rename("accuracy_before")
        .reset_index()
        .assign(run=lambda d: d["run_id"].map(lambda r: lab.get(r, r)))[["run", "accuracy_before"]]
    )
    st.caption(
        "Chance level is 25 % (four options; the dashed grey line). Dotted lines: accuracy "
        "before fine-tuning. Threshold, phases and the slider use the perplexity metric."
    )
    st.stop()
measure = measure_select(pts, chosen, "thr_measure", "the curve, threshold, phases and slider")
curves = analysis.metric_curves(pts, measure)
dom = analysis.per_scale(pts, "domain_improvement_pct")
if curves.empty:
    st.warning("The selected runs have no successfully finished points yet.")
    st.stop()
lab = all_labels(df)
measured = set(curves.run_id)
reports = {r: analysis_for(r, level, cutoffs, measure) for r in chosen if r in measured}
reports = {r: rep for r, rep in reports.items() if rep is not None}
thr = {r: rep.threshold for r, rep in reports.items()}
fits = {r: rep.fit for r, rep in reports.items() if rep.fit is not None}

own = [r for r in chosen if not r.startswith(reference.REF_PREFIX)]
smoke_failed = analysis.smoke_failed_points(pts, read("smoke_failures", tuple(own)))
paper = None
if show_paper:
    paper = reference.paper_claims()
    doms = set(pts["domain"])
    paper = paper[paper.domain.isin(doms)] if doms & set(paper.domain) else paper
# -- forecast band (issue 21): a projection beyond the last measured size, with its backtest --
with st.sidebar:
    st.subheader("Forecast")
    show_fc = st.checkbox(
        "Forecast beyond the last measured size",
        value=False,
        key="fc_show",
        help="A projection, not a measurement: growth forms (power law after "
        f"{sources.cite('004')}, saturating after {sources.cite('005')}, exponential as claimed "
        f"in {sources.cite('000')}, rise and fall) chosen by their error on held-out largest "
        "sizes; the band is a 95 % interval over seeds, the choice of form and the extrapolation "
        "error measured on the run's own sizes; its backtest error is shown beside it.",
    )
    fc_to = st.number_input(
        "Forecast up to (samples)", 100, 10_000_000, 50_000, step=10_000, key="fc_to"
    )


@st.cache_data(show_spinner="Forecasting…", max_entries=64)
def _forecast(run_id: str, key: tuple, to: float, level: float, measure: str) -> dict | None:
    try:
        return forecast.forecast(
            points_for([run_id]), metric=measure, to=to, level=level, n_boot=200
        )
    except forecast.ForecastError as e:
        return {"error": str(e)}


forecasts = {}
if show_fc and analysis.METRICS[measure].unit == "nats":
    st.sidebar.caption(
        "The forecast projects % measures; choose the token-weighted or per-statement "
        "perplexity change to see it."
    )
elif show_fc:
    for r in chosen:
        c = curves[curves.run_id == r]
        if c.empty:
            continue
        key = tuple(c["scale"]) + tuple(c["mean"].round(6))  # reruns when the points change
        fc = _forecast(r, key, float(fc_to), float(level), measure)
        if fc and "error" in fc:
            st.sidebar.caption(f"No forecast for {lab.get(r, r)}: {fc['error']}")
        elif fc:
            forecasts[r] = fc
            st.caption(
                f"**Forecast (a projection, not measured)** for {lab.get(r, r)}: "
                f"{forecast.summary(fc)}"
            )
fig = charts.threshold_figure(
    curves,
    lab,
    cutoffs=cutoffs,
    threshold=thr,
    level=level,
    domain_curves=dom,
    paper=paper,
    guidance=(alert, rollback) if show_guidance else (),
    fits=fits,
    unfinished=pts[pts["status"] != "done"] if "status" in pts else None,
    smoke_failed=smoke_failed,
    forecasts=forecasts,
)
st.plotly_chart(fig, key="threshold_chart")

cols = st.columns(len(chosen) if len(chosen) <= 4 else 4)
for col, r in zip(cols, chosen):
    rep = reports.get(r)
    if rep is None:
        continue
    col.markdown(f"**{lab.get(r, r)}**")
    col.write(rep.verdict(strong="**"))
    col.caption(rep.interval_text())
    col.write(rep.safe_text(strong="**"))
    col.caption(rep.fit_text())
    if measure != "degradation_pct":  # the token-weighted change stays visible, labelled
        tw = analysis_for(r, level, cutoffs)
        if tw is not None:
            col.caption(f"Token-weighted perplexity change: {tw.verdict()}")


@timed_fragment
def read_off() -> None:
    """The slider and what it reads: only this part reruns when the slider moves (the chart,
    the fits and the bootstrap intervals above stay as they are)."""
    lo, hi = int(curves["scale"].min()), int(curves["scale"].max())
    marker = None
    focus = chosen[0]
    if lo < hi:
        values = analysis.log_slider_values(lo, hi)
        c1, c2 = st.columns([3, 1])
        x = c1.select_slider(
            "Dataset size (log-spaced)",
            values,
            value=values[len(values) // 2],
            format_func=lambda v: f"{int(v):,}",
            key="scale_slider",
        )
        focus = c2.selectbox(
            "Read off run", [r for r in chosen if r in set(curves.run_id)], format_func=lab.get
        )
        c = curves[curves.run_id == focus]
        if c["scale"].min() <= x <= c["scale"].max():
            ip = analysis.interpolate(c["scale"], c["mean"], x)
            marker = {"x": x, **ip}
    else:
        x = lo

    if marker:
        phase = analysis.classify(marker["value"], cutoffs)
        kind = (
            "measured"
            if marker["kind"] == "measured"
            else f"interpolated in log space between measured {marker['lo']:,.0f} and {marker['hi']:,.0f}"
        )
        st.metric(f"Degradation at {x:,} samples", charts.pct_label(marker["value"]), help=kind)
        st.caption(f"**{kind}** · phase: **{phase}** · run: {lab.get(focus, focus)}")

    nearest = analysis.nearest_scale(curves[curves.run_id == focus]["scale"], x)
    st.subheader(f"Nearest measured point: {nearest:,} samples")
    near = pts[(pts.run_id == focus) & (pts.scale == nearest)]
    table(
        near[
            [
                "seed",
                "status",
                *dict.fromkeys(["degradation_pct", measure]),
                "domain_improvement_pct",
                "smoke_ok",
                "general_ppl_before",
                "general_ppl_after",
                "domain_ppl_before",
                "domain_ppl_after",
            ]
        ]
    )
    gens = generations_for(focus, nearest, int(near.seed.iloc[0]) if not near.empty else 0)
    if gens.empty and focus.startswith(reference.REF_PREFIX):
        st.caption(
            "This reference set was measured before answers were stored; the re-measured Martz "
            "2025 set (H200, 50-1,000) and your own runs show them here."
        )
    if not gens.empty:
        st.markdown("**Stored smoke-test generations** (greedy decoding)")
        static_table(analysis.smoke_table(gens))
        st.caption(
            "The verdict (ok, why it failed) judges the answer after fine-tuning: no new tokens, "
            "only punctuation, a repetition loop, one word over most of it, few distinct words, or "
            "a copy of the prompt fail it."
        )


st.subheader("Read off any dataset size")
read_off()


own_multi = [
    r for r in chosen if r in measured and len(analysis.available_metrics(pts[pts.run_id == r])) > 1
]
if own_multi:
    with st.expander("Do the forgetting measures agree?"):
        which_m = st.selectbox(
            "Run", own_multi, format_func=lambda r: lab.get(r, r), key="agree_run"
        )
        agree = agreement_for(which_m, level, cutoffs)
        st.caption(
            f"The threshold ({level:g} % or its nats equivalent) and each size's phase under every "
            "measure this run has. Where they differ, the choice of measure decides where the "
            "threshold is; compare with a paper under the measure it used."
        )
        table(agree.table.drop(columns="metric"))
        static_table(agree.phases.reset_index())


st.subheader("What was forgotten")
with_items = [r for r in chosen if r in measured and not items_for(r).empty]
if not with_items:
    st.caption(
        "None of the chosen runs stored per-statement losses (reference sets measured before "
        "they were stored do not have them; the re-measured Martz 2025 set and your own runs do)."
    )
else:
    which = st.selectbox(
        "Run", with_items, format_func=lambda r: lab.get(r, r), key="forgotten_run"
    )
    items = items_for(which)
    matrix = forgotten.item_change(items)
    if matrix.empty:
        st.caption("This run stored no per-statement losses.")
    else:
        probe = data.load_probe(spec_for(which).probe)
        texts = {i: probe[i] for i in matrix.index if 0 <= int(i) < len(probe)}
        first = forgotten.first_crossing(matrix, level)
        st.plotly_chart(charts.item_heatmap(matrix, first, texts), key="forgotten_heatmap")
        st.caption(
            f"Each statement's own perplexity change (mean over seeds); x: the first measured "
            f"size at which it reached {level:g} %."
        )
        table(forgotten.forgotten_table(items, texts, level))
    mc = mc_items_for(which)
    if mc.empty:
        st.caption(
            "This run stored no per-question multiple-choice results (multiple choice off, or a "
            "run or reference set made before they were stored)."
        )
    else:
        st.markdown("**Multiple-choice questions that flipped from right to wrong**")
        questions = data.load_mc()
        named = {i: (q.question, q.options[q.answer]) for i, q in enumerate(questions)}
        table(forgotten.mc_flip_counts(mc))
        flips = forgotten.mc_flip_table(mc, named)
        if flips.empty:
            st.caption("No question the base model answered right was answered wrong after.")
        else:
            table(flips)
            st.caption(
                "Questions the base model answered right and a fine-tuned model got wrong: the "
                "smallest size at which any seed did, and the share of seeds wrong at the "
                "largest size."
            )
    strip = forgotten.answer_strip(generations_for(which))
    if not strip.empty:
        st.markdown("**Smoke-test answers across sizes** (greedy decoding, one seed)")
        static_table(strip.rename(columns=str).reset_index())
