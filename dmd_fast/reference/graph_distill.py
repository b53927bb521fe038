"""Reference graph-distillation (GD-unit) edge aggregation, as upstream DMD computes it.

Upstream: ``trains/singleTask/distillnets/get_distillation_kernel{,_homo}.py`` and
``utils/misc.py`` (docs/upstream-semantics.md, "GD unit (graph distillation)"). Edges are the
ordered pairs (to j, from i), i != j, in the loop order ``for j in range(M): for i in range(M)``; for M = 3 that is
V→L, A→L, L→V, A→V, L→A, V→A.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmd_fast.common.graph_distill import (  # noqa: F401
    LOGIT_METRICS,
    MODALITY_LETTERS,
    REPR_METRICS,
    SOFTMAX_SCOPES,
    GraphDistillResult,
    edge_names,
    edge_pairs,
)

_COS_EPS = 1e-12  # ATen cosine_embedding_loss EPSILON


def _distance(student, teacher, metric):
    """Per-sample distance (B,) with the teacher detached."""
    diff = student - teacher.detach()
    if metric == "l1":
        return diff.abs().sum(1)
    if metric == "l2":
        return diff.pow(2).sum(1)
    raise ValueError(f"metric: expected one of {REPR_METRICS}, got {metric!r}")


def _clamped_cosine(student, teacher):
    """Per-sample max(0, cos(student, sg(teacher))) as ATen's CosineEmbeddingLoss(target=-1)."""
    t = teacher.detach()
    prod = (student * t).sum(1)
    denom = ((student * student).sum(1) + _COS_EPS) * ((t * t).sum(1) + _COS_EPS)
    return (prod / denom.sqrt()).clamp_min(0.0)


def edge_softmax(scores: torch.Tensor, num_modalities: int, alpha: float, scope: str) -> torch.Tensor:
    """(B, E) raw scores -> (B, E) weights; 'joint' over all edges, 'target' per incoming node."""
    if scope == "joint":
        return F.softmax(scores * alpha, dim=1)
    B = scores.shape[0]
    grouped = scores.view(B, num_modalities, num_modalities - 1)
    return F.softmax(grouped * alpha, dim=2).reshape(B, -1)


def graph_distill(
    logits,
    reprs,
    w_logit,
    b_logit,
    w_repr,
    b_repr,
    w_edge,
    b_edge,
    prior,
    *,
    alpha=0.125,
    softmax_scope="joint",
    logit_metric="l1",
    repr_metric="l1",
    w_losses=(1.0, 10.0),
    reg=10.0,
    total_weights=(1.0, 1.0, 1.0),
) -> GraphDistillResult:
    """One GD-unit: node embeddings, edge scores, edge softmax, weighted distillation losses.

    Args:
        logits: (M, B, C) per-modality logits (students and teachers).
        reprs: (M, B, R) per-modality representations.
        w_logit (g, C), b_logit (g,), w_repr (g, R), b_repr (g,): node embedding Linears.
        w_edge (1, 4g), b_edge (1,): edge scorer on [z_to, z_from].
        prior: (E,) fixed prior added to each edge weight, E = M(M−1).
        alpha: softmax temperature factor (DMD: 1/8).
        softmax_scope: 'joint' (DMD: all edges per sample) or 'target' (per target node).
        logit_metric: 'l1' or 'l2' distance on logits.
        repr_metric: 'l1', 'l2' (weighted per sample), or 'cosine' (DMD hetero: mean_b of
            clamped cosine times mean_b of the weight).
        w_losses: (logit weight, repr weight).
        reg: weight of the prior regulariser Σ_x (mean_b E[x] − prior[x])².
        total_weights: weights of (logit, repr, reg) in ``loss_total``; a 0 leaves the term out.
    """
    M, B = logits.shape[:2]
    z_logit = F.linear(logits.reshape(M * B, -1), w_logit, b_logit)
    z_repr = F.linear(reprs.reshape(M * B, -1), w_repr, b_repr)
    z = torch.cat((z_logit, z_repr), dim=1).view(M, B, -1)
    pairs = edge_pairs(M)
    scores = torch.cat([F.linear(torch.cat((z[j], z[i]), dim=1), w_edge, b_edge) for j, i in pairs], dim=1)
    edges = edge_softmax(scores, M, alpha, softmax_scope).transpose(0, 1)  # (E, B)

    edge_means = edges.mean(1)
    loss_reg = (edge_means - prior).pow(2).sum() * reg
    loss_logit = logits.new_zeros(())
    loss_repr = reprs.new_zeros(())
    for x, (j, i) in enumerate(pairs):
        w = edges[x] + prior[x]
        loss_logit = loss_logit + w_losses[0] * (_distance(logits[j], logits[i], logit_metric) * w).mean()
        if repr_metric == "cosine":
            loss_repr = loss_repr + w_losses[1] * _clamped_cosine(reprs[j], reprs[i]).mean() * w.mean()
        else:
            loss_repr = loss_repr + w_losses[1] * (_distance(reprs[j], reprs[i], repr_metric) * w).mean()
    return GraphDistillResult(
        loss_logit,
        loss_repr,
        loss_reg,
        weighted_total((loss_logit, loss_repr, loss_reg), total_weights),
        edges,
        scores,
        edge_means.detach(),
    )


def weighted_total(terms, weights) -> torch.Tensor:
    """Σ w·term left to right, terms of weight 0 left out, weight-1 terms added as they are."""
    total = None
    for w, t in zip(weights, terms):
        if w == 0:
            continue
        t = t if w == 1 else w * t
        total = t if total is None else total + t
    return terms[0] * 0.0 if total is None else total  # all weights 0: a zero that still has a graph
