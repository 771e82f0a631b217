"""Every page through Streamlit's AppTest, on an empty and on a populated database."""

import pytest
from streamlit.testing.v1 import AppTest

from core.store import Store
from tests.conftest import ROOT

PAGES = [
    "launch",
    "threshold",
    "phases",
    "cross_domain",
    "methods",
    "mitigation",
    "smoke_test",
    "pareto",
    "runs",
    "about",
]


def _app(page: str, db, monkeypatch) -> AppTest:
    monkeypatch.setenv("FORGETTING_LAB_DB", str(db))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(f"pages/{page}.py")
    return at.run()


def _threshold_opens_on_both_reference_sets(at: AppTest) -> None:
    """The first view holds the 3-seed fp32 set (to 10,000), its 3-seed re-measurement with every
    measure (to 1,000) and the one-seed bf16 grid (to 25,000), all made with the paper-000
    protocol: it opens under their headline measure, Martz 2025's per-statement change, drawn for
    the re-measured set and the grid (a note says the first set's runs, measured before it
    existed, are not drawn under it); under the token-weighted change the legend tells the sets
    apart by precision, seeds and sizes."""
    import plotly.io as pio

    from core import reference

    refs = reference.runs().set_index("run_id")
    chosen = at.multiselect[0].value
    assert set(refs.loc[chosen, "ref_set"]) == set(reference.THRESHOLD_SETS)
    assert at.selectbox(key="thr_measure").value == "degradation_stmt_pct"
    captions = " ".join(c.value for c in at.caption)
    assert "2 of the chosen runs have no values of" in captions
    assert "headline measure of these runs' settings" in captions
    fig = pio.from_json(at.get("plotly_chart")[0].proto.spec)
    xs = [float(x) for t in fig.data if t.x is not None for x in t.x if isinstance(x, int | float)]
    assert max(xs) >= 25_000
    names = {t.name for t in fig.data}
    assert any("fp32, 3 seed(s), 50–1,000" in (n or "") for n in names)  # with its CIs
    at.selectbox(key="thr_measure").set_value("degradation_pct").run()
    assert not at.exception, at.exception
    fig = pio.from_json(at.get("plotly_chart")[0].proto.spec)
    names = {t.name for t in fig.data}
    assert any("bf16, 1 seed(s)" in (n or "") for n in names)
    assert any("fp32, 3 seed(s), 50–10,000" in (n or "") for n in names)
    assert any("fp32, 3 seed(s), 50–1,000" in (n or "") for n in names)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_empty_database(page, tmp_path, monkeypatch):
    at = _app(page, tmp_path / "empty.duckdb", monkeypatch)
    assert not at.exception, at.exception
    assert at.title
    text = " ".join(m.value for m in at.info) + " ".join(m.value for m in at.markdown)
    if page == "threshold":  # the shipped reference runs are shown before any training
        assert at.get("plotly_chart") and "reference" in at.multiselect[0].format_func(
            at.multiselect[0].value[0]
        )
        assert at.checkbox[1].value  # seed 000's claimed curve is overlaid next to them
        _threshold_opens_on_both_reference_sets(at)
    elif page == "phases":
        assert "reference" in text
    elif page == "cross_domain":  # the reference runs' matrix (2 trained domains x 5 evaluated)
        assert at.get("plotly_chart")
    elif page == "methods":  # the shipped H100 methods comparison, spectral rows, ADAPT-Q profile
        chosen = at.multiselect[0].value
        assert len(chosen) == 4 and all(r.startswith("ref:") for r in chosen)
        assert len(at.get("plotly_chart")) == 4  # curves x2, layer heatmap, profile (one rank)
        assert "blocks trained" in at.table[0].value.index
    elif page == "pareto":  # the reference's points and their front
        assert at.get("plotly_chart")
    elif page == "about":
        assert len(at.subheader) == 6  # four reproduced sources, two forecast anchors
    elif page != "launch":
        assert "No " in text


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_populated_database(page, tiny_run, monkeypatch):
    db, run_id = tiny_run
    at = _app(page, db, monkeypatch)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_empty_database_offers_quick_start(tmp_path, monkeypatch):
    at = _app("launch", tmp_path / "e.duckdb", monkeypatch)
    assert any(b.key == "quickstart" for b in at.button)
    assert "quick-cpu" in at.info[0].value


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("Dataset sizes", "0, 10", "0 is not a positive"),
        ("Dataset sizes", "ten", "'ten' is not a number"),
        ("Dataset sizes", "50, 50", "more than once"),
        ("Dataset sizes", "2e9", "larger than the supported maximum"),
        ("Seeds", "1, 1", "seed appears more than once"),
        ("LoRA rank(s)", "0", "**LoRA rank(s)**: 0 is outside"),
        ("LoRA rank(s)", "4, 4", "rank appears more than once"),
        ("Model", "./no/such/model", "does not exist"),
        ("Target modules", "q_proj;rm -rf", "**Target modules**"),
        ("Ray address", "head\x07", "**Ray address**"),
    ],
)
def test_launch_form_rejects_bad_input_and_stores_nothing(
    field, value, fragment, tmp_path, monkeypatch
):
    db = tmp_path / "l.duckdb"
    at = _app("launch", db, monkeypatch)
    at.selectbox[0].select("tiny-test").run()
    box = next(t for t in at.text_input if t.label == field)
    box.input(value)  # form widgets take effect on submit
    next(b for b in at.button if b.label == "Queue run").click().run()
    assert not at.exception
    msgs = [e.value for e in at.error]
    assert any("Not queued" in m and fragment in m for m in msgs), msgs
    internal = ("lora_rank", "target_modules", "ray_address", "scales:", "seeds:")
    assert not any(name in m for m in msgs for name in internal), msgs  # the form's words
    assert Store(db).list_runs().empty


def test_threshold_slider_moves_the_reading(tiny_run, monkeypatch):
    db, run_id = tiny_run
    at = _app("threshold", db, monkeypatch)
    slider = at.select_slider(key="scale_slider")
    first = at.metric[0].value
    label_first = at.metric[0].label
    values = slider.options
    slider.set_value(values[0]).run()
    assert at.metric[0].label != label_first
    slider.set_value(values[-1]).run()
    assert at.metric[0].label.endswith(f"{values[-1]} samples")
    assert at.metric[0].value != first or values[-1] == values[0]


def test_phase_cutoffs_must_increase(tiny_run, monkeypatch):
    db, _ = tiny_run
    at = _app("threshold", db, monkeypatch)
    at.number_input(key="cut1").set_value(1.0).run()
    assert any("increasing" in e.value for e in at.error)


def test_smoke_test_generates_side_by_side(tiny_run, monkeypatch):
    db, _ = tiny_run
    at = _app("smoke_test", db, monkeypatch)
    at.text_area[0].input("The court held that")
    next(b for b in at.button if b.label == "Generate").click().run()
    assert not at.exception, at.exception
    shown = [m.value for m in [*at.success, *at.error, *at.warning]]
    verdicts = [v for v in shown if "new tokens" in v]  # the two live answers' verdicts
    assert len(verdicts) == 2
    assert len(shown) == 3  # and the point's stored smoke test, above the prompt
    assert any("smoke test stored with this point" in v for v in shown)
    # the point list opens on the point that forgot most
    pick = at.selectbox[1]
    assert "general PPL" in pick.format_func(pick.value)


def test_smoke_test_rejects_empty_prompt(tiny_run, monkeypatch):
    db, _ = tiny_run
    at = _app("smoke_test", db, monkeypatch)
    at.text_area[0].input("   ")
    next(b for b in at.button if b.label == "Generate").click().run()
    assert any("type a prompt" in e.value for e in at.error)


def test_runs_page_deletes_only_after_confirmation(tmp_path, monkeypatch):
    from core import runner
    from core.config import preset

    db = tmp_path / "d.duckdb"
    s = Store(db)
    run_id = runner.create_run(s, preset("tiny-test", scales=(4,)), "running")
    runner.run_foreground(s, run_id)
    at = _app("runs", db, monkeypatch)
    next(b for b in at.selectbox if b.label == "Run to delete").select(run_id).run()
    delete = next(b for b in at.button if b.label == "Delete run")
    assert delete.disabled
    at.checkbox(key="confirm_delete").check().run()
    next(b for b in at.button if b.label == "Delete run").click().run()
    assert Store(db).list_runs().empty


def test_runs_page_tests_the_measure_the_user_picked(tiny_run, tmp_path, monkeypatch):
    """Welch's test per size follows the comparison's forgetting measure, says which, shows a nats
    measure's means in nats; a measure one run lacks (an older run) gives a note, not a crash."""
    import shutil

    import duckdb
    import pandas as pd

    from core import analysis
    from core.config import preset

    db = tmp_path / "w.duckdb"
    shutil.copy(tiny_run[0], db)
    # a second run: the tiny run's points with another KL to the base, seed by seed
    Store(db).create_run("other", preset("tiny-test", seeds=(0, 1)))
    con = duckdb.connect(str(db))
    con.execute(
        "INSERT INTO points SELECT * REPLACE ('other' AS run_id, "
        "kl_to_base * (1.5 + seed) AS kl_to_base) FROM points WHERE run_id = ?",
        [tiny_run[1]],
    )
    con.close()
    at = _app("runs", db, monkeypatch)
    box = at.selectbox(key="runs_measure")
    assert box.value == "degradation_pct"
    box.set_value("kl_to_base").run()
    assert not at.exception, at.exception
    kl = analysis.METRICS["kl_to_base"].title
    assert any("Welch's t-test" in m.value and kl in m.value for m in at.markdown)
    shown = next(d.value for d in at.dataframe if "mean_a_nats" in d.value.columns)
    chosen = next(m for m in at.multiselect if m.label == "Runs to compare").value
    assert set(chosen) == {"other", tiny_run[1]}
    pts = Store(db).points_df(chosen)
    a, b = (pts[pts.run_id == r] for r in chosen)
    want = analysis.welch_by_scale(a, b, "kl_to_base")
    assert len(want) == 3 and list(shown["t"]) == pytest.approx(list(want["t"]))
    assert list(shown["mean_a_nats"]) == pytest.approx(list(want["mean_a"]))
    assert (analysis.welch_by_scale(a, b)["t"] == 0).all()  # the token change is the same
    # an older run has no values of a newer measure
    con = duckdb.connect(str(db))
    con.execute("UPDATE points SET general_ce_delta = NULL WHERE run_id = 'other'")
    con.close()
    at = _app("runs", db, monkeypatch)
    at.selectbox(key="runs_measure").set_value("general_ce_delta").run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("No test: ") for c in at.caption)
    assert not any(
        isinstance(d.value, pd.DataFrame) and "mean_a_nats" in d.value.columns for d in at.dataframe
    )


def test_core_never_imports_streamlit():
    import re

    pattern = re.compile(r"^\s*(import|from)\s+streamlit\b", re.M)
    for path in (ROOT / "core").rglob("*.py"):
        assert not pattern.search(path.read_text()), path


def _core_imports() -> dict[str, set[str]]:
    """Each core module (methods/ as one) -> the core modules it imports, at the top or inside
    a function."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in (ROOT / "core").rglob("*.py"):
        rel = path.relative_to(ROOT / "core")
        name = rel.parts[0] if len(rel.parts) > 1 else path.stem
        inside_methods = len(rel.parts) > 1
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            if inside_methods and node.level == 1:
                continue  # within methods/
            mods = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            deps.update(m for m in mods if m != name)
    return graph


def test_no_import_cycle_among_core_modules():
    graph = _core_imports()
    assert {"engine", "distributed", "store", "runner"} <= set(graph)

    def reaches(start: str, goal: str, seen: set) -> bool:
        for d in graph.get(start, ()):
            if d == goal or (d not in seen and reaches(d, goal, seen | {d})):
                return True
        return False

    cycles = [m for m in graph if reaches(m, m, {m})]
    assert not cycles, {m: sorted(graph[m]) for m in cycles}


def test_threshold_can_show_multiple_choice_accuracy(tiny_run, monkeypatch):
    db, _ = tiny_run
    at = _app("threshold", db, monkeypatch)
    at.radio[0].set_value("multiple choice").run()
    assert not at.exception, at.exception
    assert at.get("plotly_chart") and "Chance level" in " ".join(c.value for c in at.caption)


def test_threshold_offers_every_forgetting_measure(tiny_run, monkeypatch):
    db, _ = tiny_run
    at = _app("threshold", db, monkeypatch)
    box = at.selectbox(key="thr_measure")
    assert box.options == [
        "general perplexity change (token-weighted)",
        "general perplexity change (mean of per-statement perplexities)",
        "change of mean per-token cross-entropy on the general probe",
        "mean per-token KL divergence from the base model on the general probe",
    ]
    box.set_value("kl_to_base").run()
    assert not at.exception, at.exception
    assert at.get("plotly_chart") and any("in nats" in c.value for c in at.caption)


def test_launch_form_takes_bounds_labels_and_help_from_the_settings(tmp_path, monkeypatch):
    """The form's number boxes are built from RunSpec's field metadata: one source of truth."""
    from core.config import SETTINGS

    at = _app("launch", tmp_path / "b.duckdb", monkeypatch)
    assert not at.exception, at.exception
    by_help = {f.metadata["help"]: f.metadata for f in SETTINGS.values()}
    boxes = [n for n in at.number_input if n.help in by_help]
    # the sweep axes (rank, replay, learning rate) are text boxes: they take lists
    assert len(boxes) >= 8, [n.label for n in at.number_input]
    for box in boxes:
        m = by_help[box.help]
        assert box.max == m["hi"] and box.min == m.get("form_min", m["lo"]), box.label
        assert box.label.startswith(m["label"])


def test_launch_form_queues_one_run_per_rank(tmp_path, monkeypatch):
    import core.runner

    monkeypatch.setattr(core.runner, "spawn_worker", lambda db: None)  # queue only, no training
    db = tmp_path / "r.duckdb"
    at = _app("launch", db, monkeypatch)
    at.selectbox[0].select("tiny-test").run()
    next(t for t in at.text_input if t.label == "LoRA rank(s)").input("2, 4")
    next(c for c in at.checkbox if c.label.startswith("alpha = 2")).check()
    next(b for b in at.button if b.label == "Queue run").click().run()
    runs = Store(db).list_runs()
    assert sorted(runs.lora_rank) == [2, 4] and set(runs.status) == {"queued"}


def test_no_sql_outside_the_store():
    import re

    sql = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE FROM|CREATE TABLE)\b")
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "app.py"]:
        if path.name != "store.py":
            assert not sql.search(path.read_text()), path


def _long_functions(root, paths, limit: int) -> list[str]:
    """'file:line name (n lines)' for every function or method longer than `limit` lines."""
    import ast

    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_in_core_or_pages_is_longer_than_100_lines():
    """A newcomer reads a function at once: a longer one is split at its seams (the docstring
    counts)."""
    paths = [*(ROOT / "core").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "app.py"]
    long = _long_functions(ROOT, paths, 100)
    assert not long, long


def test_the_length_check_sees_methods_and_nested_functions(tmp_path):
    body = "\n".join(f"      x{i} = {i}" for i in range(101))
    f = tmp_path / "m.py"
    f.write_text(f"class C:\n  def short(self):\n    def inner():\n{body}\n    return 1\n")
    assert _long_functions(tmp_path, [f], 100) == [
        "m.py:2 short (104 lines)",
        "m.py:3 inner (102 lines)",
    ]
    assert _long_functions(tmp_path, [f], 104) == []


def test_methods_page_compares_methods_with_spectral_and_adaptq_profile(tmp_path, monkeypatch):
    from core import runner
    from core.config import preset

    db = tmp_path / "m.duckdb"
    store = Store(db)
    for over in (
        dict(method="lora", lora_rank=2),
        dict(method="lora"),
        dict(method="full"),
        dict(method="adaptq"),
    ):
        # two sizes draw every chart of the page (sizes 4 and 8: a third adds only training time)
        spec = preset("tiny-test", scales=(4, 8), **over)
        rid = runner.create_run(store, spec, status="running")
        assert runner.run_foreground(store, rid) == "done"
    at = _app("methods", db, monkeypatch)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    # curves x2, intruder dimensions vs size and vs rank, ||dW|| vs rank, heatmap, profile
    assert len(at.get("plotly_chart")) == 7, len(at.get("plotly_chart"))
    assert any(m.value == "**Intruder dimensions against LoRA rank**" for m in at.markdown)
    assert at.multiselect[0].value and len(at.dataframe) >= 2
    facts = at.table[0].value
    assert "blocks trained" in facts.index and "1 of 2" in facts.loc["blocks trained"].value


@pytest.mark.parametrize(
    "method, extra",
    [
        ("adaptq", {"Block selection": "last-k", "Frozen blocks": 8, "Order": "adapt-first"}),
        ("qlora", {"Order": "adapt-first"}),
        ("full", {}),
        ("lora", {"Training arithmetic": "bf16"}),
    ],
)
def test_launch_form_runs_every_method(method, extra, tmp_path, monkeypatch):
    """The Launch form's method settings reach the stored spec, and the queued run trains."""
    import json
    import os

    import core.runner

    monkeypatch.setattr(core.runner, "spawn_worker", lambda db: None)  # we run the queue here
    db = tmp_path / "m.duckdb"
    at = _app("launch", db, monkeypatch)
    at.selectbox[0].select("tiny-test").run()
    next(t for t in at.text_input if t.label == "Dataset sizes").input("4, 8")  # two points
    next(s for s in at.selectbox if s.label == "Method").select(method)
    for label, value in extra.items():
        next(s for s in at.selectbox if s.label == label).select(value)
    next(n for n in at.number_input if n.label.startswith("Smoke test every")).set_value(4)
    next(b for b in at.button if b.label == "Queue run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    store = Store(db)
    (rid,) = store.claim_next_group(os.getpid())
    spec = json.loads(store.get_run(rid)["spec_json"])
    assert spec["method"] == method and spec["smoke_every"] == 4
    if method == "adaptq":
        assert (spec["adaptq_selection"], spec["frozen_bits"]) == ("last-k", 8)
    if "Order" in extra:
        assert spec["quant_order"] == "adapt-first"
    assert spec["precision"] == extra.get("Training arithmetic", "fp32")
    assert core.runner.execute(store, rid) == "done"
    pts = store.points_df([rid])
    assert sorted(pts.scale) == [4, 8] and set(pts.status) <= {"done", "stopped"}
    assert (store.generations_df(rid).stage.str.startswith("step:")).any()


def test_methods_page_switches_to_the_shipped_rank_sweep(tmp_path, monkeypatch):
    at = _app("methods", tmp_path / "empty.duckdb", monkeypatch)
    at.radio[0].set_value("rank_smollm2_h100").run()
    assert not at.exception, at.exception
    chosen = at.multiselect[0].value
    labels = [at.multiselect[0].format_func(r) for r in chosen]
    assert len(chosen) >= 5 and all(r.startswith("ref:") for r in chosen)
    assert all("rank-002 r" in x for x in labels), labels
    assert len(at.get("plotly_chart")) >= 3  # curves x2 and ||dW|| against rank


# "seed 000", "Seed 001's", "seed-000 grid"; file names such as seed000_claims.csv may stay
SOURCE_NUMBER = __import__("re").compile(r"\bseeds?[ -]00\d", __import__("re").I)


def _shown_text(at: AppTest) -> str:
    """Every string the rendered page holds (labels, help, options, markdown, captions)."""
    out = []

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


@pytest.mark.parametrize("page", PAGES)
def test_pages_cite_sources_by_author_not_by_number(page, tmp_path, monkeypatch):
    """The sources are 'Martz 2025, ...', never 'seed 000' (which also reads like a random seed)."""
    at = _app(page, tmp_path / "empty.duckdb", monkeypatch)
    text = _shown_text(at)
    assert len(text) > 200 and not SOURCE_NUMBER.search(text), SOURCE_NUMBER.search(text)


def test_help_texts_and_docs_cite_sources_by_author_not_by_number():
    import dataclasses

    from core import cli, config, reference, sources

    texts = [f.metadata.get("help", "") for f in dataclasses.fields(config.RunSpec)]
    texts += [str(p.get("name", "")) for p in config.PRESETS.values()]
    parser = cli.build_parser()
    texts.append(parser.format_help())
    for action in parser._subparsers._group_actions:
        texts += [sp.format_help() for sp in action.choices.values()]
    texts += list(reference.SET_TITLES.values())
    texts += [f"{s.cite} {s.title} {s.reproduces} {s.differs}" for s in sources.SOURCES]
    for path in [ROOT / "app.py", *(ROOT / "pages").glob("*.py"), ROOT / "README.md"]:
        texts.append(path.read_text())
    texts += [p.read_text() for p in (ROOT / "docs").glob("*.md")]
    for t in texts:
        assert not SOURCE_NUMBER.search(t), (SOURCE_NUMBER.search(t), t[:200])


def test_about_page_lists_the_four_sources_with_what_differs(tmp_path, monkeypatch):
    at = _app("about", tmp_path / "empty.duckdb", monkeypatch)
    assert not at.exception, at.exception
    heads = [h.value for h in at.subheader]
    assert heads == [
        "Martz 2025, scale-dependent forgetting",
        "Martz 2025, ADAPT-Q",
        "Rathore et al. 2025, LoRA rank trade-offs",
        "Johnson 2025, silent forgetting",
        "Kalajdzievski 2024, scaling laws for forgetting",
        "Zhang et al. 2024, when scaling meets LLM fine-tuning",
    ]
    body = " ".join(m.value for m in at.markdown)
    for title in ("Scale-Dependent Catastrophic Forgetting", "ADAPT-Q: Addressing", "How Much is"):
        assert title in body
    assert body.count("Where our numbers differ") == 6 and "+1,581 %" in body


def test_every_table_column_has_a_human_label(tiny_run, monkeypatch):
    """No table shows a raw column name such as general_ppl_before or smoke_ok."""
    import json
    import re

    db, _ = tiny_run
    for page in ("threshold", "phases", "methods", "runs", "pareto"):
        at = _app(page, db, monkeypatch)
        assert at.dataframe, page
        for df in at.dataframe:
            cfg = json.loads(df.proto.columns)
            for col in df.value.columns:
                label = cfg.get(f"col:{col}", cfg.get(col, {})).get("label")
                assert label and not re.search(r"[a-z]_[a-z]", label), (page, col, cfg.get(col))


def test_threshold_shows_what_was_forgotten_for_an_own_run(tiny_run, monkeypatch):
    db, _ = tiny_run
    at = _app("threshold", db, monkeypatch)
    assert not at.exception, at.exception
    assert any(s.value == "What was forgotten" for s in at.subheader)
    charts_ = at.get("plotly_chart")
    assert len(charts_) >= 2  # the threshold chart and the items × sizes heatmap
    assert any("first measured size" in c.value for c in at.caption)
    # the tiny run has every measure: the agreement section lists them side by side
    agree = next(e for e in at.expander if e.label == "Do the forgetting measures agree?")
    shown = agree.dataframe[0].value
    from core import analysis

    assert list(shown["measure"]) == [m.title for m in analysis.METRICS.values()]


def test_threshold_shows_what_the_re_measured_reference_forgot(tmp_path, monkeypatch):
    """On an empty database, picking a run of the re-measured reference set shows its per-statement
    heatmap and, at the slider's nearest size, what the reference model answered."""
    from core import reference

    at = _app("threshold", tmp_path / "empty.duckdb", monkeypatch)
    refs = reference.runs()
    (legal,) = refs[(refs.ref_set == "paper000_smollm2_h200") & (refs.domain == "legal")].run_id
    at.multiselect[0].set_value([legal]).run()
    assert not at.exception, at.exception
    assert any("first measured size" in c.value for c in at.caption)  # the items heatmap
    assert any("Stored smoke-test generations" in m.value for m in at.markdown)
    assert any("Smoke-test answers across sizes" in m.value for m in at.markdown)


@pytest.mark.parametrize("page, key", [("phases", "phase_measure"), ("methods", "m_measure")])
def test_pages_charting_forgetting_offer_every_measure(page, key, tiny_run, monkeypatch):
    """The Phases and Methods pages share the Threshold page's forgetting-measure select
    (pages/_ui.measure_select over analysis.METRICS)."""
    from core import analysis

    db, _ = tiny_run
    at = _app(page, db, monkeypatch)
    box = at.selectbox(key=key)
    assert box.options == [m.title for m in analysis.METRICS.values()]
    assert box.value == "degradation_pct"
    box.set_value("kl_to_base").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart") and any("in nats" in c.value for c in at.caption)


def test_methods_page_draws_intruder_dimensions_beside_forgetting(tiny_run, monkeypatch):
    db, _ = tiny_run
    at = _app("methods", db, monkeypatch)
    assert any(s.value == "Intruder dimensions" for s in at.subheader)
    assert any(m.value == "**Intruder dimensions against dataset size**" for m in at.markdown)
    largest = next(d.value for d in at.dataframe if "intruder_dims_at_largest" in d.value.columns)
    assert largest["intruder_dims_at_largest"].notna().all()


def test_threshold_lists_questions_that_flipped_from_right_to_wrong(tiny_run, monkeypatch):
    db, _ = tiny_run
    at = _app("threshold", db, monkeypatch)
    assert not at.exception, at.exception
    assert any(
        m.value == "**Multiple-choice questions that flipped from right to wrong**"
        for m in at.markdown
    )
    counts = next(d.value for d in at.dataframe if "right_to_wrong" in d.value.columns)
    assert list(counts["scale"]) == [4, 8, 16] and (counts["questions"] == 16).all()  # tiny-test


def test_threshold_headlines_the_runs_measure_and_keeps_the_token_weighted_one(
    tmp_path, monkeypatch
):
    """A run whose settings headline Martz 2025's per-statement aggregation (the paper-000
    preset does) opens under it; each run's card still says the token-weighted threshold."""
    from core import runner
    from core.config import preset

    db = tmp_path / "h.duckdb"
    store = Store(db)
    spec = preset("tiny-test", scales=(4, 8), headline_metric="degradation_stmt_pct")
    rid = runner.create_run(store, spec, status="running")
    assert runner.run_foreground(store, rid) == "done"
    at = _app("threshold", db, monkeypatch)
    assert not at.exception, at.exception
    assert at.selectbox(key="thr_measure").value == "degradation_stmt_pct"
    captions = " ".join(c.value for c in at.caption)
    assert "headline measure of these runs' settings" in captions
    assert "Token-weighted perplexity change: " in captions
    at.selectbox(key="thr_measure").set_value("degradation_pct").run()
    assert "Token-weighted perplexity change: " not in " ".join(c.value for c in at.caption)


def test_threshold_first_render_imports_no_heavy_module(tmp_path):
    """A cold server's first render of the Threshold page (a fresh process) draws charts: it
    must not import the training stack or scipy (seconds each on a small machine, issue 18)."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=300)\n"
        "at.switch_page('pages/threshold.py').run()\n"
        "assert not at.exception, at.exception\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {**os.environ, "FORGETTING_LAB_HOME": str(tmp_path)}
    env.pop("FORGETTING_LAB_DB", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "plotly" in loaded  # the page did draw
    assert not loaded & {"torch", "transformers", "peft", "scipy", "sklearn"}


def test_launch_warns_when_the_machine_is_busy(tmp_path, monkeypatch):
    """A new user on a loaded machine is told why the quoted times will not hold."""
    from core import runner

    monkeypatch.setattr(runner.os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    at = _app("launch", tmp_path / "busy.duckdb", monkeypatch)
    assert not at.exception, at.exception
    assert any("This machine is busy" in w.value for w in at.warning)


@pytest.mark.parametrize("page", ["threshold", "phases"])
def test_pages_say_when_a_chosen_run_is_still_running(page, tiny_run, tmp_path, monkeypatch):
    """A run still training is drawn from its finished points: the page says so (a new user read
    a threshold and a growth fit from 3 of 5 points as final)."""
    import os
    import shutil
    import socket

    from core.store import Store

    db, run_id = tiny_run
    copy = tmp_path / "live.duckdb"
    shutil.copy(db, copy)
    Store(copy).set_status(run_id, "running", pid=os.getpid(), host=socket.gethostname())
    at = _app(page, copy, monkeypatch)
    assert not at.exception, at.exception
    notes = [i.value for i in at.info if i.value.startswith("Still running")]
    assert len(notes) == 1 and "6 of 6 points done" in notes[0] and "will change" in notes[0]
    at = _app(page, db, monkeypatch)  # the finished run: no such note
    assert not any(i.value.startswith("Still running") for i in at.info)


def test_a_run_watched_from_a_reopened_page_keeps_its_results_first(
    tiny_run, tmp_path, monkeypatch
):
    """A user who opened the Launch page while a run trained (no launch in this session) still
    gets the progress panel above the form when the run ends, not the form pushed over it."""
    import os
    import shutil
    import socket

    from core.store import Store

    db, run_id = tiny_run
    copy = tmp_path / "watched.duckdb"
    shutil.copy(db, copy)
    store = Store(copy)
    store.set_status(run_id, "running", pid=os.getpid(), host=socket.gethostname())
    at = _app("launch", copy, monkeypatch)
    assert not at.exception, at.exception
    assert at.session_state["watch"] == run_id
    store.set_status(run_id, "done")
    at.run()
    assert not at.exception, at.exception
    heads = [h.value for h in at.subheader]
    assert "Progress" in heads and at.session_state["watch"] == run_id
    # the panel sits in the slot made above the form: its heading is the first subheader
    assert heads[0] == "Progress", heads
