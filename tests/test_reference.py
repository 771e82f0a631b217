"""The shipped reference sets: what the app reads from them beyond the points."""

import pytest

from core import evaluate, reference

REMEASURED = "paper000_smollm2_h200"


def _runs(ref_set: str) -> list[str]:
    r = reference.runs()
    return list(r[r.ref_set == ref_set].run_id)


def test_re_measured_set_per_statement_numbers_follow_from_its_shipped_item_losses():
    pts = reference._load("points", (REMEASURED,))
    assert len(_runs(REMEASURED)) == 2 and len(pts) == 36
    checked = 0
    for rid in _runs(REMEASURED):
        items = reference.items(rid)
        assert not items.empty
        for (scale, seed), g in items.groupby(["scale", "seed"]):
            before = evaluate.stmt_perplexity(list(g.nll_before), list(g.tokens))
            after = evaluate.stmt_perplexity(list(g.nll_after), list(g.tokens))
            row = pts[(pts.run_id == rid) & (pts.scale == scale) & (pts.seed == seed)].iloc[0]
            assert row.general_ppl_stmt_before == pytest.approx(before, rel=1e-6)
            assert row.degradation_stmt_pct == pytest.approx((after / before - 1) * 100, rel=1e-6)
            checked += 1
    assert checked == 36
    # every forgetting measure is present at every point
    for col in ("degradation_stmt_pct", "kl_to_base", "general_ce_delta"):
        assert pts[col].notna().all(), col


def test_reference_generations_and_settings_read_like_an_own_runs():
    rid = _runs(REMEASURED)[0]
    gens = reference.generations(rid, 100, 1)
    assert set(gens.stage) == {"before", "after"}
    assert set(gens[gens.stage == "after"].scale) == {100}
    assert list(gens.stage)[0] == "before"  # base answers first, as Store.generations_df orders
    spec = reference.spec(rid)
    assert spec.probe == "paper-8" and spec.precision == "fp32" and spec.seeds == (1, 2, 3)
    assert reference.spec("ref:no-such-run") is None


def test_reference_sets_of_the_paper_protocol_headline_martz_aggregation():
    """Every run of the sets made with the paper-000 protocol (the first H100 runs through the
    settings their set records) headlines Martz 2025's per-statement change; the rank sweep,
    the quick-cpu cross-domain runs and the methods other than LoRA keep the token-weighted."""
    from core.config import headline_measure

    refs = reference.runs()
    for rid, ref_set, method in zip(refs.run_id, refs.ref_set, refs.method):
        head = headline_measure(reference.spec(rid))
        paper = ref_set.startswith(("paper000", "replay")) or (
            ref_set.startswith("methods") and method == "lora"
        )
        assert head == ("degradation_stmt_pct" if paper else "degradation_pct"), (rid, ref_set)
    old = reference.spec(_runs(reference.REF_NAME)[0])
    assert old is not None and old.name.startswith("paper-000-")


def test_sets_measured_before_items_were_stored_have_none():
    rid = _runs(reference.REF_NAME)[0]
    assert reference.items(rid).empty and reference.generations(rid).empty
    assert reference.mc_items(rid).empty  # no set shipped per-question results before
