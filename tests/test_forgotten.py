import math

import pandas as pd
import pytest

from core import forgotten


def _items():
    rows = []
    # item 0 forgets fast, item 1 slowly, item 2 never crosses 10 %
    growth = {0: {10: 0.2, 100: 1.0}, 1: {10: 0.01, 100: 0.2}, 2: {10: 0.0, 100: 0.05}}
    for item, by in growth.items():
        for scale, g in by.items():
            for seed in (0, 1):
                rows.append(
                    dict(
                        item=item,
                        scale=scale,
                        seed=seed,
                        nll_before=2.0,
                        tokens=2,
                        nll_after=2.0 + 2 * g,
                    )
                )
    return pd.DataFrame(rows)


def test_item_change_is_each_statements_perplexity_change():
    m = forgotten.item_change(_items())
    assert list(m.columns) == [10, 100] and list(m.index) == [0, 1, 2]
    assert m.loc[0, 100] == pytest.approx((math.exp(1.0) - 1) * 100)
    assert m.loc[2, 10] == pytest.approx(0.0)


def test_first_crossing_and_table_put_the_most_forgotten_first():
    items = _items()
    first = forgotten.first_crossing(forgotten.item_change(items), level=10.0)
    assert first.loc[0] == 10 and first.loc[1] == 100 and math.isnan(first.loc[2])
    t = forgotten.forgotten_table(items, {0: "a", 1: "b", 2: "c"}, level=10.0)
    assert list(t["item"]) == [0, 1, 2] and list(t["text"]) == ["a", "b", "c"]
    assert t["ppl_before"].tolist() == pytest.approx([math.e] * 3)


def test_answer_strip_is_prompt_by_size_with_the_base_first():
    gens = pd.DataFrame(
        [
            dict(stage="before", scale=None, seed=None, prompt="p", output="Paris"),
            dict(stage="after", scale=10, seed=0, prompt="p", output="Paris."),
            dict(stage="after", scale=100, seed=0, prompt="p", output="the court held"),
            dict(stage="after", scale=100, seed=1, prompt="p", output="other seed"),
        ]
    )
    strip = forgotten.answer_strip(gens)
    assert list(strip.columns) == ["base", 10, 100]
    assert strip.loc["p"].tolist() == ["Paris", "Paris.", "the court held"]


def test_empty_inputs_give_empty_results():
    assert forgotten.item_change(pd.DataFrame(columns=["item", "scale", "tokens"])).empty
    assert forgotten.answer_strip(pd.DataFrame()).empty


def _mc():
    """Three questions, two sizes, two seeds. q0: right before, wrong at size 100 for both seeds
    (and at 10 for seed 1); q1: right before, always right; q2: wrong before, right at 100."""
    rows = []
    after = {  # (item, scale, seed) -> right after?
        (0, 10, 0): True,
        (0, 10, 1): False,
        (0, 100, 0): False,
        (0, 100, 1): False,
        (2, 100, 0): True,
        (2, 100, 1): True,
    }
    before = {0: True, 1: True, 2: False}
    for item in (0, 1, 2):
        for scale in (10, 100):
            for seed in (0, 1):
                right = after.get((item, scale, seed), before[item])
                rows.append(
                    dict(
                        item=item,
                        scale=scale,
                        seed=seed,
                        correct_before=before[item],
                        correct_after=right,
                    )
                )
    return pd.DataFrame(rows)


def test_mc_flips_are_questions_right_before_and_wrong_after():
    m = forgotten.mc_flips(_mc())
    assert list(m.index) == [0]  # only question 0 ever flipped from right to wrong
    assert m.loc[0].tolist() == [0.5, 1.0]  # one seed of two at 10, both at 100
    counts = forgotten.mc_flip_counts(_mc()).set_index("scale")
    assert counts.loc[10].tolist() == [0.5, 0.0, 3.0]
    assert counts.loc[100].tolist() == [1.0, 1.0, 3.0]  # question 2 went the other way
    t = forgotten.mc_flip_table(_mc(), {0: ("The capital of France is", "Paris")})
    assert t.to_dict("records") == [
        dict(
            question_no=0,
            question="The capital of France is",
            answer="Paris",
            first_flipped=10.0,
            flipped_at_largest=1.0,
        )
    ]
    assert forgotten.mc_flip_table(pd.DataFrame()).empty and forgotten.mc_flips(_mc()[:0]).empty
