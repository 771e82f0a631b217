"""Streamlit helpers shared by the pages: the store, run pickers, the sidebar, error display."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import analysis, reference
from core import labels as column_labels
from core.config import headline_measure
from core.errors import LabError
from core.paths import resolve_db
from core.runner import runs_with_status
from core.store import Store

ACTIVE = ("queued", "running")
# How often live parts (the Launch page's panel, the sidebar's run list) refresh while a run is
# active: each refresh costs the server and the browser CPU that a run on a small machine shares.
REFRESH_S = 5.0
# How long the quick-cpu preset takes, said the same way on every page; the measurement (97 s on
# two CPU cores, bench/results) lives in the README's quick-start section, not here.
QUICK_CPU_TIME = "in under two minutes on two otherwise idle CPU cores (measured in the README)"


def via_app(page_file: str) -> None:
    """Every page runs through app.py (page config, navigation, sidebar). A deep link opened
    on a freshly started server runs the page on its own (Streamlit's older pages/ mode): send
    it through app.py, which then opens the page that was asked for."""
    if st.session_state.get("_nav_ready"):
        return
    st.session_state["_deeplink"] = Path(page_file).name
    st.switch_page("app.py")


@st.cache_resource
def _store(path: str) -> Store:
    return Store(path)


def store() -> Store:
    return _store(str(resolve_db(None)))


@st.cache_data(max_entries=4, show_spinner=False)
def _list_runs(db: str, version: tuple) -> pd.DataFrame:
    return _store(db).list_runs()


def db_version(db: Path) -> tuple:
    """Changes whenever the database file or its write-ahead log is written: cached reads are
    keyed on it, so they are fresh after every write and free otherwise."""
    out = []
    for f in (db, db.with_name(db.name + ".wal")):
        try:
            st_ = f.stat()
            out += [st_.st_mtime_ns, st_.st_size]
        except OSError:
            out += [0, 0]
    return tuple(out)


def list_runs() -> pd.DataFrame:
    """The runs table; the sidebar and the page share one read until the database changes."""
    db = resolve_db(None)
    # a worker can die without a write: liveness is checked at every read, outside the cache
    return runs_with_status(_list_runs(str(db), db_version(db)))


def changed() -> None:
    """Call after writing runs (launch, cancel, resume, delete): the next read is fresh."""
    _list_runs.clear()


def runs() -> pd.DataFrame:
    try:
        return list_runs()
    except LabError as e:
        st.error(str(e))
        st.stop()


def label(row) -> str:
    name = row["name"] or "run"
    rank = (
        "" if row["method"] == "full" or pd.isna(row["lora_rank"]) else f" r{int(row['lora_rank'])}"
    )
    return (
        f"{name} · {row['model']} · {row['method']}{rank} · {row['domain']} ({row['run_id'][-6:]})"
    )


def labels(df: pd.DataFrame) -> dict[str, str]:
    return {r["run_id"]: label(r) for r in df.to_dict("records")}


def pick_runs(
    df: pd.DataFrame,
    key: str,
    help: str = "",
    max_default: int = 3,
    with_reference: bool = True,
    default_sets: tuple[str, ...] = (reference.REF_NAME,),
) -> list[str]:
    """Multiselect of runs that have finished points (newest first), plus the shipped reference
    runs; defaults to the newest own runs, or to the runs of the reference sets `default_sets`
    when there are none."""
    have = df[df["points_done"] > 0] if not df.empty else df
    lab = labels(have)
    ref = reference.runs() if with_reference else pd.DataFrame()
    ref_ids = list(ref.get("run_id", []))
    main_ref = list(ref[ref.ref_set.isin(default_sets)].run_id) if not ref.empty else []
    lab.update({r: reference.label(r) for r in ref_ids})
    if not lab:
        return []
    own = [r for r in lab if r not in ref_ids]
    chosen = st.multiselect(
        "Runs",
        list(lab),
        default=own[:max_default] if own else main_ref,
        format_func=lab.get,
        key=key,
        help=help
        or "Your runs with finished points, and the shipped reference runs (measured by us on an "
        "H100, an H200 or a CPU, see docs/RESULTS.md; read-only).",
    )
    _note_unfinished(have, chosen)
    return chosen


def _note_unfinished(df: pd.DataFrame, chosen: list[str]) -> None:
    """Say which chosen runs are still queued or training: their curves, thresholds and fits
    are drawn from the points finished so far and will change."""
    if df.empty or not chosen:
        return
    live = df[df["run_id"].isin(chosen) & df["status_effective"].isin(ACTIVE)]
    if live.empty:
        return
    runs_text = "; ".join(
        f"{label(r)}: {int(r['points_done'])} of {int(r['n_points'])} points done"
        for r in live.to_dict("records")
    )
    st.info(
        f"Still running — {runs_text}. Its curve, threshold and fits use the points finished so "
        "far and will change as the rest arrive.",
        icon=":material/hourglass_top:",
    )


def all_labels(df: pd.DataFrame) -> dict[str, str]:
    lab = labels(df)
    lab.update({r: reference.label(r) for r in reference.runs().get("run_id", [])})
    return lab


def _own_and_reference(run_ids, from_store, from_reference) -> pd.DataFrame:
    """Rows of own runs (from the database) and of reference runs (from the shipped files)."""
    own = [r for r in run_ids if not r.startswith(reference.REF_PREFIX)]
    refs = [r for r in run_ids if r.startswith(reference.REF_PREFIX)]
    parts = [from_store(own)] if own else []
    if refs:
        ref = from_reference()
        if not ref.empty:
            parts.append(ref[ref.run_id.isin(refs)])
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


@st.cache_data(max_entries=128, show_spinner=False)
def _read(db: str, version: tuple, method: str, *args) -> pd.DataFrame:
    return getattr(_store(db), method)(*args)


def read(method: str, *args) -> pd.DataFrame:
    """A Store read (`read("item_nll_df", run_id)`), cached until the database changes: moving a
    slider or coming back to a page reruns the script without opening the database."""
    db = resolve_db(None)
    return _read(str(db), db_version(db), method, *args)


def points_for(run_ids: list[str]) -> pd.DataFrame:
    df = _own_and_reference(run_ids, lambda ids: read("points_df", tuple(ids)), reference.points)
    return df if not df.empty else read("points_df", ())  # keep the columns


def spectral_for(run_ids: list[str]) -> pd.DataFrame:
    return _own_and_reference(
        run_ids, lambda ids: read("spectral_df", tuple(ids)), reference.spectral
    )


def headline_for(run_ids: list[str]) -> str:
    """The forgetting measure the chosen runs' settings name as their headline
    (`config.headline_measure`: the paper-000 protocol's is Martz 2025's per-statement
    aggregation, the shipped reference sets made with it included) when they all name the same
    one; else the token-weighted change."""
    heads = set()
    for r in run_ids:
        try:
            heads.add(headline_measure(spec_for(r)))
        except LabError:
            heads.add("degradation_pct")
    return heads.pop() if len(heads) == 1 else "degradation_pct"


MEASURE_HELP = (
    "Which forgetting measure {what} use. Token-weighted: total loss over all probe tokens. Per "
    "statement: the mean of each statement's perplexity (Martz 2025, scale-dependent "
    "forgetting). Cross-entropy change: peft's method comparison. KL to the base: "
    'Kalajdzievski 2024, "Scaling laws for forgetting when fine-tuning LLMs". Only measures the '
    "selected runs have are offered (older runs lack the newer ones); the default is the "
    "runs' headline measure (their settings' headline_metric; Martz 2025's per-statement "
    "aggregation for runs that follow the paper-000 protocol)."
)


def measure_select(points: pd.DataFrame, run_ids: list[str], key: str, what: str) -> str:
    """The 'Forgetting measure' select every page that charts forgetting shows: the measures of
    `analysis.METRICS` the points have values of, the runs' headline measure first chosen, and
    the note on nats measures. Returns the chosen column name."""
    measures = analysis.available_metrics(points) or ["degradation_pct"]
    head = analysis.headline_metric(points, headline_for(run_ids))
    measure = st.selectbox(
        "Forgetting measure",
        measures,
        index=measures.index(head) if head in measures else 0,
        format_func=lambda m: analysis.METRICS[m].title,
        key=key,
        help=MEASURE_HELP.format(what=what),
    )
    if analysis.METRICS[measure].unit == "nats":
        st.caption(
            "This measure is in nats (d); charts, levels and phase cut-offs show it as its "
            "perplexity-ratio equivalent (e^d − 1) × 100 %. For the cross-entropy change this is "
            "exactly the token-weighted perplexity change."
        )
    lacking = analysis.runs_without(points[points.run_id.isin(run_ids)], measure)
    if lacking:
        st.caption(
            f"{len(lacking)} of the chosen runs have no values of "
            f"**{analysis.METRICS[measure].title}** (measured before it existed, or a method that "
            "cannot provide it) and are not drawn under it"
            + ("; the token-weighted change shows them." if measure != "degradation_pct" else ".")
        )
    if measure == head != "degradation_pct":
        st.caption(
            f"**{analysis.METRICS[measure].title}** is the headline measure of these runs' "
            "settings; the token-weighted change stays selectable and is shown beside it."
        )
    return measure


@st.cache_data(max_entries=256, show_spinner=False)
def _analysis(
    db: str, version: tuple, run_id: str, level: float, cutoffs: tuple, metric: str
) -> analysis.ThresholdReport | None:
    pts = points_for([run_id])
    items = items_for(run_id)
    try:
        return analysis.threshold_report(pts, items, level, cutoffs, n_boot=500, metric=metric)
    except ValueError:
        return None


def analysis_for(
    run_id: str, level: float, cutoffs, metric: str = "degradation_pct"
) -> analysis.ThresholdReport | None:
    """`analysis.threshold_report` of one run (threshold, bootstrap interval, fits) under one
    forgetting measure, cached until the database changes or the level / cut-offs do. A shipped
    reference run's report does not depend on the database: a run writing its progress does not
    make the page recompute it."""
    db = resolve_db(None)
    version = () if run_id.startswith(reference.REF_PREFIX) else db_version(db)
    return _analysis(str(db), version, run_id, float(level), tuple(cutoffs), metric)


@st.cache_data(max_entries=64, show_spinner=False)
def _agreement(
    db: str, version: tuple, run_id: str, level: float, cutoffs: tuple
) -> analysis.MeasureAgreement:
    return analysis.measure_agreement(points_for([run_id]), items_for(run_id), level, cutoffs)


def agreement_for(run_id: str, level: float, cutoffs) -> analysis.MeasureAgreement:
    """`analysis.measure_agreement` of one run (a threshold report per measure), cached like
    `analysis_for`: a rerun for another widget does not redo its bootstraps."""
    db = resolve_db(None)
    version = () if run_id.startswith(reference.REF_PREFIX) else db_version(db)
    return _agreement(str(db), version, run_id, float(level), tuple(cutoffs))


def run_info_for(run_id: str) -> dict:
    if run_id.startswith(reference.REF_PREFIX):
        return reference.run_info(run_id)
    return read("run_info", run_id)


def items_for(run_id: str) -> pd.DataFrame:
    """Per-statement losses of an own run (database) or a reference run (shipped files)."""
    if run_id.startswith(reference.REF_PREFIX):
        return reference.items(run_id)
    return read("item_nll_df", run_id)


def mc_items_for(run_id: str) -> pd.DataFrame:
    """Per-question multiple-choice results of an own run (database) or a reference run."""
    if run_id.startswith(reference.REF_PREFIX):
        return reference.mc_items(run_id)
    return read("mc_items_df", run_id)


def generations_for(run_id: str, *point) -> pd.DataFrame:
    """Smoke-test answers of an own run (database) or a reference run (shipped files); with
    `scale, seed`, that point's and the base model's."""
    if run_id.startswith(reference.REF_PREFIX):
        return reference.generations(run_id, *point)
    return read("generations_df", run_id, *point)


def spec_for(run_id: str):
    """The settings of an own run (database) or a reference run (its provenance), or None."""
    if run_id.startswith(reference.REF_PREFIX):
        return reference.spec(run_id)
    return read("get_spec", run_id)


@st.cache_data(max_entries=8, show_spinner=False)
def _export(db: str, version: tuple, fmt: str, run_ids: tuple | None) -> tuple[int, bytes]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / f"points.{fmt}"
        n = _store(db).export(out, fmt, list(run_ids) if run_ids is not None else None)
        return n, out.read_bytes()


def export_bytes(fmt: str, run_ids: list[str] | None) -> tuple[int, bytes]:
    """(rows, file contents) of the export (DuckDB writes CSV/Parquet), cached until the
    database changes."""
    db = resolve_db(None)
    return _export(str(db), db_version(db), fmt, tuple(run_ids) if run_ids else None)


def no_results(what: str = "results") -> None:
    st.info(
        f"No {what} yet. Start a run on the **Launch** page — the *quick-cpu* preset measures a "
        f"real forgetting curve on the embedded model {QUICK_CPU_TIME}.",
        icon=":material/info:",
    )


def _sidebar_runs() -> None:
    try:
        df = list_runs()
    except LabError as e:
        st.error(str(e))
        return
    active = df[df["status_effective"].isin(ACTIVE)] if not df.empty else df
    if st.session_state.get("_sidebar_active") and active.empty:
        st.session_state["_sidebar_active"] = False
        st.rerun()  # the whole page once: the refresh stops with the last active run
    if not active.empty:
        st.markdown(f"**{len(active)} run(s) active**")
        for r in active.to_dict("records"):
            group = len(r["group"])  # runs queued together train together
            st.caption(
                f"{r['status_effective']}: {r['name'] or r['run_id']} — "
                f"{r['points_done']}/{r['n_points']} points done"
                + (f" (one of a group of {group})" if group > 1 else "")
            )
    else:
        st.caption(f"{len(df)} run(s) stored, none active")


def sidebar() -> None:
    """The database and the active runs; while a run is active the list refreshes itself with
    the Launch page's panel (every REFRESH_S), so the two never disagree for long."""
    with st.sidebar:
        st.caption(f"Database: `{resolve_db(None).name}` in the lab home")
        try:
            df = list_runs()
        except LabError as e:
            st.error(str(e))
            return
        active = not df.empty and bool(df["status_effective"].isin(ACTIVE).any())
        st.session_state["_sidebar_active"] = active
        st.fragment(run_every=REFRESH_S if active else None)(_sidebar_runs)()


def timed_fragment(fn):
    """st.fragment that also records how long its last run took on the server, in
    st.session_state["_fragment_ms"][name]: what a widget inside it costs per interaction
    (bench/app_latency.py reads it)."""
    import functools
    import time

    @functools.wraps(fn)
    def run(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            st.session_state.setdefault("_fragment_ms", {})[fn.__name__] = (
                time.perf_counter() - t
            ) * 1000

    return st.fragment(run)


def column_config(columns, overrides: dict[str, str] | None = None) -> dict:
    """Streamlit column settings from the one map of human labels (core/labels.py);
    `overrides` renames columns whose label depends on the page (e.g. a run's name)."""
    cfg = {}
    for name in columns:
        c = column_labels.col(str(name))
        lab = (overrides or {}).get(name, c.label)
        kw = dict(help=c.help or None, width=c.width)
        if c.kind == "number":
            cfg[name] = st.column_config.NumberColumn(lab, format=c.format, **kw)
        elif c.kind == "time":
            cfg[name] = st.column_config.DatetimeColumn(lab, format="YYYY-MM-DD HH:mm", **kw)
        else:
            cfg[name] = st.column_config.TextColumn(lab, **kw)
    return cfg


def table(df: pd.DataFrame, overrides: dict[str, str] | None = None, **kw) -> None:
    """st.dataframe with human column labels, '—' for missing values and no index."""
    kw.setdefault("hide_index", True)
    verdicts = [c for c in df.columns if column_labels.col(str(c)).kind == "bool"]
    if verdicts:  # "✓ passed" / "✗ failed" (text columns), '—' where there is none
        df = df.copy()
        for c in verdicts:
            df[c] = [column_labels.cell(str(c), v) for v in df[c]]
    st.dataframe(
        df,
        column_config=column_config(df.columns, overrides),
        placeholder=column_labels.MISSING,
        **kw,
    )


def static_table(df: pd.DataFrame) -> None:
    """A table whose long texts wrap (st.table) with the same labels: for a few rows of prose,
    such as smoke-test answers, that a scrolling grid would cut off."""
    shown = pd.DataFrame(
        {column_labels.label(c): [column_labels.cell(c, v) for v in df[c]] for c in df.columns}
    )
    st.table(shown.set_index(shown.columns[0]))
