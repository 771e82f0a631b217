"""What was forgotten: per probe statement, how its own perplexity changed at each dataset size
(from the stored per-item losses, `Store.item_nll_df`) and the size at which it first crossed a
level; per smoke-test prompt, the answer at each size as one strip. Pure functions on the
Store's frames; the charts are in core/charts.py."""

from __future__ import annotations

import numpy as np
import pandas as pd


def item_change(items: pd.DataFrame) -> pd.DataFrame:
    """Items × sizes: each statement's perplexity change in % (exp((NLL_after - NLL_before) /
    tokens) - 1, mean over seeds). `items`: `item_nll_df` rows of one run."""
    if items.empty:
        return pd.DataFrame()
    ok = items[items["tokens"] > 0]
    pct = (np.exp((ok["nll_after"] - ok["nll_before"]) / ok["tokens"]) - 1.0) * 100.0
    m = ok.assign(change_pct=pct).pivot_table(
        index="item", columns="scale", values="change_pct", aggfunc="mean"
    )
    return m.sort_index(axis=1)


def first_crossing(matrix: pd.DataFrame, level: float = 10.0) -> pd.Series:
    """Per item, the smallest measured size at which its change reached `level` % (NaN: never)."""
    if matrix.empty:
        return pd.Series(dtype=float)
    hit = matrix.ge(level)
    scales = np.asarray(matrix.columns, dtype=float)
    first = [scales[np.argmax(row)] if row.any() else np.nan for row in hit.to_numpy()]
    return pd.Series(first, index=matrix.index, name="first_crossed")


def forgotten_table(
    items: pd.DataFrame, texts: dict[int, str] | None = None, level: float = 10.0
) -> pd.DataFrame:
    """One row per statement: its text (when given), perplexity before, change at the largest
    size and where it first crossed `level`; most forgotten first."""
    m = item_change(items)
    if m.empty:
        return pd.DataFrame(columns=["item", "text", "ppl_before", "change_pct", "first_crossed"])
    ok = items[items["tokens"] > 0]
    before = ok.groupby("item").apply(
        lambda g: float(np.exp(g["nll_before"].iloc[0] / g["tokens"].iloc[0])),
        include_groups=False,
    )
    out = pd.DataFrame(
        {
            "item": m.index,
            "text": [(texts or {}).get(int(i), "") for i in m.index],
            "ppl_before": before.loc[m.index].to_numpy(),
            "change_pct": m.iloc[:, -1].to_numpy(),
            "first_crossed": first_crossing(m, level).to_numpy(),
        }
    )
    return out.sort_values("change_pct", ascending=False, ignore_index=True)


def answer_strip(gens: pd.DataFrame, seed: int | None = None) -> pd.DataFrame:
    """Prompts × sizes of smoke-test answers (one seed: the smallest unless given), with the
    base's answer as the first column ('base')."""
    if gens.empty:
        return pd.DataFrame()
    after = gens[gens["stage"] == "after"]
    if not after.empty:
        seed = int(after["seed"].min()) if seed is None else seed
        after = after[after["seed"] == seed]
    strip = after.pivot_table(index="prompt", columns="scale", values="output", aggfunc="first")
    base = gens[gens["stage"] == "before"].drop_duplicates("prompt").set_index("prompt")["output"]
    strip.insert(0, "base", base.reindex(strip.index) if not strip.empty else base)
    return strip
