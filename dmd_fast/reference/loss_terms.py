"""Reference fused loss terms (the oracle): mean-reduced terms, their group sums and a weighted total.

Kinds, for a and b of one shape:
- ``"l1"``: mean |a − b| (``F.l1_loss``); ``"mse"``: mean (a − b)² (``F.mse_loss``);
- ``"cosine"``: a, b (D0, D1, D2): cos[i, k] = Σ_j a·b / √((Σ_j a² + eps)(Σ_j b² + eps)) over dim 1,
  mean of max(cos, 0) (``CosineEmbeddingLoss`` with target −1, as DMD's orthogonality loss);
- ``"value"``: a one-element tensor taken as it is (b is None): a loss computed elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def loss_term(kind: str, a: Tensor, b: Tensor | None, eps: float = 1e-12) -> Tensor:
    """One term's value (0-d), computed in a's dtype."""
    if kind == "l1":
        return F.l1_loss(a, b)
    if kind == "mse":
        return F.mse_loss(a, b)
    if kind == "cosine":
        prod = (a * b).sum(1)
        denom = ((a * a).sum(1) + eps) * ((b * b).sum(1) + eps)
        return (prod / denom.sqrt()).clamp_min(0.0).mean()
    if kind == "value":
        return a.reshape(())
    raise ValueError(f"kind: expected one of ('l1', 'mse', 'cosine', 'value'), got {kind!r}")


def loss_terms(terms, weights, groups, n_groups: int, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """terms: n (kind, a, b); weights: n floats; groups: n ints in [-1, n_groups) (−1: in no group).

    Returns (values (n + n_groups,), total ()): each term's value, then each group's sum in term order;
    total = Σ_t weights[t] · values[t] in term order. In the accumulation dtype (fp64 for fp64 inputs,
    else fp32; inputs are upcast first)."""
    acc = torch.float64 if terms[0][1].dtype == torch.float64 else torch.float32
    vals = [loss_term(k, a.to(acc), None if b is None else b.to(acc), eps) for k, a, b in terms]
    zero = vals[0].new_zeros(())
    sums = []
    for g in range(n_groups):
        s = zero
        for v, grp in zip(vals, groups):
            if grp == g:
                s = s + v
        sums.append(s)
    total = zero
    for v, w in zip(vals, weights):
        total = total + w * v
    return torch.stack(vals + sums), total
