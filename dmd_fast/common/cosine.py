"""Upstream's pairwise cosine similarity (DMD's margin loss), shared by the oracle and the model."""

from __future__ import annotations

import torch


def pairwise_cosine(feats: torch.Tensor) -> torch.Tensor:
    """(N, d) → (N, N) cosine with upstream's norms sqrt(Σx² + 1e-8), clamped ≥ 1e-8."""
    norm = torch.sqrt(feats.pow(2).sum(1) + 1e-8).clamp_min(1e-8)
    return (feats @ feats.t()) / (norm.unsqueeze(1) * norm.unsqueeze(0))
