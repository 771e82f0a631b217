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
