"""q, k, v projections of three different inputs through MulT's packed ``in_proj_weight`` (3E, E).

Slicing the packed parameter per projection (as upstream does) makes autograd allocate a zero
(3E, E) gradient per slice, copy into it and add the three: 16 extra device kernels per attention
layer. ``packed_in_projection`` makes the same ``F.linear`` calls and its backward writes the three
weight and bias gradients straight into one (3E, E) / (3E,) buffer. (Self-attention, one input,
stays upstream's single ``F.linear(x, W, b).chunk(3)``: its backward is already one concatenation.)

Autocast is honoured explicitly: inputs, weight and bias are cast to the autocast dtype as
``F.linear`` would, the math runs in that dtype, and the parameter gradients come back in the
parameters' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and weight.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(x.dtype, weight.dtype)


class _PackedInProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_q, x_k, x_v, weight, bias):
        E = weight.shape[1]
        cdt = _compute_dtype(x_q, weight)
        with torch.autocast(x_q.device.type, enabled=False):
            w = weight.to(cdt)
            b = None if bias is None else bias.to(cdt)
            xs = [x.to(cdt) for x in (x_q, x_k, x_v)]
            outs = [
                F.linear(x, w[i * E : (i + 1) * E], None if b is None else b[i * E : (i + 1) * E])
                for i, x in enumerate(xs)
            ]
        ctx.save_for_backward(*xs, w)
        ctx.in_dtypes = (x_q.dtype, x_k.dtype, x_v.dtype)
        ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        with torch.autocast(grads[0].device.type if grads[0] is not None else "cpu", enabled=False):
            return _PackedInProjection._backward(ctx, grads)

    @staticmethod
    def _backward(ctx, grads):
        x_q, x_k, x_v, w = ctx.saved_tensors
        E = w.shape[1]
        need_x = ctx.needs_input_grad[:3]
        need_w, need_b = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        gw = w.new_empty(w.shape) if need_w else None
        gb = w.new_empty(w.shape[0]) if need_b else None
        gxs = []
        for i, (x, g) in enumerate(zip((x_q, x_k, x_v), grads)):
            if g is None:
                g = x.new_zeros(x.shape[:-1] + (E,))
            g2 = g.reshape(-1, E).to(w.dtype)
            w_i = w[i * E : (i + 1) * E]
            gxs.append(torch.mm(g2, w_i).view(x.shape).to(ctx.in_dtypes[i]) if need_x[i] else None)
            if need_w:
                torch.mm(g2.t(), x.reshape(-1, E), out=gw[i * E : (i + 1) * E])
            if need_b:
                torch.sum(g2, 0, out=gb[i * E : (i + 1) * E])
        gw = None if gw is None else gw.to(ctx.param_dtypes[0])
        gb = None if gb is None else gb.to(ctx.param_dtypes[1])
        return (*gxs, gw, gb)


def packed_in_projection(
    x_q: Tensor, x_k: Tensor, x_v: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """x_q (Tq, B, E), x_k / x_v (Tk, B, E), weight (3E, E), bias (3E,) or None → q, k, v.

    Equal to ``F.linear(x_q, weight[:E], bias[:E])``, ``F.linear(x_k, weight[E:2E], ...)``,
    ``F.linear(x_v, weight[2E:], ...)``; the backward writes the packed gradients directly.
    """
    E = weight.shape[1]
    if weight.dim() != 2 or weight.shape[0] != 3 * E:
        raise ValueError(f"weight: expected (3E, E), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (3 * E,):
        raise ValueError(f"bias: expected ({3 * E},), got {tuple(bias.shape)}")
    for name, x in (("x_q", x_q), ("x_k", x_k), ("x_v", x_v)):
        if x.shape[-1] != E:
            raise ValueError(f"{name}: expected last dim E={E}, got shape {tuple(x.shape)}")
    return _PackedInProjection.apply(x_q, x_k, x_v, weight, bias)
