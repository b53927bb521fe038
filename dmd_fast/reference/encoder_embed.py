"""Reference embedding prologue of a MulT encoder (the oracle): √E·x + PE(x), then dropout.

y = scale · x + PE(x) with the zero-frame rule (frame t of sample b takes table row t + 1 when its
channel 0 is non-zero, row 0 = zeros otherwise); out = y · keep / (1 − p) with an explicit keep mask
(bool, like y) or none. ``TransformerEncoder.embed`` with ``F.dropout`` replaced by the given mask.
"""

from __future__ import annotations

import torch
from torch import Tensor


def encoder_embedding(x: Tensor, table: Tensor, scale: float, keep: Tensor | None = None, p: float = 0.0) -> Tensor:
    """x (T, B, E), table (≥ T + 1, E) with row 0 zero → (T, B, E) in x's dtype."""
    T = x.shape[0]
    steps = torch.arange(1, T + 1, device=x.device).unsqueeze(1)
    positions = torch.where(x[:, :, 0] != 0, steps, torch.zeros_like(steps))
    pe = table.index_select(0, positions.reshape(-1)).view(x.shape).to(x.dtype)
    y = scale * x + pe
    return y if keep is None else y * keep / (1.0 - p)
