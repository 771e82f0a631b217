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
