"""Graph distillation (GD-unit) definitions shared by the reference, the op, the layer and the trainer.

Edges are the ordered pairs (to j, from i), i != j, in upstream's loop order
``for j in range(M): for i in range(M)``; for M = 3 that is V→L, A→L, L→V, A→V, L→A, V→A.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODALITY_LETTERS = ("L", "V", "A")
SOFTMAX_SCOPES = ("joint", "target")
REPR_METRICS = ("l1", "l2", "cosine")
LOGIT_METRICS = ("l1", "l2")


def edge_pairs(num_modalities: int) -> list[tuple[int, int]]:
    """(to j, from i) for every directed edge, in upstream order."""
    return [(j, i) for j in range(num_modalities) for i in range(num_modalities) if i != j]


def edge_names(num_modalities: int = 3, letters=MODALITY_LETTERS) -> list[str]:
    """Human names 'FROM→TO' in upstream edge order (M=3: V→L, A→L, L→V, A→V, L→A, V→A)."""
    if num_modalities > len(letters):
        letters = [f"m{i}" for i in range(num_modalities)]
    return [f"{letters[i]}→{letters[j]}" for j, i in edge_pairs(num_modalities)]


@dataclass
class GraphDistillResult:
    """Loss terms (0-d) and edge weights.

    loss_logit, loss_repr, loss_reg: unweighted-by-unit terms (w_losses already applied).
    loss_total: Σ total_weights · (logit, repr, reg), terms of weight 0 left out (DMD's homo
        unit: logit + reg; hetero: all three).
    edges: (E, B) softmax edge weights without the prior.
    edge_scores: (B, E) raw edge scores before the softmax.
    edge_means: (E,) batch mean of ``edges``, detached (the paper's edge readout; no gradient).
    """

    loss_logit: torch.Tensor
    loss_repr: torch.Tensor
    loss_reg: torch.Tensor
    loss_total: torch.Tensor
    edges: torch.Tensor
    edge_scores: torch.Tensor
    edge_means: torch.Tensor
