"""DMD's margin ("sim") loss op: validation, backend choice, torch.library registration.

``margin_loss`` has the meaning of ``dmd_fast.reference.margin.margin_loss_loop`` (upstream's HingeLoss,
every anchor; 0 when no anchor has both a positive and a negative). The Triton path
(``dmd_fast.kernels.margin_loss``) is one forward and one backward launch, one program each, for up to
``MAX_ROWS`` (64) rows; registered as ``dmd_fast::margin_loss_fwd`` / ``dmd_fast::margin_loss_bwd`` with fake
kernels and autograd, so ``torch.compile(fullgraph=True)`` traces through it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmd_fast import validation as check
from dmd_fast.ops.backend import resolve_backend
from dmd_fast.ops.registration import define_op
from dmd_fast.reference.margin import margin_loss_loop as reference

OP = "margin_loss"
MAX_ROWS = 64  # kernels.margin_loss.MAX_ROWS
_DTYPES = (torch.float32, torch.float64)


def _fwd(feats: Tensor, y: Tensor) -> list[Tensor]:
    """[the loss (0-d)]."""
    from dmd_fast.kernels.margin_loss import margin_fwd as launch

    return [launch(feats, y)]


def _fwd_fake(feats, y):
    return [feats.new_empty(())]


def _fwd_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _fwd_backward(ctx, grads):
    feats, y = ctx.saved_tensors
    if grads[0] is None:  # an undefined output gradient (not materialised): none for feats either
        return None, None
    return bwd_op.inner(ctx, feats, y, grads[0]), None


def _bwd(feats: Tensor, y: Tensor, g: Tensor) -> Tensor:
    from dmd_fast.kernels.margin_loss import margin_bwd as launch

    return launch(feats, y, g)


def _bwd_fake(feats, y, g):
    return feats.new_empty(feats.shape)


# registered as dmd_fast::margin_loss_fwd, dmd_fast::margin_loss_bwd
bwd_op = define_op("margin_loss_bwd", _bwd, fake=_bwd_fake)
fwd_op = define_op(
    "margin_loss_fwd", _fwd, fake=_fwd_fake, setup_context=_fwd_setup, backward=_fwd_backward, list_output=True
)


def margin_loss(ids: Tensor, feats: Tensor, *, backend: str = "auto") -> Tensor:
    """ids (N, 1) or (N,) labels, feats (N, d) → the 0-d HingeLoss value over every anchor.

    Positives of anchor p: rows with exactly its label (p itself excluded); negatives: the other rows;
    margin 0.15·|y_p − y_b|; anchors without a positive or a negative are skipped; 0 when none is left
    (a zero still tied to feats: zero gradient). fp32/fp64; the Triton path takes N <= 64.
    """
    check.tensor(feats, "feats", ndim=2, layout="(N, d)", floating=True)
    check.tensor(ids, "ids", layout="(N, 1) or (N,)", floating=True)
    N = feats.shape[0]
    if tuple(ids.shape) not in ((N,), (N, 1)):
        raise ValueError(f"ids: expected shape ({N},) or ({N}, 1) (one label per row of feats), got {tuple(ids.shape)}")
    check.same_device(ids, "ids", feats.device, "feats")
    if feats.dtype not in _DTYPES:
        raise TypeError(f"feats: expected float32 or float64 (the losses run in fp32), got {feats.dtype}")
    if N == 0 or feats.shape[1] == 0:
        raise ValueError(f"feats: expected at least one row and one feature, got shape {tuple(feats.shape)}")
    if resolve_backend(backend, feats.device, OP) == "reference":
        return reference(ids.reshape(N, 1).to(feats.dtype), feats)
    if N > MAX_ROWS:
        raise ValueError(
            f"feats: the Triton margin loss takes N <= {MAX_ROWS} rows (3 per sample in DMD: batch <= 21), got "
            f"N={N}; use backend='reference' or dmd_fast.model.losses.margin_loss (vectorised PyTorch)"
        )
    return fwd_op(feats, ids.reshape(N).to(feats.dtype))[0]
