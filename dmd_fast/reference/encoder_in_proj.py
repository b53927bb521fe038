"""Reference LayerNorm0 + q/k/v in-projection of a pre-LN MulT encoder layer (the oracle).

Self-attention (``source`` None): h = LN0(x); q, k, v = h Wqᵀ + bq, h Wkᵀ + bk, h Wvᵀ + bv.
Cross-modal: q = LN0(x) Wqᵀ + bq; k, v = LN0(s) Wkᵀ + bk, LN0(s) Wvᵀ + bv, the same LN0 parameters
for x and s. W = in_proj_weight (3E, E) (row thirds Wq, Wk, Wv), b = in_proj_bias (3E,). No q scaling.
Any dtype (float64 for the parity tests); plain PyTorch, differentiable.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def encoder_in_projection(
    x: Tensor,
    source: Tensor | tuple[Tensor, Tensor] | None,
    ln_weight: Tensor,
    ln_bias: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """x (Tq, B, E), source None, (Tk, B, E) or a pair (s_k, s_v) of them → q (Tq, B, E), k, v ((Tk or Tq), B, E)."""
    E = x.shape[-1]
    wq, wk, wv = in_proj_weight.split(E, dim=0)
    bq, bk, bv = in_proj_bias.split(E, dim=0)
    h = F.layer_norm(x, (E,), ln_weight, ln_bias, eps)
    if isinstance(source, tuple):  # separate key and value streams (s_k, s_v)
        hk, hv = (F.layer_norm(t, (E,), ln_weight, ln_bias, eps) for t in source)
    else:
        hk = hv = h if source is None else F.layer_norm(source, (E,), ln_weight, ln_bias, eps)
    return F.linear(h, wq, bq), F.linear(hk, wk, bk), F.linear(hv, wv, bv)
