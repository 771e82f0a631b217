"""Launch a sweep and watch it run. Training happens in a background worker process."""

import dataclasses

import streamlit as st

from core import analysis, charts, data, runner
from core.config import (
    PRESETS,
    SETTINGS,
    SWEEP_AXES,
    RunSpec,
    field_choices,
    field_help,
    field_labels,
    pack_groups,
    parse_float_list,
    parse_int_list,
    preset,
    run_name,
    sweep_series,
)
from core.errors import LabError
from core.labels import POINT_SUMMARY
from core.progress import format_eta, run_progress
from pages._ui import (
    ACTIVE,
    QUICK_CPU_TIME,
    REFRESH_S,
    changed,
    label,
    read,
    runs,
    store,
    table,
    via_app,
)

via_app(__file__)

st.title("Launch a sweep")
st.caption(
    "Each dataset size gets a fresh adapter trained on that many domain samples; general-knowledge "
    "perplexity, domain perplexity and a generation smoke test are measured before and after."
)

if "flash" in st.session_state:
    st.success(st.session_state.pop("flash"), icon=":material/check_circle:")
df = runs()
any_active = not df.empty and bool(df["status_effective"].isin(ACTIVE).any())
if not any_active and (busy := runner.machine_busy()):
    st.warning(busy, icon=":material/speed:")
if df.empty:
    quick = preset("quick-cpu")
    st.info(
        "**Welcome.** No runs yet. The *quick-cpu* preset fine-tunes the embedded SmolLM2-135M on "
        f"{quick.domain} text at {len(quick.scales)} dataset sizes "
        f"({quick.scales[0]} → {quick.scales[-1]} samples) and measures its forgetting curve "
        f"{QUICK_CPU_TIME}.",
        icon=":material/waving_hand:",
    )
    if st.button("▶ Start quick-cpu now", type="primary", key="quickstart"):
        try:
            st.session_state["watch"] = runner.launch(store(), quick)
            changed()
            st.session_state["flash"] = (
                "Started quick-cpu. Its progress is right below; it trains in a background "
                "process, so you can leave this page or close the browser."
            )
            st.rerun()
        except LabError as e:
            st.error(str(e))

if any_active or "watch" in st.session_state:
    st.subheader("Progress")
    progress_slot = st.container()
else:
    progress_slot = None

# The form's label of each setting, so an error names the field the user sees. The sweep boxes
# (domain, rank, replay, learning rate: config.SWEEP_AXES) take several values, are labelled
# "<the setting's label>(s)", and sweep_series() names their problems by the axis' word
# ("domain", "rank", "replay", "learning_rate").
FORM_LABELS = field_labels()
for _name, _, _word, _ in SWEEP_AXES:
    FORM_LABELS[_name] = FORM_LABELS[_word] = f"{FORM_LABELS[_name]}(s)"


def as_text(v: float) -> str:
    """A preset's number in a text box, short when that loses nothing ('5e-05', '0.1')."""
    short = f"{v:g}"
    return short if float(short) == v else repr(v)


def field_label(name: str) -> str:
    return FORM_LABELS[name]


def in_form_words(problem: str) -> str:
    """'lora_rank: 2048 is larger ...' -> '**LoRA rank(s)**: 2048 is larger ...'."""
    field, sep, rest = problem.partition(":")
    if sep and field.strip() in FORM_LABELS:
        return f"**{FORM_LABELS[field.strip()]}**:{rest}"
    return problem


with st.expander("Add your own domain (upload)"):
    st.caption(
        "One sentence per line (.txt), a CSV with a 'text' column, or JSONL with a \"text\" field; "
        f"UTF-8, at most {data.MAX_UPLOAD_BYTES // 2**20} MB, at least {data.MIN_SENTENCES} distinct rows. "
        "A fifth of the rows is held out for evaluation."
    )
    up = st.file_uploader("Domain file", type=["txt", "csv", "jsonl"], key="domain_upload")
    new_name = st.text_input("Domain name", key="domain_name", placeholder="e.g. contracts")
    if st.button("Add domain", disabled=up is None):
        try:
            rows = data.parse_upload(up.name, up.getvalue())
            data.save_uploaded_domain(new_name.strip().lower(), rows)
            st.success(
                f"Added domain '{new_name.strip().lower()}' with {len(rows)} rows; pick it in the form below."
            )
        except LabError as e:
            st.error(f"Not added: {e}")

with st.expander("New run", expanded=not df.empty and not any_active):
    pname = st.selectbox(
        "Preset",
        list(PRESETS),
        index=list(PRESETS).index("quick-cpu"),
        help="Starting values for the form below.",
    )
    base = preset(pname)

    # Widgets for a RunSpec field, built from its metadata (label, help, choices, bounds, step),
    # starting at the preset's value.
    def choice(where, name: str, **kw):
        opts = field_choices(name)
        index = opts.index(getattr(base, name))
        return where.selectbox(field_label(name), opts, index=index, help=field_help(name), **kw)

    def number(where, name: str, label: str = "", **kw):
        m = SETTINGS[name].metadata
        cast = int if SETTINGS[name].type == "int" else float
        lo = m.get("form_min", m["lo"])
        for key in ("step", "format"):
            if key in m:
                kw.setdefault(key, m[key])
        return where.number_input(
            label or field_label(name),
            cast(lo),
            cast(m["hi"]),
            getattr(base, name),
            help=field_help(name),
            **kw,
        )

    def text(where, name: str):
        return where.text_input(field_label(name), getattr(base, name), help=field_help(name))

    def switch(where, name: str):
        return where.checkbox(field_label(name), getattr(base, name), help=field_help(name))

    def several(where, name: str, example: str, why: str = ""):
        """A sweep box (config.SWEEP_AXES): one value, or several that queue one run each."""
        noun = next(n for a, _, _, n in SWEEP_AXES if a == name)
        return where.text_input(
            field_label(name),
            as_text(getattr(base, name)),
            help=f"{field_help(name)} Several (e.g. {example}) queue one run per {noun}.{why}",
        )

    with st.form(f"launch-{pname}"):
        c1, c2, c3 = st.columns(3)
        model = text(c1, "model")
        method = choice(c2, "method")
        domains = data.list_domains()
        chosen = c3.multiselect(
            field_label("domain"),
            domains,
            default=[base.domain if base.domain in domains else domains[0]],
            help=field_help("domain") + " Several queue one run per domain, trained together: "
            "in one packed pass where the method packs (LoRA on a GPU).",
        )
        c1, c2, c3 = st.columns(3)
        scales = c1.text_input(
            field_label("scales"), ", ".join(map(str, base.scales)), help=field_help("scales")
        )
        seeds = c2.text_input(
            field_label("seeds"), ", ".join(map(str, base.seeds)), help=field_help("seeds")
        )
        epochs = number(c3, "epochs")
        c1, c2, c3 = st.columns(3)
        lr = several(c1, "learning_rate", "5e-5, 1e-4")
        rank = several(c2, "lora_rank", "4,8,16")
        alpha = number(c3, "lora_alpha")
        with st.expander("More settings"):
            c1, c2, c3 = st.columns(3)
            max_length = number(c1, "max_length")
            batch = number(c2, "batch_size")
            construction = choice(c3, "construction")
            c1, c2, c3 = st.columns(3)
            probe = choice(c1, "probe")
            targets = text(c2, "target_modules")
            device = choice(c3, "device")
            c1, c2, c3 = st.columns(3)
            backend = choice(c1, "backend")
            ray_address = text(c2, "ray_address")
            ray_gpus = number(c3, "ray_gpus_per_unit")
            c1, c2 = st.columns([1, 2])
            precision = choice(c1, "precision")
            name = text(c2, "name")
            c1, c2 = st.columns([1, 2])
            alpha_2r = c1.checkbox("alpha = 2 × rank (Rathore et al. 2025)", value=False)
            compile_step = switch(c2, "compile_step")
        with st.expander("Mitigation and checks (replay, warm-up, in-training smoke test)"):
            c1, c2, c3 = st.columns(3)
            replay = several(
                c1, "replay", "0, 0.05, 0.1, 0.3", " The Mitigation page plans from such a sweep."
            )
            warmup = number(c2, "warmup_ratio")
            clip = number(c3, "grad_clip", "Gradient clip (0 = off)")
            c1, c2, c3 = st.columns(3)
            smoke_every = number(c1, "smoke_every", "Smoke test every N steps (0 = off)")
            smoke_stop = switch(c2, "smoke_stop")
            spectral = switch(c3, "spectral")
            c1, c2, c3 = st.columns(3)
            intruder_k = number(c1, "intruder_k")
            intruder_eps = number(c2, "intruder_eps")
            headline = choice(
                c3, "headline_metric", format_func=lambda m: analysis.METRICS[m].title
            )
        with st.expander("ADAPT-Q and quantization (methods adaptq, qlora)"):
            st.caption(
                "ADAPT-Q (Martz 2025) trains the K = ⌊fraction × L⌋ blocks chosen below in full "
                "rank and keeps the others frozen at the chosen precision. 2-bit is not offered: "
                "bitsandbytes has no 2-bit layers."
            )
            c1, c2, c3, c4 = st.columns(4)
            fraction = c1.selectbox(
                field_label("adaptq_fraction"),
                (0.1, 0.2, 0.5, 1.0),
                index=(0.1, 0.2, 0.5, 1.0).index(base.adaptq_fraction)
                if base.adaptq_fraction in (0.1, 0.2, 0.5, 1.0)
                else 2,
                help=field_help("adaptq_fraction"),
            )
            selection = choice(c2, "adaptq_selection")
            bits = choice(
                c3,
                "frozen_bits",
                format_func=lambda b: {4: "4-bit NF4", 8: "8-bit", 16: "16-bit"}[b],
            )
            order = choice(c4, "quant_order")
        submitted = st.form_submit_button("Queue run", type="primary")
    if submitted:
        try:
            spec = RunSpec.from_dict(
                {
                    **base.to_dict(),
                    "model": model,
                    "method": method,
                    "domain": chosen[0] if chosen else base.domain,
                    "scales": parse_int_list(scales, "scales"),
                    "seeds": parse_int_list(seeds, "seeds"),
                    "epochs": int(epochs),
                    "lora_alpha": float(alpha),
                    "max_length": int(max_length),
                    "batch_size": int(batch),
                    "construction": construction,
                    "probe": probe,
                    "target_modules": targets,
                    "device": device,
                    "name": name,
                    "warmup_ratio": float(warmup),
                    "grad_clip": float(clip),
                    "smoke_every": int(smoke_every),
                    "smoke_stop": bool(smoke_stop),
                    "spectral": bool(spectral),
                    "intruder_k": int(intruder_k),
                    "intruder_eps": float(intruder_eps),
                    "headline_metric": headline,
                    "adaptq_fraction": float(fraction),
                    "adaptq_selection": selection,
                    "frozen_bits": int(bits),
                    "quant_order": order,
                    "backend": backend,
                    "ray_address": ray_address,
                    "ray_gpus_per_unit": float(ray_gpus),
                    "precision": precision,
                    "compile_step": bool(compile_step),
                }
            )
            specs = sweep_series(
                spec,
                ranks=parse_int_list(rank, "rank"),
                replays=parse_float_list(replay, "replay"),
                learning_rates=parse_float_list(lr, "learning_rate"),
                alpha_2r=alpha_2r,
                domains=tuple(chosen),
            )
            if name.strip() == base.name:  # not renamed: say what differs from the preset
                specs = [dataclasses.replace(sp, name=run_name(pname, sp)) for sp in specs]
            ids = runner.launch_group(store(), specs)  # all checked before any is stored
            changed()
            st.session_state["watch"] = ids[0]
            groups = [len(g) for g in pack_groups(specs)]
            together = (
                f" Queued as {len(groups)} group(s) of {', '.join(map(str, groups))} run(s): a "
                "group trains on one loaded model, in one packed pass where the method packs."
                if max(groups) > 1
                else ""
            )
            st.session_state["flash"] = (
                f"Queued {len(ids)} run(s) ({', '.join(f'`{i}`' for i in ids)}), "
                f"{len(spec.points())} point(s) each.{together} They train in a background "
                "process: closing the browser does not stop them."
            )
            st.rerun()
        except LabError as e:
            problems = [in_form_words(p) for p in str(e).split("; ")]
            st.error(
                "**Not queued** — fix the field(s) named below:\n\n"
                + "\n".join(f"- {p}" for p in problems),
                icon=":material/error:",
            )


def series_state(run_id: str):
    """(run with its liveness, spec, points, progress) of one run: what the panel shows."""
    with store().reading():  # the refresh's reads share one database connection
        run = read("get_run", run_id)
        spec = read("get_spec", run_id)
        pts = read("points_df", (run_id,))
        prog = read("progress_df", run_id)
        info = read("run_info", run_id)
    run = runner.with_status(run)  # liveness: checked at every refresh
    return run, spec, pts, run_progress(spec, run["status_effective"], pts, prog, info)


def live_points(rp, prefix: str = "") -> None:
    """A bar per point in training (the first four)."""
    for p in rp.live[:4]:
        if p.phase == "training" and p.total:
            loss = f" · loss {p.loss:.3f}" if p.loss is not None else ""
            st.progress(
                min(p.step / p.total, 1.0),
                text=f"{prefix}{p.scale:,} samples, seed {p.seed}: training step "
                f"{p.step}/{p.total}{loss}",
            )


def group_panel(members: list[str], names: dict[str, str]) -> None:
    """Every series of a group (runs queued together, trained on one loaded model, in one
    packed pass where the method packs): its whole-run bar and the points it trains now."""
    st.caption(
        f"Trained together with {len(members) - 1} other series (one group): a stop stops "
        "them all, and resume continues them together."
    )
    for r in members:
        run, _, _, rp = series_state(r)
        status = run["status_effective"]
        eta = format_eta(rp.eta_s) if status == "running" else status
        name = names.get(r, r)
        st.progress(
            rp.fraction,
            text=f"{name}: {rp.points_text()} · {eta}",
        )
        if status == "running":
            live_points(rp, f"{name} · ")


def run_buttons(run: dict, status: str, grouped: bool, where) -> None:
    run_id = run["run_id"]
    what = "group" if grouped else "run"
    if status in ACTIVE and where[0].button(f"Cancel {what}", key=f"cancel-{run_id}"):
        try:
            st.toast(f"{runner.cancel(store(), run_id)}")
            changed()
        except LabError as e:
            st.error(str(e))
    if runner.can_resume(run) and where[1].button("Resume", key=f"resume-{run_id}"):
        try:
            runner.resume_background(store(), run_id)
            changed()
            st.toast(
                f"queued again{' with its group' if grouped else ''}; finished points are kept"
            )
            st.rerun()  # the whole page: the panel refreshes itself again while it runs
        except LabError as e:
            st.error(str(e))


def panel() -> None:
    all_runs = runs()
    if all_runs.empty:
        st.caption("No runs yet. Start one above; its progress bars and loss curves appear here.")
        return
    lab = {
        r["run_id"]: f"[{r['status_effective']}] {label(r)}" for r in all_runs.to_dict("records")
    }
    watch = st.session_state.get("watch")
    ids = list(lab)
    idx = ids.index(watch) if watch in ids else 0
    run_id = st.selectbox("Watch run", ids, index=idx, format_func=lab.get, key="watch_select")
    run, _, pts, rp = series_state(run_id)
    members = [r for r in all_runs.set_index("run_id").group[run_id] if r in lab]
    status = run["status_effective"]
    if status in ACTIVE:  # remembered for this session: when it ends, its results stay above
        st.session_state["watch"] = run_id  # the form (also when the page was opened mid-run)
    color = {"running": "blue", "queued": "gray", "done": "green", "failed": "red"}.get(
        status, "orange"
    )
    c1, c2, c3 = st.columns([2, 1, 1])
    c1.markdown(f"#### Status: :{color}[{status}]")
    if run["error"]:
        c1.caption(run["error"])
    if st.session_state.get("_panel_active") and not all_runs.status_effective.isin(ACTIVE).any():
        st.session_state["_panel_active"] = False
        st.rerun()  # the whole page: the form opens again and the refresh stops
    run_buttons(run, status, len(members) > 1, (c2, c3))
    if len(members) > 1:  # a bar per series, the watched one among them
        names = dict(zip(all_runs.run_id, all_runs.name.fillna("")))
        group_panel(members, {r: names.get(r) or r for r in members})
    else:
        eta = format_eta(rp.eta_s) if status == "running" else status
        st.progress(
            rp.fraction,
            text=f"Whole run: {rp.points_text()} · {eta}",
        )
    if status == "running":
        st.caption(f"Now: {rp.stage}")
        if len(members) <= 1:
            live_points(rp)
        training = [p for p in rp.live if p.phase == "training"]
        # The loss curve on demand: redrawn at every refresh it costs the server and the
        # browser CPU that the training shares on a small machine (bench/app_overhead.py).
        if training and st.toggle("Show the loss curve", key="show_loss", value=False):
            p = training[-1]
            losses = read("losses_df", run_id)
            cur = losses[(losses.scale == p.scale) & (losses.seed == p.seed)]
            if len(cur) > 1:
                st.plotly_chart(
                    charts.loss_sparkline(cur), key="spark", config={"displayModeBar": False}
                )
    elif status == "done":
        st.markdown("**Results:**")
        c1, c2, c3 = st.columns(3)
        c1.page_link("pages/threshold.py", label="Threshold curve", icon=":material/show_chart:")
        c2.page_link("pages/phases.py", label="Phases", icon=":material/timeline:")
        c3.page_link("pages/smoke_test.py", label="Smoke test", icon=":material/chat:")
    if not pts.empty:
        table(pts[[*POINT_SUMMARY, "train_seconds", "eval_seconds"]])


# The panel refreshes itself every REFRESH_S while a run is queued or running (a fragment: the rest of
# the page is not rerun), and reruns the page once when the run ends so the refresh stops.
st.session_state["_panel_active"] = any_active
live_panel = st.fragment(run_every=REFRESH_S if any_active else None)(panel)
if progress_slot is not None:
    with progress_slot:
        live_panel()
else:
    st.subheader("Progress")
    live_panel()
