"""Fused embedding prologue of MulT encoders (√E·x + PE, dropout): validation, backend, registration.

``encoder_embedding_grouped`` has the meaning of ``TransformerEncoder.embed`` for G input streams of one
width (``dmd_fast.reference.encoder_embed`` with torch's dropout). The Triton path
(``dmd_fast.kernels.encoder_embed``) is one launch forward and one backward for the group; its dropout
draws Philox bits from an int64 [seed, offset] pair drawn from torch's generator on the device (so
``torch.manual_seed`` repeats runs and CUDA-graph capture works), or given by the caller (``seed``),
regenerated in the backward; the streams get independent bits. Inputs are read with their strides (no
copy); a tensor given for several streams is one input of the op, so it gets one gradient, summed by the
backward kernel. Registered as ``dmd_fast::encoder_embed_fwd`` / ``_bwd``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dmd_fast import validation as check
from dmd_fast.ops.backend import resolve_backend
from dmd_fast.ops.registration import define_op
from dmd_fast.ops.seed import check_seed, op_seed, refuse_seed_on_reference
from dmd_fast.reference.encoder_embed import encoder_embedding as reference

OP = "encoder_embedding"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fwd(
    xs: list[Tensor], index: list[int], table: Tensor, seed: Tensor | None, scale: float, dropout_p: list[float]
) -> list[Tensor]:
    """G outputs (T, B, E), contiguous; stream g reads the distinct input xs[index[g]]."""
    from dmd_fast.kernels.encoder_embed import embed_fwd_grouped as launch

    return launch(xs, index, table, seed, scale=scale, dropout_p=dropout_p)


def _fwd_fake(xs, index, table, seed, scale, dropout_p):
    return [xs[u].new_empty(xs[u].shape) for u in index]


def _fwd_setup(ctx, inputs, output):
    _, ctx.index, _, seed, ctx.scale, ctx.dropout_p = inputs
    ctx.outputs = [(o.shape, o.dtype, o.device) for o in output]
    ctx.save_for_backward(seed)


def _fwd_backward(ctx, grads):
    (seed,) = ctx.saved_tensors
    douts = [torch.zeros(s, dtype=d, device=v) if g is None else g for g, (s, d, v) in zip(grads, ctx.outputs)]
    return bwd_op.inner(ctx, douts, ctx.index, seed, ctx.scale, ctx.dropout_p), None, None, None, None, None


def _bwd(
    douts: list[Tensor], index: list[int], seed: Tensor | None, scale: float, dropout_p: list[float]
) -> list[Tensor]:
    """One gradient per distinct input (max(index) + 1), contiguous: the sum over the streams reading it."""
    from dmd_fast.kernels.encoder_embed import embed_bwd_grouped as launch

    return launch(douts, index, seed, scale=scale, dropout_p=dropout_p)


def _bwd_fake(douts, index, seed, scale, dropout_p):
    return [douts[index.index(u)].new_empty(douts[index.index(u)].shape) for u in range(max(index) + 1)]


bwd_op = define_op("encoder_embed_bwd", _bwd, fake=_bwd_fake)
fwd_op = define_op(
    "encoder_embed_fwd", _fwd, fake=_fwd_fake, setup_context=_fwd_setup, backward=_fwd_backward, list_output=True
)


def _fail(cls, msg):
    raise cls(f"{OP}: {msg}")


def encoder_embedding_grouped(
    xs: Sequence[Tensor],
    table: Tensor,
    *,
    scale: float,
    dropout_p: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
    seed: Tensor | None = None,
    backend: str = "auto",
) -> list[Tensor]:
    """G embedded streams: scale · x + PE(x) (the zero-frame rule), then dropout with probability p.

    Args:
        xs: G tensors (T_g, B_g, E) of one E and dtype, on one device, any strides (read in place). One
            tensor object may be given several times (each time its own stream and dropout draw); the
            Triton path then computes its gradient once, summed over its streams.
        table: the sinusoidal table (≥ max T + 1, E), row 0 zero (``nn.positional.sinusoidal_table``).
        scale: √E as upstream; dropout_p: one probability or G of them, in [0, 1).
        generator: source of the dropout seed (default: torch's generator for the device).
        seed: instead of a draw, an int64 [seed, offset] tensor of shape (2,) on the inputs' device
            (e.g. a row of ``ops.seed.draw_seeds``); not with ``generator``; Triton backend only.
    Returns G tensors (T_g, B_g, E), contiguous, in xs' dtype, in stream order.
    """
    if isinstance(xs, Tensor) or not isinstance(xs, Sequence) or not xs:
        _fail(TypeError, f"xs: expected a non-empty list of tensors, got {type(xs).__name__}")
    xs = list(xs)
    x0 = xs[0]
    for g, x in enumerate(xs):
        if not isinstance(x, Tensor) or x.dim() != 3:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            cls = TypeError if not isinstance(x, Tensor) else ValueError
            _fail(cls, f"xs[{g}]: expected a (T, B, E) tensor, got {got}")
        if x.shape[2] != x0.shape[2] or x.dtype != x0.dtype or x.device != x0.device:
            _fail(ValueError, f"xs[{g}]: expected E={x0.shape[2]}, {x0.dtype} on {x0.device} like xs[0], got "
                  f"shape {tuple(x.shape)}, {x.dtype} on {x.device}")  # fmt: skip
    if x0.dtype not in _DTYPES:
        _fail(TypeError, f"xs[0]: expected a floating dtype in {_DTYPES}, got {x0.dtype}")
    T_max = max(x.shape[0] for x in xs)
    if not isinstance(table, Tensor) or table.dim() != 2 or table.shape[1] != x0.shape[2] or table.shape[0] < T_max + 1:
        got = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
        _fail(ValueError, f"table: expected a (>= {T_max + 1}, {x0.shape[2]}) tensor, got {got}")
    ps = [dropout_p] * len(xs) if isinstance(dropout_p, (int, float)) else list(dropout_p)
    if len(ps) != len(xs):
        _fail(ValueError, f"dropout_p: expected a float or {len(xs)} values (one per stream), got {len(ps)}")
    ps = [check.probability(p, "dropout_p") for p in ps]
    scale = check.real(scale, "scale")
    check.generator(generator, "generator", x0.device)
    check_seed(seed, generator, x0.device, OP)
    table = table.to(x0.device)
    if resolve_backend(backend, x0.device, OP) == "reference":
        refuse_seed_on_reference(seed, OP)
        outs = []
        for x, p in zip(xs, ps):
            keep = None
            if p > 0:
                keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
            outs.append(reference(x, table, scale, keep, p))
        return outs
    if x0.device.type == "cpu":
        check.interpreter_dtype(x0.dtype, "xs[0]", OP)
    inputs, index = _distinct(xs)
    seed = op_seed(seed, generator, x0.device, max(ps) > 0)
    return fwd_op(inputs, index, table.to(torch.float32), seed, float(scale), ps)


def _distinct(xs: list[Tensor]) -> tuple[list[Tensor], list[int]]:
    """The distinct tensor objects of xs (by identity, first-use order) and each stream's index into them."""
    inputs, index = [], []
    for x in xs:
        u = next((i for i, y in enumerate(inputs) if y is x), len(inputs))
        if u == len(inputs):
            inputs.append(x)
        index.append(u)
    return inputs, index
