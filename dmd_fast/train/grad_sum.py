"""Sum one mini-batch's gradients into the running ``.grad`` buffers with one multi-tensor add.

``loss.backward()`` adds into every existing ``.grad`` with its own ``add_``: one kernel per parameter
(DMD: 684 per mini-batch). :func:`backward_into_grads` takes the mini-batch's gradients with
``torch.autograd.grad`` and adds them all with one ``torch._foreach_add_`` (on CUDA a multi-tensor
kernel, a few launches for every parameter; at dispatch one op). The sums are the same element-wise
float additions, so the result equals ``loss.backward()`` bit for bit.

DistributedDataParallel reduces gradients from hooks on ``.grad`` accumulation, so a DDP model keeps
``loss.backward()`` (the trainer chooses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def backward_into_grads(loss: Tensor, params: Sequence[Tensor]) -> None:
    """``.grad += d loss / d p`` for every ``p`` in params that requires grad and that ``loss`` reaches
    (unreached parameters keep their ``.grad``, as with ``backward``); a missing ``.grad`` starts at
    zero (once: then the buffers are reused)."""
    _check(loss, params)
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=False)
    sums, terms = [], []
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        sums.append(p.grad)
        terms.append(g)
    if sums:
        torch._foreach_add_(sums, terms)


def _check(loss, params) -> None:
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss: expected a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"loss: expected a scalar (one element), got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError("loss: does not require grad (computed under no_grad, or from no parameter)")
    if isinstance(params, Tensor) or not isinstance(params, Sequence):
        raise TypeError(f"params: expected a sequence of tensors (e.g. a list), got {type(params).__name__}")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}]: expected a tensor, got {type(p).__name__}")
