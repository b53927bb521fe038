"""Reference margin ("sim") loss: upstream HingeLoss, one anchor at a time (the oracle).

The fast version is ``dmd_fast.model.losses.margin_loss`` (no Python loop over anchors).
"""

from __future__ import annotations

import torch

from dmd_fast.common.cosine import pairwise_cosine


def margin_loss_loop(ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """ids (N, 1) labels, feats (N, d) → 0-d loss, looping over anchors like upstream.

    Positives: exactly equal labels (diagonal dropped); negatives: the rest; per-pair margin
    0.15·|y_p − y_q|; anchors lacking positives or negatives are skipped; mean over anchors.
    """
    N = feats.shape[0]
    cos = pairwise_cosine(feats)
    y = ids.reshape(N)
    total = feats.new_zeros(())
    count = 0
    for p in range(N):
        others = torch.arange(N, device=feats.device) != p
        pos = (y == y[p]) & others
        neg = (y != y[p]) & others
        if not bool(pos.any()) or not bool(neg.any()):
            continue
        c_pos = cos[p, pos].unsqueeze(1)  # (P, 1)
        c_neg = cos[p, neg].unsqueeze(0)  # (1, Q)
        margin = (0.15 * (y[neg] - y[p]).abs()).unsqueeze(0)  # (1, Q)
        total = total + torch.clamp_min(margin - c_pos + c_neg, 0.0).mean()
        count += 1
    return total / max(count, 1)
