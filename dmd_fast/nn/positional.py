"""Sinusoidal positional embedding as MulT/fairseq (padding_idx 0, right padding).

Position of frame t of sample b is t + 1 when the frame's first feature channel is non-zero and
0 otherwise; row 0 of the table is zero, so exactly-zero (padded) frames get no embedding.
Positions are built as integers (upstream builds them in the input dtype, which rounds them
under bf16 autocast); the table is fp32 as upstream.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dmd_fast import validation as check


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim) fp32 table: [sin | cos] concatenated, zero column if dim is odd, row 0 zero."""
    half = dim // 2
    step = math.log(10000) / (half - 1) if half > 1 else 0.0
    freq = torch.exp(torch.arange(half, dtype=torch.float) * -step)
    angles = torch.arange(num_positions, dtype=torch.float).unsqueeze(1) * freq.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).view(num_positions, -1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[0, :] = 0
    return table


class SinusoidalPositionalEmbedding(nn.Module):
    """PE for a sequence-first input x (T, B, E) → (T, B, E), detached.

    Keeps upstream's ``_float_tensor`` buffer (a dtype carrier) so checkpoints load strictly.
    """

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.embedding_dim = check.dim(embedding_dim, "embedding_dim")
        self.register_buffer("_float_tensor", torch.zeros(1))
        self._tables: dict[tuple, torch.Tensor] = {}

    def _table(self, num_positions: int, device) -> torch.Tensor:
        key = (str(device),)
        table = self._tables.get(key)
        if table is None or table.shape[0] < num_positions:
            table = sinusoidal_table(num_positions, self.embedding_dim).to(device)
            self._tables[key] = table
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check.tensor(x, "x", ndim=3, layout="(T, B, E)")
        T = x.shape[0]
        table = self._table(T + 1, x.device)
        steps = torch.arange(1, T + 1, device=x.device).unsqueeze(1)  # (T, 1)
        positions = torch.where(x[:, :, 0] != 0, steps, torch.zeros_like(steps))  # (T, B) int64
        pe = table[: T + 1].index_select(0, positions.reshape(-1)).view(T, x.shape[1], self.embedding_dim)
        return pe.to(self._float_tensor.dtype).detach()
