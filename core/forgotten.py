"""What was forgotten: per probe statement, how its own perplexity changed at each dataset size
(from the stored per-item losses, `Store.item_nll_df`) and the size at which it first crossed a
level; per multiple-choice question, at which sizes it flipped from right (the base model) to
wrong (`Store.mc_items_df`); per smoke-test prompt, the answer at each size as one strip. Pure
functions on the Store's frames; the charts are in core/charts.py."""

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


def mc_flips(mc: pd.DataFrame) -> pd.DataFrame:
    """Questions × sizes: the share of seeds at which a question the base model answered right
    was answered wrong after fine-tuning (0 to 1); only questions that flipped somewhere.
    `mc`: `mc_items_df` rows of one run."""
    if mc.empty:
        return pd.DataFrame()
    flipped = mc["correct_before"].astype(bool) & ~mc["correct_after"].astype(bool)
    m = mc.assign(flipped=flipped.astype(float)).pivot_table(
        index="item", columns="scale", values="flipped", aggfunc="mean"
    )
    return m[m.max(axis=1) > 0].sort_index(axis=1)


def mc_flip_counts(mc: pd.DataFrame) -> pd.DataFrame:
    """Per size: how many questions flipped from right to wrong and from wrong to right (mean
    over seeds), of how many scored."""
    cols = ["scale", "right_to_wrong", "wrong_to_right", "questions"]
    if mc.empty:
        return pd.DataFrame(columns=cols)
    b, a = mc["correct_before"].astype(bool), mc["correct_after"].astype(bool)
    per_seed = (
        mc.assign(right_to_wrong=b & ~a, wrong_to_right=~b & a)
        .groupby(["scale", "seed"])
        .agg(
            right_to_wrong=("right_to_wrong", "sum"),
            wrong_to_right=("wrong_to_right", "sum"),
            questions=("item", "size"),
        )
    )
    return per_seed.groupby("scale").mean().reset_index()[cols]


def mc_flip_table(mc: pd.DataFrame, questions: dict[int, tuple[str, str]] | None = None):
    """One row per question that flipped from right to wrong at some size: the question and its
    right answer (when given: index -> (question, answer)), the smallest size where it flipped
    for any seed and the share of seeds flipped at the largest size; most flipped first."""
    cols = ["question_no", "question", "answer", "first_flipped", "flipped_at_largest"]
    m = mc_flips(mc)
    if m.empty:
        return pd.DataFrame(columns=cols)
    q = questions or {}
    scales = np.asarray(m.columns, dtype=float)
    out = pd.DataFrame(
        {
            "question_no": m.index,
            "question": [q.get(int(i), ("", ""))[0] for i in m.index],
            "answer": [q.get(int(i), ("", ""))[1] for i in m.index],
            "first_flipped": [scales[np.argmax(row > 0)] for row in m.to_numpy()],
            "flipped_at_largest": m.iloc[:, -1].to_numpy(),
        }
    )
    return out.sort_values(
        ["flipped_at_largest", "first_flipped"], ascending=[False, True], ignore_index=True
    )
