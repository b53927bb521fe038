"""Grouped linear op: G independent ``F.linear`` problems in one launch each way.

``linear_grouped(xs, ws, bs)`` equals ``[F.linear(x, w, b) for ...]``. The Triton path
(``dmd_fast.kernels.linear_grouped``) is one forward and one backward launch for the whole group
(dx, dW and db of every problem, deterministic); registered as ``dmd_fast::linear_grouped_fwd`` /
``dmd_fast::linear_grouped_bwd`` with fake kernels and autograd, so ``torch.compile(fullgraph=True)``
traces through it. DMD's heads use it per level of their chains (``model/heads.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dmd_fast import validation as check
from dmd_fast.ops.backend import resolve_backend
from dmd_fast.ops.registration import define_op

OP = "linear_grouped"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fwd(xs: list[Tensor], ws: list[Tensor], bs: list[Tensor]) -> list[Tensor]:
    from dmd_fast.kernels.linear_grouped import linear_fwd_grouped as launch

    return launch(xs, ws, bs)


def _fwd_fake(xs, ws, bs):
    return [x.new_empty((x.shape[0], w.shape[0])) for x, w in zip(xs, ws)]


def _fwd_setup(ctx, inputs, output):
    xs, ws, _ = inputs
    ctx.G = len(xs)
    ctx.save_for_backward(*xs, *ws)


def _fwd_backward(ctx, grads):
    G, saved = ctx.G, ctx.saved_tensors
    live = [g for g in range(G) if grads[g] is not None]  # problems whose output got no gradient: none
    out = [[None] * G for _ in range(3)]
    if live:
        dys = [grads[g] for g in live]  # any strides: the kernel reads them (gate slices of a concatenation)
        d = bwd_op.inner(ctx, dys, [saved[g] for g in live], [saved[G + g] for g in live])
        n = len(live)
        for j, g in enumerate(live):
            out[0][g], out[1][g], out[2][g] = d[j], d[n + j], d[2 * n + j]
    return out[0], out[1], out[2]


def _bwd(dys: list[Tensor], xs: list[Tensor], ws: list[Tensor]) -> list[Tensor]:
    """One launch: [dx .., dW .., db ..]."""
    from dmd_fast.kernels.linear_grouped import linear_bwd_grouped as launch

    dxs, dws, dbs = launch(dys, xs, ws)
    return dxs + dws + dbs


def _bwd_fake(dys, xs, ws):
    dws = [w.new_empty(w.shape) for w in ws]
    return [x.new_empty(x.shape) for x in xs] + dws + [w.new_empty(w.shape[0]) for w in ws]


# registered as dmd_fast::linear_grouped_fwd, dmd_fast::linear_grouped_bwd
bwd_op = define_op("linear_grouped_bwd", _bwd, fake=_bwd_fake)
fwd_op = define_op(
    "linear_grouped_fwd", _fwd, fake=_fwd_fake, setup_context=_fwd_setup, backward=_fwd_backward, list_output=True
)


def _validate(xs, ws, bs):
    for name, v in (("xs", xs), ("ws", ws), ("bs", bs)):
        if isinstance(v, Tensor) or not isinstance(v, Sequence) or not v:
            raise TypeError(f"{OP}: {name}: expected a non-empty list of tensors, got {type(v).__name__}")
    if not len(xs) == len(ws) == len(bs):
        raise ValueError(f"{OP}: xs, ws, bs: expected one entry per problem each, got {len(xs)}, {len(ws)}, {len(bs)}")
    x0 = xs[0]
    for g, (x, w, b) in enumerate(zip(xs, ws, bs)):
        for name, t, nd in ((f"xs[{g}]", x, 2), (f"ws[{g}]", w, 2), (f"bs[{g}]", b, 1)):
            check.tensor(t, name, ndim=nd, layout="(M, K)" if nd == 2 else "(N,)")
            if t.dtype != x0.dtype or t.device != x0.device or t.dtype not in _DTYPES:
                raise TypeError(f"{OP}: {name}: expected a floating tensor like xs[0] ({x0.dtype} on {x0.device}), "
                                f"got {t.dtype} on {t.device}")  # fmt: skip
        if w.shape[1] != x.shape[1] or b.shape[0] != w.shape[0]:
            raise ValueError(f"{OP}: ws[{g}], bs[{g}]: expected (N, K={x.shape[1]}) and (N,), got {tuple(w.shape)} "
                             f"and {tuple(b.shape)}")  # fmt: skip
        if x.numel() == 0 or w.numel() == 0:
            got = f"{tuple(x.shape)} and {tuple(w.shape)}"
            raise ValueError(f"{OP}: xs[{g}], ws[{g}]: expected non-empty (M, K) and (N, K), got {got}")


def linear_grouped(
    xs: Sequence[Tensor], ws: Sequence[Tensor], bs: Sequence[Tensor], *, backend: str = "auto"
) -> list[Tensor]:
    """G linear layers: xs (M_g, K_g) any strides, ws (N_g, K_g), bs (N_g,), one dtype and device →
    G outputs (M_g, N_g) contiguous (``F.linear`` per problem)."""
    _validate(xs, ws, bs)
    xs, ws, bs = list(xs), list(ws), list(bs)
    if resolve_backend(backend, xs[0].device, OP) == "reference":
        return [F.linear(x, w, b) for x, w, b in zip(xs, ws, bs)]
    if xs[0].device.type == "cpu":
        check.interpreter_dtype(xs[0].dtype, "xs[0]", OP)
    return fwd_op(xs, ws, bs)
