"""The three requests the engine knows: perplexity of texts, log-likelihood of options, and
generation from prompts. Before- and after-training numbers go through the same functions."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class PerplexityResult:
    ppl: float
    nll_sum: float
    tokens: int
    item_nll: list[float]  # summed NLL per text
    item_tokens: list[int]  # predicted tokens per text
    # summed per-token KL(p_base || p_model) per text, when a reference was given (`base_logp`)
    item_kl: list[float] | None = None
    # the model's next-token log-probs per text ([predicted tokens, vocab], float16 on the CPU),
    # kept when asked (`keep_logp`): the base's, so every point's KL needs no second model
    logp: list[torch.Tensor] | None = None


def _length_batches(lengths: list[int], batch_size: int):
    """Indices grouped into batches of similar length (longest first, so a batch that does not
    fit in memory fails at once): padding is what a batch of mixed lengths wastes."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def _right_padded(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, sq in enumerate(seqs):
        ids[k, : len(sq)] = torch.tensor(sq)
        mask[k, : len(sq)] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


# Budget for the base's kept next-token log-probs (float16): past it KL to the base is not
# measured (NULL) rather than risking the host's memory.
KL_CACHE_BYTES = 4 * 2**30


@torch.no_grad()
def token_stats(
    model,
    tokenizer,
    texts: list[str],
    batch_size: int = 16,
    max_length: int = 512,
    keep_logp: bool = False,
    base_logp: list[torch.Tensor] | None = None,
):
    """One forward pass per batch: summed negative log-likelihood and predicted-token count per
    text (right padding, padded positions masked out; the first token of each text has no
    prediction and is not counted: position t's logits score token t+1). With `keep_logp` the
    per-text log-probs come back too (float16, CPU); with `base_logp` (the base's kept log-probs
    for the same texts) the summed per-token KL(p_base || p_model) per text comes back.
    Texts are batched by length; results come back in the order of `texts`.
    Returns (nll, counts, logp or None, kl or None)."""
    device = next(model.parameters()).device
    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    nll, counts = [0.0] * len(texts), [0] * len(texts)
    kept = [None] * len(texts) if keep_logp else None
    kl = [0.0] * len(texts) if base_logp is not None else None
    was_training = model.training
    model.eval()
    for chunk in _length_batches([len(e) for e in enc], batch_size):
        ids, mask = _right_padded([enc[i] for i in chunk], _pad_id(tokenizer), device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = F.log_softmax(logits[:, :-1], dim=-1)
        tgt = ids[:, 1:]
        tok_nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        m = mask[:, 1:].to(tok_nll.dtype)
        for i, v, c in zip(chunk, (tok_nll * m).sum(1).tolist(), m.sum(1).long().tolist()):
            nll[i], counts[i] = v, c
        for k, i in enumerate(chunk):
            n = counts[i]
            if kept is not None:
                kept[i] = logp[k, :n].to("cpu", torch.float16)
            if kl is not None:
                ref = base_logp[i].to(logp.device, torch.float32)
                if ref.shape != logp[k, :n].shape:
                    raise ValueError("base log-probs do not match these texts")
                kl[i] = float((ref.exp() * (ref - logp[k, :n])).sum())
    if was_training:
        model.train()
    return nll, counts, kept, kl


def perplexity(
    model,
    tokenizer,
    texts: list[str],
    batch_size: int = 16,
    max_length: int = 512,
    keep_logp: bool = False,
    base_logp: list[torch.Tensor] | None = None,
):
    """Token-weighted perplexity: exp(total NLL / total predicted tokens); per text too, and
    optionally the kept log-probs / KL to a base (`token_stats`)."""
    if not texts:
        raise ValueError("perplexity of an empty text list")
    nll, counts, kept, kl = token_stats(
        model, tokenizer, texts, batch_size, max_length, keep_logp, base_logp
    )
    total, n = float(sum(nll)), int(sum(counts))
    return PerplexityResult(
        ppl=math.exp(total / max(n, 1)),
        nll_sum=total,
        tokens=n,
        item_nll=nll,
        item_tokens=counts,
        item_kl=kl,
        logp=kept,
    )


def logp_fits(model, tokenizer, texts: list[str], max_length: int = 512) -> bool:
    """Whether the base's log-probs on `texts` fit `KL_CACHE_BYTES` (float16)."""
    out = model.get_output_embeddings()
    vocab = out.weight.shape[0] if out is not None else model.config.vocab_size
    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return sum(max(len(e) - 1, 0) for e in enc) * vocab * 2 <= KL_CACHE_BYTES


def stmt_perplexity(item_nll: list[float], item_tokens: list[int]) -> float:
    """Per-statement perplexity (Martz 2025's aggregation): the mean over statements of each
    statement's own perplexity exp(NLL_i / tokens_i). Statements with no predicted token are
    left out."""
    ppl = [math.exp(x / n) for x, n in zip(item_nll, item_tokens) if n > 0]
    if not ppl:
        raise ValueError("per-statement perplexity of no scored statement")
    return sum(ppl) / len(ppl)


def ce_delta(before: PerplexityResult, after: PerplexityResult) -> float:
    """Mean per-token cross-entropy after minus before on the same texts (nats; peft's
    method_comparison forgetting metric): log(ppl_after) - log(ppl_before)."""
    return after.nll_sum / max(after.tokens, 1) - before.nll_sum / max(before.tokens, 1)


def kl_mean(res: PerplexityResult) -> float | None:
    """Mean per-token KL(p_base || p_model) over the texts, None when it was not measured."""
    if res.item_kl is None:
        return None
    return sum(res.item_kl) / max(res.tokens, 1)


def change_pct(before: float, after: float) -> float:
    """(after - before) / before * 100: positive when perplexity rose (worse)."""
    return (after - before) / before * 100.0


def degradation_pct(ppl_before: float, ppl_after: float) -> float:
    """General-knowledge degradation: positive = the model got worse on general text."""
    return change_pct(ppl_before, ppl_after)


def improvement_pct(ppl_before: float, ppl_after: float) -> float:
    """Domain improvement: positive = perplexity on the domain fell."""
    return (ppl_before - ppl_after) / ppl_before * 100.0


@torch.no_grad()
def option_loglik(model, tokenizer, context: str, options: list[str]) -> list[float]:
    """Summed log-likelihood of each option's tokens after the context (lm-eval-harness style)."""
    device = next(model.parameters()).device
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    out = []
    for opt in options:
        cont = tokenizer(opt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + cont], device=device)
        logp = F.log_softmax(model(input_ids=ids).logits.float()[0, :-1], -1)
        tgt = ids[0, 1:]
        lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)[len(ctx) - 1 :]
        out.append(float(lp.sum()))
    return out


def _mc_rows(tokenizer, items) -> list[tuple[list[int], list[list[int]]]]:
    """(question tokens, [option tokens] x 4) per item; options are scored after a space."""
    rows = []
    for it in items:
        ctx = tokenizer(it.question, add_special_tokens=True)["input_ids"]
        opts = [tokenizer(" " + o, add_special_tokens=False)["input_ids"] for o in it.options]
        if not ctx or not all(opts):
            raise ValueError(f"multiple-choice item with an empty question or option: {it}")
        rows.append((ctx, opts))
    return rows


@torch.no_grad()
def _mc_scores_shared(model, rows, batch_size: int, pad: int, device) -> list[list[float]]:
    """Each question's tokens once, its four options after it in the same row: an option sees
    the question and its own earlier tokens, never another option (a block mask), and its
    positions continue from the question's. Same numbers as scoring four separate sequences
    with a quarter of the question tokens (the questions are most of an item's tokens)."""
    dtype = next(model.parameters()).dtype
    neg = torch.finfo(dtype).min
    scores: list[list[float]] = [[] for _ in rows]
    lengths = [len(c) + sum(map(len, o)) for c, o in rows]
    for chunk in _length_batches(lengths, batch_size):
        width = max(lengths[i] for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        pos = torch.zeros((len(chunk), width), dtype=torch.long)
        seg = torch.full((len(chunk), width), -1, dtype=torch.long)  # 0 question, j option j
        for k, i in enumerate(chunk):
            ctx, opts = rows[i]
            ids[k, : len(ctx)] = torch.tensor(ctx)
            pos[k, : len(ctx)] = torch.arange(len(ctx))
            seg[k, : len(ctx)] = 0
            at = len(ctx)
            for j, o in enumerate(opts, start=1):
                ids[k, at : at + len(o)] = torch.tensor(o)
                pos[k, at : at + len(o)] = len(ctx) + torch.arange(len(o))
                seg[k, at : at + len(o)] = j
                at += len(o)
        q, kv = seg[:, :, None], seg[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = causal & (kv != -1) & ((kv == 0) | (kv == q))
        allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, neg)[:, None]
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)
        ).logits
        # Only the positions that predict an option token go through the softmax: the first
        # option token is predicted by the question's last position.
        where, targets, owner = [], [], []
        for k, i in enumerate(chunk):
            ctx, opts = rows[i]
            at = len(ctx)
            for j, o in enumerate(opts):
                prev = [len(ctx) - 1, *range(at, at + len(o) - 1)]
                where += [(k, p) for p in prev]
                targets += o
                owner += [(i, j)] * len(o)
                at += len(o)
        rk, rp = torch.tensor(where, device=device).T
        logp = F.log_softmax(logits[rk, rp].float(), -1)
        picked = logp.gather(-1, torch.tensor(targets, device=device)[:, None])[:, 0].tolist()
        for i in chunk:
            scores[i] = [0.0] * len(rows[i][1])
        for (i, j), v in zip(owner, picked):
            scores[i][j] += v
    return scores


@torch.no_grad()
def _mc_scores_separate(model, rows, batch_size: int, pad: int, device) -> list[list[float]]:
    """The plain way: one right-padded sequence per (question, option)."""
    seqs, owner = [], []
    for i, (ctx, opts) in enumerate(rows):
        for o in opts:
            seqs.append((ctx + o, len(ctx)))
            owner.append(i)
    flat = [0.0] * len(seqs)
    for chunk in _length_batches([len(s) for s, _ in seqs], batch_size):
        ids, mask = _right_padded([seqs[i][0] for i in chunk], pad, device)
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for k, i in enumerate(chunk):
            seq, a = seqs[i]
            tgt = ids[k, a : len(seq)]
            flat[i] = float(logp[k, a - 1 : len(seq) - 1].gather(-1, tgt[:, None]).sum())
    scores: list[list[float]] = [[] for _ in rows]
    for i, v in zip(owner, flat):
        scores[i].append(v)
    return scores


@torch.no_grad()
def mc_scores(model, tokenizer, items, batch_size: int = 32) -> list[list[float]]:
    """Summed log-likelihood of each option's tokens after its question, per item. Options share
    their question's tokens in one row (`_mc_scores_shared`); the first item is also scored the
    plain way, and a model whose attention ignores the block mask (the shared scores differ) is
    scored the plain way throughout."""
    if not items:
        return []
    device = next(model.parameters()).device
    rows, pad = _mc_rows(tokenizer, items), _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        check = _mc_scores_separate(model, rows[:1], 4, pad, device)[0]
        first = _mc_scores_shared(model, rows[:1], 1, pad, device)[0]
        if max(abs(a - b) for a, b in zip(check, first)) > 1e-3 * max(1.0, *map(abs, check)):
            log.warning(
                "%s ignores the block attention mask; multiple choice is scored one option "
                "sequence at a time",
                type(model).__name__,
            )
            return _mc_scores_separate(model, rows, batch_size, pad, device)
        return _mc_scores_shared(model, rows, batch_size, pad, device)
    finally:
        if was_training:
            model.train()


def mc_accuracy(model, tokenizer, items, batch_size: int = 32) -> tuple[float, list[bool]]:
    """Multiple-choice accuracy the lm-evaluation-harness way: each option is scored by the summed
    log-likelihood of its tokens after the question; the highest-scoring option is the answer."""
    scores = mc_scores(model, tokenizer, items, batch_size)
    correct = [max(range(len(s)), key=s.__getitem__) == it.answer for s, it in zip(scores, items)]
    return sum(correct) / max(len(correct), 1), correct


# Thresholds of the smoke-test verdict. Loops are judged on word 4-grams: a fine answer of a few
# dozen tokens almost never repeats four words in a row, a looping one repeats them at once.
LOOP_N = 4
LOOP_MIN_WORDS = 8
LOOP_COVERAGE = 0.5  # share of the answer's words inside a repeated 4-gram
ONE_WORD_SHARE = 0.7  # one word over this share of >= 6 words
MIN_DISTINCT = 0.3  # distinct words / words, judged from 12 words on
CHAR_LOOP_DISTINCT = 0.25  # distinct character 4-grams / all, judged from 16 characters on
ECHO_SHARE = 0.6  # share of the answer's 4-grams copied from the prompt


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _ngrams(seq, n: int) -> list[tuple]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def _loop(words: list[str]) -> tuple[float, tuple | None, int]:
    """Share of the words covered by a word 4-gram that occurs more than once, the most
    repeated 4-gram and its count."""
    grams = _ngrams(words, LOOP_N)
    counts = Counter(grams)
    covered = set()
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered.update(range(i, i + LOOP_N))
    top, k = counts.most_common(1)[0] if counts else (None, 0)
    return len(covered) / max(len(words), 1), (top if k > 1 else None), k


def verdict(text: str, new_tokens: int, prompt: str = "") -> tuple[bool, list[str]]:
    """Judge one smoke-test answer from its text alone: (ok, reasons it failed). Fails on no new
    tokens, no letters or digits, a repetition loop (repeated word 4-grams cover most of it, or
    a character pattern repeating), one word over most of it, very few distinct words, or an
    answer that mostly copies the prompt. A short answer ("Paris.") is fine: only what is there
    is judged, never its length."""
    if new_tokens == 0:
        return False, ["no new tokens"]
    if not any(c.isalnum() for c in text):
        return False, ["only punctuation or whitespace"]
    reasons = []
    words = _words(text)
    if len(words) >= LOOP_MIN_WORDS:
        cover, gram, k = _loop(words)
        if cover >= LOOP_COVERAGE:
            what = f"'{' '.join(gram)}' ×{k}" if gram else "repeated phrases"
            reasons.append(f"repetition loop: {what} ({cover:.0%} of the words)")
    if len(words) >= 6:
        word, k = Counter(words).most_common(1)[0]
        if k / len(words) >= ONE_WORD_SHARE:
            reasons.append(f"one word repeated: '{word}' is {k} of {len(words)} words")
    if len(words) >= 12 and len(set(words)) / len(words) < MIN_DISTINCT:
        reasons.append(f"few distinct words: {len(set(words))} of {len(words)}")
    chars = re.sub(r"\s+", " ", text.strip())
    if not reasons and len(chars) >= 16:
        grams = _ngrams(chars, 4)
        if len(set(grams)) / len(grams) < CHAR_LOOP_DISTINCT:
            reasons.append(f"repetition loop: the characters '{chars[:12]}…' repeat")
    p_grams = set(_ngrams(_words(prompt), LOOP_N))
    a_grams = _ngrams(words, LOOP_N)
    if p_grams and len(a_grams) >= 2:
        copied = sum(g in p_grams for g in a_grams) / len(a_grams)
        if copied >= ECHO_SHARE:
            reasons.append(f"repeats the prompt ({copied:.0%} of its 4-word phrases)")
    return not reasons, reasons


@dataclass
class Generation:
    prompt: str
    output: str
    new_tokens: int
    ok: bool
    reason: str = ""  # why the smoke test failed ("; "-joined), empty when ok

    @classmethod
    def judged(cls, prompt: str, output: str, new_tokens: int) -> Generation:
        ok, reasons = verdict(output, new_tokens, prompt)
        return cls(prompt, output, new_tokens, ok, "; ".join(reasons))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Generation]:
    """Generate from all prompts in one left-padded batch; count the new tokens up to the first
    end-of-sequence (excluded). Zero new tokens or a degenerate answer is a failed smoke test
    (seed 003's silent-forgetting check)."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens start at the same column in every row
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = side
    kw = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
    if temperature > 0:
        torch.manual_seed(seed)
    gen = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        pad_token_id=_pad_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        **kw,
    )
    out = []
    for p, row in zip(prompts, gen[:, enc["input_ids"].shape[1] :].tolist()):
        if tokenizer.eos_token_id in row:  # finished rows are padded after their end
            row = row[: row.index(tokenizer.eos_token_id)]
        new = [t for t in row if t != tokenizer.pad_token_id]
        text = tokenizer.decode(new, skip_special_tokens=True)
        out.append(Generation.judged(p, text, len(new)))
    if was_training:
        model.train()
    return out
