"""DMD with its two graph-distillation units and the full upstream loss.

Upstream keeps three modules (DMD, HomoGD, HeteroGD) in one Adam optimizer; this wraps them so a
trainer, a checkpoint and the parity check see one module. ``dmd``'s state_dict is exactly
upstream's; ``gd_homo`` / ``gd_hetero`` hold upstream's GD kernels' parameters.
"""

from __future__ import annotations

from torch import nn

from dmd_fast import validation as check
from dmd_fast.model.config import DMDConfig
from dmd_fast.model.dmd import DMD
from dmd_fast.model.losses import MARGIN_NO_ANCHOR, dmd_losses
from dmd_fast.nn.graph_distill import (
    HETERO_PRIOR_LOGITS,
    HETERO_TOTAL_WEIGHTS,
    HOMO_PRIOR_LOGITS,
    HOMO_TOTAL_WEIGHTS,
    GDUnit,
    prior_from_logits,
)


class DMDSystem(nn.Module):
    """forward(text, audio, vision, labels=None) → (outputs dict, losses dict or None)."""

    def __init__(
        self,
        config: DMDConfig,
        backend: str = "auto",
        homo_prior=None,
        hetero_prior=None,
        margin_no_anchor: str = "zero",
    ):
        super().__init__()
        self.config = config
        # "zero" (no host sync) or "upstream" (no gradient on a batch without a margin anchor, see losses)
        self.margin_no_anchor = check.choice(margin_no_anchor, "margin_no_anchor", MARGIN_NO_ANCHOR)
        self.backend = backend  # the DMD model's, the GD units' and the fused loss terms' backend
        self.dmd = DMD(config, backend=backend)
        d = config.d_model
        common = dict(
            n_classes=1,
            to_idx=[0, 1, 2],
            from_idx=[0, 1, 2],
            gd_reg=config.gd_reg,
            w_losses=list(config.gd_w_losses),
            metric="l1",
            alpha=config.gd_alpha,
            backend=backend,
            check_finite=False,
        )  # no per-step host sync; the trainer checks the loss per epoch
        self.gd_homo = GDUnit(
            hidden_size=d,
            gd_size=config.gd_size_homo,
            gd_prior=prior_from_logits(HOMO_PRIOR_LOGITS) if homo_prior is None else homo_prior,
            repr_metric="l1",
            total_weights=HOMO_TOTAL_WEIGHTS,
            **common,
        )
        self.gd_hetero = GDUnit(
            hidden_size=2 * d,
            gd_size=config.gd_size_hetero,
            gd_prior=prior_from_logits(HETERO_PRIOR_LOGITS) if hetero_prior is None else hetero_prior,
            repr_metric="cosine",
            total_weights=HETERO_TOTAL_WEIGHTS,
            **common,
        )

    def forward(self, text, audio, vision, labels=None):
        outputs = self.dmd(text, audio, vision)
        if labels is None:
            return outputs, None
        losses = dmd_losses(
            outputs,
            labels,
            self.gd_homo,
            self.gd_hetero,
            ort_semantics=self.config.ort_semantics,
            margin_no_anchor=self.margin_no_anchor,
            backend=self.backend,
        )
        return outputs, losses
