"""Reference post-attention block of a pre-LN MulT encoder layer (the oracle), with explicit dropout masks.

x1 = x + D_res1(o Woᵀ + bo);  y = x1 + D_res2(D_relu(relu(LN1(x1) W1ᵀ + b1)) W2ᵀ + b2);  out = LNf(y) when
the encoder's final LayerNorm (lnf_weight, lnf_bias) is given. D(v) = v · keep / (1 − p) with a bool keep
mask (None: no dropout). ``TransformerEncoderLayer.finish``, then ``TransformerEncoder.layer_norm`` on the
last layer. Any dtype; plain PyTorch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _drop(v: Tensor, keep: Tensor | None, p: float) -> Tensor:
    return v if keep is None else v * keep.to(v.dtype) * (1.0 / (1.0 - p))


def encoder_ffn_block(
    x: Tensor,
    o: Tensor,
    w_o: Tensor,
    b_o: Tensor,
    ln1_w: Tensor,
    ln1_b: Tensor,
    w_1: Tensor,
    b_1: Tensor,
    w_2: Tensor,
    b_2: Tensor,
    lnf_w: Tensor | None = None,
    lnf_b: Tensor | None = None,
    eps: float = 1e-5,
    *,
    keep_res1: Tensor | None = None,
    keep_relu: Tensor | None = None,
    keep_res2: Tensor | None = None,
    res_p: float = 0.0,
    relu_p: float = 0.0,
) -> Tensor:
    """x, o (T, B, E) → (T, B, E). w_o (E, E), w_1 (4E, E), w_2 (E, 4E); LayerNorm parameters (E,).
    keep_res1, keep_res2 (T, B, E) and keep_relu (T, B, 4E) bool keep masks (None: no dropout), applied
    with probabilities res_p (both residual masks) and relu_p."""
    E = x.shape[-1]
    x1 = x + _drop(F.linear(o, w_o, b_o), keep_res1, res_p)
    a = _drop(F.relu(F.linear(F.layer_norm(x1, (E,), ln1_w, ln1_b, eps), w_1, b_1)), keep_relu, relu_p)
    y = x1 + _drop(F.linear(a, w_2, b_2), keep_res2, res_p)
    return y if lnf_w is None else F.layer_norm(y, (E,), lnf_w, lnf_b, eps)
