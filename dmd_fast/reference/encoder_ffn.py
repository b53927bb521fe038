"""Reference post-attention block of a pre-LN MulT encoder layer (the oracle), dropout off.

x1 = x + (o Woᵀ + bo);  y = x1 + (relu(LN1(x1) W1ᵀ + b1) W2ᵀ + b2);  out = LNf(y) when the encoder's final
LayerNorm (lnf_weight, lnf_bias) is given. ``TransformerEncoderLayer.finish`` with residual and ReLU
dropout 0, then ``TransformerEncoder.layer_norm`` on the last layer. Any dtype; plain PyTorch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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
) -> Tensor:
    """x, o (T, B, E) → (T, B, E). w_o (E, E), w_1 (4E, E), w_2 (E, 4E); LayerNorm parameters (E,)."""
    E = x.shape[-1]
    x1 = x + F.linear(o, w_o, b_o)
    y = x1 + F.linear(F.relu(F.linear(F.layer_norm(x1, (E,), ln1_w, ln1_b, eps), w_1, b_1)), w_2, b_2)
    return y if lnf_w is None else F.layer_norm(y, (E,), lnf_w, lnf_b, eps)
