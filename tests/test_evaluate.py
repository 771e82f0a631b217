import math

import pytest
import torch

from core import evaluate
from core.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", "cpu")


FRANCE = "The capital of France is"


def _hand_nll(model, tok, text):
    ids = tok(text)["input_ids"]
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            total -= float(torch.log_softmax(logits.double(), -1)[ids[t]])
    return total, len(ids) - 1


def test_perplexity_equals_hand_computation(tiny):
    texts = [
        "The court granted the motion.",
        "Water boils at one hundred degrees Celsius at sea level.",
    ]
    res = evaluate.perplexity(tiny.model, tiny.tokenizer, texts, batch_size=2)
    hand = [_hand_nll(tiny.model, tiny.tokenizer, t) for t in texts]
    nll, n = sum(h[0] for h in hand), sum(h[1] for h in hand)
    assert res.tokens == n  # padding of the shorter text is not counted
    assert res.ppl == pytest.approx(math.exp(nll / n), rel=1e-4)
    for got, (want, _) in zip(res.item_nll, hand):
        assert got == pytest.approx(want, rel=1e-4)


def test_batch_size_does_not_change_perplexity(tiny):
    """Not only the aggregate: every statement's NLL and token count, which the per-statement
    measures and the items heatmap read, is the same batched (with padding) as alone."""
    texts = ["a b c", "The Pacific is the largest ocean on the planet.", "Hi."]
    a = evaluate.perplexity(tiny.model, tiny.tokenizer, texts, batch_size=1)
    b = evaluate.perplexity(tiny.model, tiny.tokenizer, texts, batch_size=3)
    assert a.ppl == pytest.approx(b.ppl, rel=1e-5)
    assert a.tokens == b.tokens == sum(a.item_tokens) and a.item_tokens == b.item_tokens
    assert len(set(a.item_tokens)) > 1  # lengths differ: the batch really pads
    assert b.item_nll == pytest.approx(a.item_nll, rel=1e-5)
    assert a.nll_sum == pytest.approx(sum(a.item_nll), rel=1e-9)


def test_degradation_and_improvement_formulas():
    assert evaluate.degradation_pct(100.0, 150.0) == pytest.approx(50.0)
    assert evaluate.degradation_pct(117.1, 90.3) == pytest.approx(-22.886, abs=1e-3)
    assert evaluate.improvement_pct(513.5, 10.3) == pytest.approx(97.994, abs=1e-3)
    assert evaluate.improvement_pct(10.0, 20.0) == pytest.approx(-100.0)


def _hand_continuation_loglik(model, tok, context, option):
    """Each continuation token's log-probability from its own forward pass over everything
    before it: no batching, no gather over one shared pass."""
    ids = tok(context)["input_ids"]
    total = 0.0
    with torch.no_grad():
        for c in tok(option, add_special_tokens=False)["input_ids"]:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            total += float(torch.log_softmax(logits.double(), -1)[c])
            ids = ids + [c]
    return total


def test_option_loglik_sums_each_options_tokens_after_the_context(tiny):
    opts = [" Paris.", " the moon.", " 42"]
    ll = evaluate.option_loglik(tiny.model, tiny.tokenizer, FRANCE, opts)
    want = [_hand_continuation_loglik(tiny.model, tiny.tokenizer, FRANCE, o) for o in opts]
    assert ll == pytest.approx(want, rel=1e-4)
    assert all(x < 0 for x in ll) and len(set(ll)) == 3
    # an option's score does not depend on the other options or their order
    rev = evaluate.option_loglik(tiny.model, tiny.tokenizer, FRANCE, opts[::-1])
    assert rev == pytest.approx(ll[::-1], rel=1e-6)
    # a longer continuation adds its extra token's (negative) log-probability
    longer = evaluate.option_loglik(tiny.model, tiny.tokenizer, FRANCE, [" Paris. The"])[0]
    assert longer < ll[0]


LOOP = (
    " The trial court remanded the deposition transcripts. The trial court remanded the "
    "deposition transcripts. The trial court remanded"
)


@pytest.mark.parametrize(
    "label, prompt, text, n, fails_with",
    [
        ("empty", FRANCE, "", 0, "no new tokens"),
        ("punctuation only", FRANCE, "  ... !!! ", 3, "only punctuation"),
        ("whitespace only", FRANCE, "\n\n\n", 3, "only punctuation"),
        ("one word", FRANCE, "the the the the the the the", 7, "one word repeated"),
        ("off-topic loop (issue #18)", FRANCE, LOOP, 40, "repetition loop"),
        (
            "off-topic loop cut at 20 tokens",
            FRANCE,
            " The trial court remanded the deposition transcripts. The trial court remanded the",
            20,
            "repetition loop",
        ),
        ("short loop", "Q:", " The answer is: 2. The answer is: 2. The answer is: 2.", 20, "loop"),
        ("character loop", "Q:", " abababababababababababab", 12, "characters"),
        (
            "prompt loop",
            FRANCE,
            " The capital of France is The capital of France is The capital",
            14,
            "loop",
        ),
        ("few distinct words", "Q:", " a b a b c a b a c b a b c a b", 15, "few distinct words"),
        (
            "echo of the prompt",
            "the answer is four and the answer is final",
            " the answer is four and the answer is",
            9,
            "repeats the prompt",
        ),
    ],
)
def test_verdict_fails_degenerate_answers_with_a_reason(label, prompt, text, n, fails_with):
    ok, reasons = evaluate.verdict(text, n, prompt)
    assert not ok and reasons, label
    assert any(fails_with in r for r in reasons), (label, reasons)
    g = evaluate.Generation.judged(prompt, text, n)
    assert not g.ok and fails_with in g.reason
    # without the prompt, everything judged from the answer alone still fails
    assert (not evaluate.verdict(text, n)[0]) is (fails_with != "repeats the prompt")


@pytest.mark.parametrize(
    "prompt, text, n",
    [
        (FRANCE, " Paris.", 2),  # short and right: never flagged for its length
        (FRANCE, " Paris, the city of light.", 6),
        (FRANCE, " Paris.\n\nThe answer is: 201", 12),
        ("The first person to walk on the Moon was", " Neil Armstrong.\n\nThe answer is: 1.", 12),
        (
            "The first person to walk on the Moon was",
            " named Buzz Aldi.\n\nThe first person to walk",
            12,
        ),
        ("What is two plus two? The answer is", " yes.\n\nThe answer is yes.", 9),
        ("Hello, how are you today?", " I'm here to help you with your business plan, whether", 12),
        ("Count:", " 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15", 30),
        (
            FRANCE,
            " Paris. It is the largest city of the country and lies on the Seine, in the north. "
            "About two million people live in the city itself.",
            40,
        ),
    ],
)
def test_verdict_passes_fine_answers(prompt, text, n):
    assert evaluate.verdict(text, n, prompt) == (True, [])
    g = evaluate.Generation.judged(prompt, text, n)
    assert g.ok and g.reason == ""


def test_generate_is_greedy_and_counts_new_tokens_up_to_the_end(tiny):
    """The answer is the greedy continuation, computed here one argmax at a time; its count is
    the number of new tokens before an end-of-sequence, and the text is their decoding."""
    tok = tiny.tokenizer
    ids = tok(FRANCE)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(5):
            nxt = int(tiny.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    g = evaluate.generate(tiny.model, tok, [FRANCE], max_new_tokens=5)[0]
    assert g.prompt == FRANCE and g.new_tokens == len(new)
    assert g.output == tok.decode(new, skip_special_tokens=True)
    assert (g.ok, g.reason) == (
        evaluate.Generation.judged(FRANCE, g.output, g.new_tokens).ok,
        evaluate.Generation.judged(FRANCE, g.output, g.new_tokens).reason,
    )
    assert evaluate.generate(tiny.model, tok, [FRANCE], max_new_tokens=1)[0].new_tokens <= 1
    assert evaluate.generate(tiny.model, tok, [], max_new_tokens=5) == []


def test_mc_accuracy_picks_the_highest_summed_loglik(tiny):
    from core.data import load_mc

    items = load_mc()[:6]
    acc, correct = evaluate.mc_accuracy(tiny.model, tiny.tokenizer, items, batch_size=5)
    for it, ok in zip(items, correct):
        ll = evaluate.option_loglik(
            tiny.model, tiny.tokenizer, it.question, [" " + o for o in it.options]
        )
        assert ok == (max(range(4), key=ll.__getitem__) == it.answer)
    assert acc == pytest.approx(sum(correct) / 6)


def test_mc_set_is_large_and_well_formed():
    from core.data import load_mc

    items = load_mc()
    assert len(items) >= 100
    assert all(len(i.options) == 4 and len(set(i.options)) == 4 for i in items)
    assert len({i.answer for i in items}) == 4  # answers are spread over A-D


def test_mc_options_sharing_their_question_score_like_separate_sequences(tiny):
    """The block mask and continued positions give every option the same log-likelihood as
    scoring question + option as a sequence of its own."""
    from core.data import load_mc

    items = load_mc()[:9]
    rows = evaluate._mc_rows(tiny.tokenizer, items)
    pad = evaluate._pad_id(tiny.tokenizer)
    shared = evaluate._mc_scores_shared(tiny.model, rows, 4, pad, "cpu")
    separate = evaluate._mc_scores_separate(tiny.model, rows, 7, pad, "cpu")
    for a, b in zip(shared, separate):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)


def test_mc_falls_back_to_separate_sequences_when_the_mask_is_ignored(tiny, monkeypatch):
    from core.data import load_mc

    items = load_mc()[:3]
    want = evaluate.mc_scores(tiny.model, tiny.tokenizer, items)
    monkeypatch.setattr(
        evaluate,
        "_mc_scores_shared",
        lambda model, rows, *a: [[0.0] * len(o) for _, o in rows],  # a model that got it wrong
    )
    got = evaluate.mc_scores(tiny.model, tiny.tokenizer, items)
    assert sum(got, []) == pytest.approx(sum(want, []), rel=1e-4)


def test_generation_in_one_batch_equals_one_prompt_at_a_time(tiny):
    prompts = ["The capital of France is", "Hi", "What is two plus two? The answer is"]
    together = evaluate.generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=6)
    alone = [
        evaluate.generate(tiny.model, tiny.tokenizer, [p], max_new_tokens=6)[0] for p in prompts
    ]
    assert [g.output for g in together] == [g.output for g in alone]
    assert [g.new_tokens for g in together] == [g.new_tokens for g in alone]


def test_perplexity_items_come_back_in_input_order(tiny):
    texts = ["Hi.", "The Pacific is the largest ocean on the planet by far.", "a b c d"]
    res = evaluate.perplexity(tiny.model, tiny.tokenizer, texts, batch_size=2)
    for t, got in zip(texts, res.item_nll):
        assert got == pytest.approx(_hand_nll(tiny.model, tiny.tokenizer, t)[0], rel=1e-4)


# ---- the other forgetting measures (Martz 2025's per-statement mean, KL to the base after
# Kalajdzievski 2024, peft's method_comparison ΔCE) and the pitfalls of peft PRs #2986/#3419


def test_stmt_perplexity_is_the_mean_of_each_statements_perplexity():
    # statement 1: 2 tokens, NLL 2 -> ppl e; statement 2: 1 token, NLL ln 4 -> ppl 4
    got = evaluate.stmt_perplexity([2.0, math.log(4.0)], [2, 1])
    assert got == pytest.approx((math.e + 4.0) / 2)
    # token-weighted differs on the same toy case: exp((2 + ln 4) / 3)
    res = evaluate.PerplexityResult(
        math.exp((2 + math.log(4)) / 3), 2 + math.log(4), 3, [2.0, math.log(4)], [2, 1]
    )
    assert res.ppl != pytest.approx(got)


def test_ce_delta_is_mean_token_ce_after_minus_before():
    before = evaluate.PerplexityResult(0.0, 6.0, 3, [6.0], [3])
    after = evaluate.PerplexityResult(0.0, 9.0, 3, [9.0], [3])
    assert evaluate.ce_delta(before, after) == pytest.approx(1.0)


def _hand_kl(base, tuned, tok, text):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        p = torch.log_softmax(base(input_ids=ids).logits[0, :-1].double(), -1)
        q = torch.log_softmax(tuned(input_ids=ids).logits[0, :-1].double(), -1)
    return float((p.exp() * (p - q)).sum()), ids.shape[1] - 1


def _perturbed(tiny):
    import copy

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02, alpha=1.0)
    return model


TEXTS = ["The court granted the motion.", "Water boils at one hundred degrees.", "Hi."]


def test_kl_to_base_equals_hand_computation(tiny):
    torch.manual_seed(0)
    tuned = _perturbed(tiny)
    base = evaluate.perplexity(tiny.model, tiny.tokenizer, TEXTS, batch_size=2, keep_logp=True)
    after = evaluate.perplexity(tuned, tiny.tokenizer, TEXTS, batch_size=3, base_logp=base.logp)
    hand = [_hand_kl(tiny.model, tuned, tiny.tokenizer, t) for t in TEXTS]
    for got, (want, _) in zip(after.item_kl, hand):
        assert got == pytest.approx(want, rel=2e-2, abs=1e-4)  # base log-probs kept in float16
    want_mean = sum(h[0] for h in hand) / sum(h[1] for h in hand)
    assert evaluate.kl_mean(after) == pytest.approx(want_mean, rel=2e-2)
    assert evaluate.kl_mean(after) > 0


def test_kl_is_zero_for_the_untouched_model(tiny):
    base = evaluate.perplexity(tiny.model, tiny.tokenizer, TEXTS, keep_logp=True)
    again = evaluate.perplexity(tiny.model, tiny.tokenizer, TEXTS, base_logp=base.logp)
    assert evaluate.kl_mean(again) == pytest.approx(0.0, abs=1e-3)
    assert evaluate.ce_delta(base, again) == pytest.approx(0.0, abs=1e-6)


def test_kl_is_zero_for_a_zero_initialised_lora_adapter(tiny):
    import copy

    from peft import LoraConfig, get_peft_model

    base = evaluate.perplexity(tiny.model, tiny.tokenizer, TEXTS, keep_logp=True)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    wrapped = get_peft_model(copy.deepcopy(tiny.model), cfg)  # B = 0: the adapter adds nothing
    after = evaluate.perplexity(wrapped, tiny.tokenizer, TEXTS, base_logp=base.logp)
    assert evaluate.kl_mean(after) == pytest.approx(0.0, abs=1e-3)
    assert evaluate.ce_delta(base, after) == pytest.approx(0.0, abs=1e-5)


def test_pitfall_targets_are_shifted_by_one(tiny):
    """peft PR #2986's class of bug: scoring position t's logits against token t (not t+1) gives
    another number; ours equals the hand NLL of predicting each next token."""
    text = "The court granted the motion."
    ids = torch.tensor([tiny.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(input_ids=ids).logits[0].double(), -1)
    shifted = -float(logp[:-1].gather(-1, ids[0, 1:, None]).sum())
    unshifted = -float(logp.gather(-1, ids[0, :, None]).sum())
    res = evaluate.perplexity(tiny.model, tiny.tokenizer, [text])
    assert res.nll_sum == pytest.approx(shifted, rel=1e-4)
    assert res.nll_sum != pytest.approx(unshifted, rel=1e-2)
    assert res.tokens == ids.shape[1] - 1


def test_pitfall_padding_is_excluded_from_ce_and_kl(tiny):
    """peft PR #3419's class of bug: padded positions counted. A short text batched with a long
    one scores exactly as alone, for NLL, token count and KL."""
    torch.manual_seed(1)
    tuned = _perturbed(tiny)
    short, long = "Hi.", "Water boils at one hundred degrees Celsius at sea level, they say."
    alone_b = evaluate.perplexity(tiny.model, tiny.tokenizer, [short], keep_logp=True)
    alone = evaluate.perplexity(tuned, tiny.tokenizer, [short], base_logp=alone_b.logp)
    both_b = evaluate.perplexity(tiny.model, tiny.tokenizer, [short, long], 2, keep_logp=True)
    both = evaluate.perplexity(tuned, tiny.tokenizer, [short, long], 2, base_logp=both_b.logp)
    assert both.item_tokens[0] == alone.item_tokens[0]
    assert both.item_nll[0] == pytest.approx(alone.item_nll[0], rel=1e-4)
    assert both.item_kl[0] == pytest.approx(alone.item_kl[0], rel=1e-3, abs=1e-5)
    assert both_b.logp[0].shape[0] == alone.item_tokens[0]


def test_stored_check_summarises_a_points_stored_answers():
    """The Smoke test page says above the prompt box whether the point's stored smoke test
    passed, and why an answer failed (the base model's rows do not count)."""
    import pandas as pd

    from core.smoke import stored_check

    cols = ["stage", "prompt", "ok", "reason"]
    rows = [
        ("before", "Hello, my name is", True, None),
        ("after", "The capital of France is", True, None),
        ("after", "Hello, my name is", False, "no new tokens"),
    ]
    check = stored_check(pd.DataFrame(rows, columns=cols))
    assert check.passed is False and check.prompts == 2
    assert check.failures == ("'Hello, my name is': no new tokens",)
    assert "failed 1 of 2 prompt(s)" in check.sentence()
    ok = stored_check(pd.DataFrame(rows[:2], columns=cols))
    assert ok.passed and "passed: 1 prompt(s)" in ok.sentence()
    assert stored_check(pd.DataFrame(rows[:1], columns=cols)).passed is None  # base rows only
    assert stored_check(pd.DataFrame(columns=cols)).passed is None
