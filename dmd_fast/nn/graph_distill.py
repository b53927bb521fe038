"""GD-unit module with upstream DMD's constructor and parameter names (``W_logit``, ``W_repr``, ``W_edge``).

An upstream ``DistillationKernel`` state dict (6 keys) loads with ``strict=True``: the prior is a
non-persistent buffer. ``forward`` runs ``dmd_fast.ops.graph_distill``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dmd_fast import validation as check
from dmd_fast.common.graph_distill import LOGIT_METRICS, REPR_METRICS, SOFTMAX_SCOPES, GraphDistillResult, edge_names
from dmd_fast.ops.backend import check_backend_name
from dmd_fast.ops.graph_distill import check_total_weights, graph_distill

PRIOR_TEMPERATURE = 0.25
HOMO_PRIOR_LOGITS = (0, 0, 1, 0, 1, 0)  # run.py: favours L→V, L→A
HETERO_PRIOR_LOGITS = (0, 0, 1, 0, 1, 1)  # run.py: favours L→V, L→A, V→A
HOMO_TOTAL_WEIGHTS = (1.0, 0.0, 1.0)  # DMD.py: homo total = logit + reg (repr computed, unused)
HETERO_TOTAL_WEIGHTS = (1.0, 1.0, 1.0)  # DMD.py: hetero total = logit + repr + reg


def prior_from_logits(logits: Sequence[float], temperature: float = PRIOR_TEMPERATURE) -> torch.Tensor:
    """Upstream ``misc.softmax(w, t)`` = softmax(w / t), computed in float64 and stored as float32."""
    return torch.softmax(torch.tensor(logits, dtype=torch.float64) / temperature, 0).float()


class GDUnit(nn.Module):
    """Graph-distillation unit over M modalities (all M(M−1) directed edges).

    Args (upstream order): n_classes (C), hidden_size (R), gd_size (g), to_idx, from_idx (both must be
    range(M)), gd_prior (E,), gd_reg, w_losses (logit, repr), metric (logit distance 'l1'|'l2'),
    alpha (softmax scale); keyword-only: repr_metric (default: ``metric``, as upstream's homo unit;
    the hetero unit uses 'cosine'), softmax_scope ('joint' as DMD, or 'target'), backend,
    check_finite (NaN/inf check of the inputs each forward, a host sync; set False for speed),
    total_weights (weights of logit, repr, reg in the result's ``loss_total``; DMD's homo unit
    (1, 0, 1): its repr term is computed but not trained on; hetero (1, 1, 1)).
    The prior is checked once here (sums to 1, or to 1 per target node for 'target').
    Attributes: ``last_mean_edges`` (E,) detached batch mean of the last forward's edge weights,
    without the prior (no host sync); ``edge_names`` in the same order.
    """

    def __init__(
        self,
        n_classes,
        hidden_size,
        gd_size,
        to_idx,
        from_idx,
        gd_prior,
        gd_reg,
        w_losses,
        metric,
        alpha=1 / 8,
        *,
        repr_metric=None,
        softmax_scope="joint",
        backend="auto",
        check_finite=True,
        total_weights=(1.0, 1.0, 1.0),
    ):
        super().__init__()
        n_classes, hidden_size = check.dim(n_classes, "n_classes"), check.dim(hidden_size, "hidden_size")
        gd_size = check.dim(gd_size, "gd_size")
        check.choice(metric, "metric", LOGIT_METRICS)
        check.choice(metric if repr_metric is None else repr_metric, "repr_metric", REPR_METRICS)
        check.choice(softmax_scope, "softmax_scope", SOFTMAX_SCOPES)
        check_backend_name(backend)
        check.boolean(check_finite, "check_finite")
        to_idx, from_idx = list(to_idx), list(from_idx)
        M = len(to_idx)
        if to_idx != list(range(M)) or from_idx != list(range(M)):
            raise ValueError(
                f"to_idx/from_idx: expected both to be range(M) = {list(range(M))}, got to_idx="
                f"{to_idx}, from_idx={from_idx} (only the full graph over M modalities is supported)"
            )
        if M < 2:
            raise ValueError(f"to_idx/from_idx: expected at least 2 modalities, got M={M}")
        try:
            prior = torch.as_tensor(gd_prior, dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"gd_prior: expected {M * (M - 1)} numbers, got {gd_prior!r} ({exc})") from None
        if prior.numel() != M * (M - 1):
            raise ValueError(f"gd_prior: expected {M * (M - 1)} values (M(M-1) for M={M}), got {prior.numel()}")
        if not bool(torch.isfinite(prior).all() and (prior >= 0).all()):
            raise ValueError(f"gd_prior: expected finite values >= 0, got {prior.tolist()}")
        sums = prior.double().sum(0, keepdim=True) if softmax_scope == "joint" else prior.double().view(M, -1).sum(1)
        if not (sums - 1).abs().max() <= 1e-4:
            raise ValueError(
                f"gd_prior: expected to sum to 1 (per target node for softmax_scope='target'), got sums {sums.tolist()}"
            )
        self.W_logit = nn.Linear(n_classes, gd_size)
        self.W_repr = nn.Linear(hidden_size, gd_size)
        self.W_edge = nn.Linear(gd_size * 4, 1)
        self.register_buffer("gd_prior", prior, persistent=False)
        self.num_modalities = M
        self.gd_size = gd_size
        self.to_idx, self.from_idx = to_idx, from_idx
        self.alpha = check.real(alpha, "alpha")
        self.gd_reg = check.real(gd_reg, "gd_reg")
        self.w_losses = check.reals(w_losses, "w_losses", 2, "weights (logit, repr)")
        self.metric = metric
        self.repr_metric = metric if repr_metric is None else repr_metric
        self.softmax_scope = softmax_scope
        self.backend = backend
        self.check_finite = check_finite
        self.total_weights = check_total_weights(total_weights)
        self.last_mean_edges: torch.Tensor | None = None

    @property
    def edge_names(self) -> list[str]:
        """'FROM→TO' per edge in upstream order (M=3: V→L, A→L, L→V, A→V, L→A, V→A)."""
        return edge_names(self.num_modalities)

    def forward(self, logits: torch.Tensor, reprs: torch.Tensor) -> GraphDistillResult:
        """logits (M, B, C), reprs (M, B, R) -> GraphDistillResult (edges (E, B) without the prior)."""
        check.tensor(logits, "logits", layout="(M, B, C)")
        check.tensor(reprs, "reprs", layout="(M, B, R)")
        if logits.dim() != 3 or logits.shape[0] != self.num_modalities:
            raise ValueError(f"logits: expected shape ({self.num_modalities}, B, C), got {tuple(logits.shape)}")
        res = graph_distill(
            logits,
            reprs,
            self.W_logit.weight,
            self.W_logit.bias,
            self.W_repr.weight,
            self.W_repr.bias,
            self.W_edge.weight,
            self.W_edge.bias,
            self.gd_prior,
            alpha=self.alpha,
            softmax_scope=self.softmax_scope,
            logit_metric=self.metric,
            repr_metric=self.repr_metric,
            w_losses=self.w_losses,
            reg=self.gd_reg,
            total_weights=self.total_weights,
            backend=self.backend,
            check_prior=False,
            check_finite=self.check_finite,
        )
        self.last_mean_edges = res.edge_means
        return res

    def extra_repr(self) -> str:
        return (
            f"M={self.num_modalities}, gd_size={self.gd_size}, alpha={self.alpha}, metric={self.metric!r}, "
            f"repr_metric={self.repr_metric!r}, softmax_scope={self.softmax_scope!r}, backend={self.backend!r}, "
            f"total_weights={self.total_weights}"
        )


def homo_gd(hidden: int, backend: str = "auto") -> GDUnit:
    """DMD's HomoGD: g=64, prior softmax([0,0,1,0,1,0]/0.25), l1 logits and reprs, w_losses (1, 10), reg 10;
    loss_total = logit + reg (upstream computes the repr term and leaves it out of the total)."""
    return GDUnit(
        1,
        hidden,
        64,
        range(3),
        range(3),
        prior_from_logits(HOMO_PRIOR_LOGITS),
        10.0,
        (1.0, 10.0),
        "l1",
        1 / 8,
        repr_metric="l1",
        backend=backend,
        total_weights=HOMO_TOTAL_WEIGHTS,
    )


def hetero_gd(hidden: int, backend: str = "auto") -> GDUnit:
    """DMD's HeteroGD: g=32, prior softmax([0,0,1,0,1,1]/0.25), l1 logits, clamped-cosine reprs."""
    return GDUnit(
        1,
        hidden,
        32,
        range(3),
        range(3),
        prior_from_logits(HETERO_PRIOR_LOGITS),
        10.0,
        (1.0, 10.0),
        "l1",
        1 / 8,
        repr_metric="cosine",
        backend=backend,
        total_weights=HETERO_TOTAL_WEIGHTS,
    )
