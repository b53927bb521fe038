"""Loss terms: vectorised margin loss equals upstream's loop; orthogonality semantics."""

import pytest
import torch
import torch.nn.functional as F

from dmd_fast.model.losses import margin_loss, orthogonality_loss
from dmd_fast.reference.margin import margin_loss_loop


@pytest.mark.parametrize("B,d,n_labels", [(4, 30, 3), (16, 50, 7), (5, 8, 5), (3, 4, 1)])
def test_margin_loss_matches_loop(B, d, n_labels):
    g = torch.Generator().manual_seed(B * 100 + d)
    labels = torch.randint(-3, 4, (B, 1), generator=g).double()[:, :1] * 0.2
    if n_labels == 1:
        labels.fill_(0.6)  # every pair positive: all anchors skipped → 0
    feats = torch.randn(3 * B, d, generator=g, dtype=torch.float64, requires_grad=True)
    ids = labels.repeat_interleave(3, dim=0)
    ref = margin_loss_loop(ids, feats)
    mine = margin_loss(ids, feats)
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    if ref.requires_grad:
        (g_ref,) = torch.autograd.grad(ref, feats)
        (g_mine,) = torch.autograd.grad(mine, feats)
        torch.testing.assert_close(g_mine, g_ref, rtol=1e-10, atol=1e-12)


def test_margin_loss_fixture(upstream_fixture):
    io = upstream_fixture["gd_io"]
    ids, feats = io["hinge_ids"], io["hinge_feats"]
    expect = upstream_fixture["losses"]["loss_sim"]
    torch.testing.assert_close(margin_loss(ids, feats), expect, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(margin_loss_loop(ids, feats), expect, rtol=1e-6, atol=1e-7)


def test_ort_torch19_equals_documented_cosine_embedding():
    T, B, d = 7, 4, 5
    s, c = torch.randn(T, B, d, dtype=torch.float64), torch.randn(T, B, d, dtype=torch.float64)
    stock = F.cosine_embedding_loss(
        s.permute(0, 2, 1).reshape(-1, B), c.permute(0, 2, 1).reshape(-1, B), torch.tensor([-1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(orthogonality_loss(s, c, "torch19"), stock)


def test_ort_per_sample_is_per_sample():
    T, B, d = 6, 3, 4
    s, c = torch.randn(T, B, d, dtype=torch.float64), torch.randn(T, B, d, dtype=torch.float64)
    per = [F.cosine_similarity(s[:, b].reshape(1, -1), c[:, b].reshape(1, -1), eps=0).clamp_min(0) for b in range(B)]
    torch.testing.assert_close(orthogonality_loss(s, c, "per_sample"), torch.cat(per).mean(), rtol=1e-10, atol=1e-12)


def test_ort_bad_semantics():
    x = torch.randn(2, 2, 2)
    with pytest.raises(ValueError, match="ort_semantics"):
        orthogonality_loss(x, x, "cosine")
