"""Spectral metrics against values computed by hand."""

import math

import pytest
import torch

from core.spectral import analyse, effective_rank, top_left_vectors, topk_cosine


def test_effective_rank_by_hand():
    assert effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.tensor([2.0, 2.0])) == pytest.approx(2.0)
    # p = (3/4, 1/4): exp(-(3/4 ln 3/4 + 1/4 ln 1/4))
    want = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(want)
    assert effective_rank(torch.zeros(3)) == 0.0


def test_topk_cosine_by_hand():
    w = torch.diag(torch.tensor([2.0, 1.0]))
    u = top_left_vectors(w, 1)
    # W + dW = diag(1, 2): the leading direction turns from e1 to e2 -> cosine 0
    assert topk_cosine(u, torch.diag(torch.tensor([1.0, 2.0])), 1) == pytest.approx(0.0, abs=1e-12)
    # a small change keeps the direction -> cosine 1
    assert topk_cosine(u, w + 0.01 * torch.eye(2), 1) == pytest.approx(1.0)
    # rotate the leading direction by 30 degrees -> cos 30
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    r = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    assert topk_cosine(u, r @ w.double(), 1) == pytest.approx(c)


def test_rows_by_hand_and_factored_equals_dense():
    torch.manual_seed(0)
    w = torch.randn(6, 4, dtype=torch.float64)
    b, a = torch.randn(6, 2, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    dense = analyse([("model.layers.3.self_attn.q_proj", w, b @ a)], k=3)[0]
    fact = analyse([("model.layers.3.self_attn.q_proj", w, (b, a))], k=3)[0]
    assert dense["layer"] == 3 and dense["module"] == "q_proj" and dense["k"] == 3
    assert dense["fro_norm"] == pytest.approx(float(torch.linalg.norm(b @ a)))
    s = torch.linalg.svdvals(b @ a)[:2]
    p = s / s.sum()
    assert dense["eff_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    for key in ("fro_norm", "eff_rank", "topk_cos"):
        assert fact[key] == pytest.approx(dense[key], rel=1e-9)
    # rank-one update -> effective rank 1
    one = analyse([("x.0.m", w, (b[:, :1], a[:1]))], k=2)[0]
    assert one["eff_rank"] == pytest.approx(1.0, abs=1e-6)


def test_left_vectors_match_a_full_svd():
    torch.manual_seed(1)
    for shape in [(30, 12), (12, 30)]:
        w = torch.randn(*shape, dtype=torch.float64)
        u = torch.linalg.svd(w, full_matrices=False)[0][:, :4]
        v = top_left_vectors(w, 4)
        assert (u * v).sum(0).abs() == pytest.approx(torch.ones(4, dtype=torch.float64))


def _tuned(q: torch.Tensor, sig) -> torch.Tensor:
    """A symmetric matrix whose singular vectors are the columns of q, leading first."""
    return q @ torch.diag(torch.tensor(sig, dtype=torch.float64)) @ q.T


def test_intruder_dimensions_of_a_constructed_matrix():
    """Shuttleworth et al. 2024's count on a matrix built with a known answer: the base is
    diag(16, ..., 1) (singular vectors e_i); the tuned matrix's two leading singular vectors are
    (1, ..., 1)/4 and (1, -1, 1, ...)/4, whose largest |cosine| with any e_i is 0.25 (two
    intruders); the next ones are e_1, e_2, ... with those two directions removed, |cosine|
    with their e_i above 0.9 (no intruders)."""
    from core.spectral import intruder_count

    n = 16
    w0 = torch.diag(torch.arange(n, 0, -1, dtype=torch.float64))
    y1 = torch.ones(n, dtype=torch.float64) / 4
    y2 = torch.tensor([(-1.0) ** i for i in range(n)], dtype=torch.float64) / 4
    q, _ = torch.linalg.qr(torch.column_stack([y1, y2, torch.eye(n, dtype=torch.float64)[:, :14]]))
    assert (q.T @ q - torch.eye(n, dtype=torch.float64)).abs().max() < 1e-12
    best = (q[:, 2:6]).abs().max(0).values  # the next four vectors stay close to an e_i
    assert (best > 0.9).all()
    w = _tuned(q, [float(100 - i) for i in range(n)])
    u0 = top_left_vectors(w0, n)
    for k, want in ((1, 1), (2, 2), (4, 2), (10, 2)):
        assert intruder_count(u0, top_left_vectors(w, k), k, 0.5) == want, k
    row = analyse([("model.layers.0.mlp.up_proj", w0, w - w0)], k=4, intruder_k=4)[0]
    assert row["intruder_dims"] == 2
    # without the count the row says so
    assert analyse([("x.0.m", w0, w - w0)], k=4)[0]["intruder_dims"] is None


def test_intruder_threshold_epsilon_decides_by_the_largest_cosine():
    """Two leading vectors at 45 degrees between e_1 and e_2 (largest |cosine| 0.707): intruders
    below a threshold of 0.8, not below 0.5."""
    from core.spectral import intruder_count

    w0 = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    r = 2**-0.5
    q = torch.tensor([[r, r, 0, 0], [r, -r, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    u0, u_t = top_left_vectors(w0, 4), top_left_vectors(_tuned(q, [10.0, 9.0, 2.0, 1.0]), 4)
    assert intruder_count(u0, u_t, 4, 0.5) == 0
    assert intruder_count(u0, u_t, 4, 0.8) == 2
    assert intruder_count(u0, u_t, 0, 0.8) == 0


def test_intruders_of_a_low_rank_update_factored_equal_dense_and_a_tiny_update_has_none():
    torch.manual_seed(2)
    w = torch.randn(64, 48, dtype=torch.float64)
    b, a = torch.randn(64, 2, dtype=torch.float64), torch.randn(2, 48, dtype=torch.float64)
    big = 50.0 * b  # two new directions far above the base's singular values, random in R^64:
    # their |cosine| with each of the base's 48 vectors is about 1/8, far below 0.5
    dense = analyse([("m.1.q", w, big @ a)], k=3, intruder_k=6, intruder_eps=0.5)[0]
    fact = analyse([("m.1.q", w, (big, a))], k=3, intruder_k=6, intruder_eps=0.5)[0]
    assert dense["intruder_dims"] == fact["intruder_dims"] == 2
    tiny = analyse([("m.1.q", w, 1e-6 * (b @ a))], k=3, intruder_k=6)[0]
    assert tiny["intruder_dims"] == 0 and tiny["topk_cos"] == pytest.approx(1.0)


def test_the_base_cache_keeps_every_vector_for_intruders_and_respects_its_budget(monkeypatch):
    """With the count on, the cache keeps all min(m, n) base vectors; over the byte budget it
    keeps nothing and decomposes the base again, with the same results."""
    from core import spectral

    torch.manual_seed(3)
    w = torch.randn(10, 6, dtype=torch.float64)
    dw = torch.randn(10, 6, dtype=torch.float64)
    cache: dict = {}
    kept = analyse([("a.0.b", w, dw)], k=2, base_cache=cache, intruder_k=3)[0]
    assert cache["a.0.b"].shape == (10, 6)
    again = analyse([("a.0.b", w, dw)], k=2, base_cache=cache, intruder_k=3)[0]
    assert again == kept
    monkeypatch.setattr(spectral, "BASE_CACHE_BYTES", 0)
    empty: dict = {}
    fresh = analyse([("a.0.b", w, dw)], k=2, base_cache=empty, intruder_k=3)[0]
    assert not empty and fresh["intruder_dims"] == kept["intruder_dims"]
    assert fresh["topk_cos"] == pytest.approx(kept["topk_cos"])
