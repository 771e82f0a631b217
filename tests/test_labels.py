"""The one map of column labels: every column a page shows has a human label."""

import re

import pandas as pd

from core import analysis, labels
from core.store import EXPORT_SQL


def test_every_exported_and_summary_column_has_an_entry():
    export_cols = [
        part.split(" AS ")[-1].split(".")[-1].strip()
        for part in EXPORT_SQL.split("SELECT", 1)[1].split("FROM")[0].split(",")
    ]
    summary = [
        "run_id",
        "method",
        "rank",
        "trainable_params",
        "trainable_pct",
        "model_mem_mb",
        "disk_mb",
        "peak_mem_mb",
        "ms_per_step",
        "gen_tokens_per_s",
        "largest_scale",
        "degradation_at_largest",
        "domain_gain_at_largest",
    ]
    smoke = list(analysis.smoke_table(pd.DataFrame(columns=["stage", "idx"])).columns)
    for c in [*export_cols, *summary, *smoke, "fro_norm", "eff_rank", "topk_cos", "mean", "phase"]:
        assert c in labels.COLUMNS, c
        assert not re.search(r"[a-z]_[a-z]", labels.label(c)), c  # no snake_case names


def test_cells_show_a_dash_for_missing_and_a_mark_for_verdicts():
    assert labels.cell("degradation_pct", None) == labels.MISSING == "—"
    assert labels.cell("degradation_pct", float("nan")) == "—"
    assert labels.cell("degradation_pct", 12.345) == "+12.3%"
    assert labels.cell("ok", True) == "✓ passed" and labels.cell("ok", False) == "✗ failed"
    assert labels.cell("smoke_ok", pd.NA) == labels.MISSING  # a nullable column's gap
    assert labels.cell("scale", 5000) == "5,000"
    assert labels.cell("reason", "repetition loop") == "repetition loop"


def test_short_names_keep_what_differs():
    a = "reference · paper-000-legal · smollm2-135m · GPU, 3 seed(s)"
    b = "reference · paper-000-financial · smollm2-135m · GPU, 3 seed(s)"
    assert labels.short_names([a, b]) == ["paper-000-legal", "paper-000-financial"]
    assert labels.short_names(["quick-cpu · smollm2-135m · lora r8 · legal (e30193)"]) == [
        "quick-cpu"
    ]
    assert len(labels.short_names(["x" * 80, "y" * 80])[0]) <= 48
