"""Fused LN0 + q/k/v in-projection op of pre-LN MulT encoder layers: validation, backend, registration.

``encoder_in_projection_grouped`` has the meaning of ``dmd_fast.reference.encoder_in_proj`` per
problem. The Triton path (``dmd_fast.kernels.encoder_in_proj``) is one forward launch per group that
saves the inputs and the LN0 (mean, rstd) per row, and two backward launches (row blocks, then a
deterministic reduction of the parameter gradients). It is registered as the custom ops
``dmd_fast::encoder_in_proj_fwd`` / ``dmd_fast::encoder_in_proj_bwd`` with fake kernels and
autograd, so ``torch.compile(fullgraph=True)`` traces through it; eager calls run the same bodies
through an autograd twin (``dmd_fast/ops/registration.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dmd_fast import validation as check
from dmd_fast.ops.backend import resolve_backend
from dmd_fast.ops.registration import define_op
from dmd_fast.reference.encoder_in_proj import encoder_in_projection as reference

OP = "encoder_in_projection"
MAX_EMBED_DIM = 128
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# ops (dmd_fast/ops/registration.py: custom op + eager twin per body)
# ----------------------------------------------------------------------------------------------


def _stats_rows(xs, sources) -> int:
    rows = lambda t: t.shape[0] * t.shape[1]  # noqa: E731
    return sum(rows(x) + sum(rows(t) for t in _as_tuple(s)) for x, s in zip(xs, sources))


def _as_tuple(s) -> tuple:
    return () if s is None else s if isinstance(s, tuple) else (s,)


def _sources(srcs, cross) -> list:
    """G entries from ``srcs`` and the per-problem source counts ``cross``: None (0), a tensor (1: k and v
    from it) or a pair (2: k from the first, v from the second)."""
    it = iter(srcs)
    return [None if c == 0 else next(it) if c == 1 else (next(it), next(it)) for c in cross]


def _fwd(
    xs: list[Tensor],
    srcs: list[Tensor],
    cross: list[int],
    ln_w: list[Tensor],
    ln_b: list[Tensor],
    in_w: list[Tensor],
    in_b: list[Tensor],
    eps: float,
    copy_x: bool,
    copy_sources: bool,
) -> list[Tensor]:
    """[q_0 .. q_{G-1}, k_0 .., v_0 .., stats (rows, 2) LN0 mean and rstd per input row, then with
    ``copy_x`` a copy of each x, then with ``copy_sources`` a copy of each of srcs]. srcs: the sources
    in problem order, cross[g] of them for problem g (0, 1, or 2: separate k and v sources; a list of
    optional tensors would not get gradients through torch.library's autograd)."""
    from dmd_fast.kernels.encoder_in_proj import in_proj_fwd_grouped as launch

    sources = _sources(srcs, cross)
    qs, ks, vs, stats, copies, src_copies = launch(
        xs, sources, ln_w, ln_b, in_w, in_b, eps=eps, copy_x=copy_x, copy_sources=copy_sources
    )
    return qs + ks + vs + [stats] + copies + src_copies


def _fwd_fake(xs, srcs, cross, ln_w, ln_b, in_w, in_b, eps, copy_x, copy_sources):
    sources = _sources(srcs, cross)
    ks = [x if s is None else _as_tuple(s)[0] for x, s in zip(xs, sources)]
    vs = [x if s is None else _as_tuple(s)[-1] for x, s in zip(xs, sources)]
    sdt = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    return (
        [x.new_empty(x.shape) for x in xs]
        + [t.new_empty(t.shape) for t in ks]
        + [t.new_empty(t.shape) for t in vs]
        + [xs[0].new_empty((_stats_rows(xs, sources), 2), dtype=sdt)]
        + ([x.new_empty(x.shape) for x in xs] if copy_x else [])
        + ([t.new_empty(t.shape) for t in srcs] if copy_sources else [])
    )


def _fwd_setup(ctx, inputs, output):
    xs, srcs, ctx.cross, ln_w, ln_b, in_w, _, _, ctx.copy_x, ctx.copy_sources = inputs
    G = ctx.G = len(xs)
    stats, copies = output[3 * G], output[3 * G + 1 :]
    x_copies, src_copies = (copies[:G], copies[G:]) if ctx.copy_x else ([], copies)
    ctx.mark_non_differentiable(stats)
    # the copies stand for their inputs (same values): those need not stay alive for the backward
    saved_x = x_copies if ctx.copy_x else xs
    saved_srcs = src_copies if ctx.copy_sources else srcs
    ctx.save_for_backward(*saved_x, *saved_srcs, *ln_w, *ln_b, *in_w, stats)


def _fwd_backward(ctx, grads):
    G, saved = ctx.G, list(ctx.saved_tensors)
    xs, n_src = saved[:G], sum(ctx.cross)
    sources = _sources(saved[G : G + n_src], ctx.cross)
    ln_w, ln_b, in_w = (saved[G + n_src + i * G : G + n_src + (i + 1) * G] for i in range(3))
    copy_grads = list(grads[3 * G + 1 :])
    dres = copy_grads[:G] if ctx.copy_x else []
    dres_src = copy_grads[len(dres) :] if ctx.copy_sources else []
    dqkv = grads[:G], grads[G : 2 * G], grads[2 * G : 3 * G]
    d = bwd_op.inner(ctx, *dqkv, xs, sources, ln_w, ln_b, in_w, saved[-1], dres, dres_src)
    o = G + n_src
    dln_w, dln_b, dw, db = (list(t.unbind(0)) for t in d[o : o + 4])  # (G, ...) each → G views
    return d[:G], d[G:o], None, dln_w, dln_b, dw, db, None, None, None


def _bwd(
    dqs: list[Tensor | None],
    dks: list[Tensor | None],
    dvs: list[Tensor | None],
    xs: list[Tensor],
    sources: list[Tensor | None],
    ln_w: list[Tensor],
    ln_b: list[Tensor],
    in_w: list[Tensor],
    stats: Tensor,
    dres: list[Tensor | None],
    dres_src: list[Tensor | None],
) -> list[Tensor]:
    """Backward in 2 launches: [dx_0 .., ds of each cross-modal problem .., dln_w (G, E), dln_b (G, E),
    dW (G, 3E, E), db (G, 3E)] (the parameters' gradients stacked: one output each, no aliasing views);
    ``dres`` / ``dres_src``: the gradients of the copies of xs / of the sources ([] without copies),
    added into dx / ds in the kernel."""
    from dmd_fast.kernels.encoder_in_proj import in_proj_bwd_grouped as launch

    dxs, dss, dgs, dbetas, dws, dbs = launch(
        dqs, dks, dvs, xs, sources, ln_w, ln_b, in_w, stats, dres=dres or None, dres_src=dres_src or None
    )
    return dxs + [t for d in dss for t in _as_tuple(d)] + [dgs, dbetas, dws, dbs]


def _bwd_fake(dqs, dks, dvs, xs, sources, ln_w, ln_b, in_w, stats, dres, dres_src):
    return (
        [x.new_empty(x.shape) for x in xs]
        + [t.new_empty(t.shape) for s in sources for t in _as_tuple(s)]
        + [t[0].new_empty((len(t), *t[0].shape)) for t in (ln_w, ln_b, in_w)]
        + [in_w[0].new_empty((len(in_w), in_w[0].shape[0]))]
    )


# registered as dmd_fast::encoder_in_proj_fwd, dmd_fast::encoder_in_proj_bwd
bwd_op = define_op("encoder_in_proj_bwd", _bwd, fake=_bwd_fake)
fwd_op = define_op(
    "encoder_in_proj_fwd",
    _fwd,
    fake=_fwd_fake,
    setup_context=_fwd_setup,
    backward=_fwd_backward,
    list_output=True,
)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _fail(cls, msg):
    raise cls(f"{OP}: {msg}")


def _tensor_list(value, name: str, G: int | None) -> list:
    if isinstance(value, Tensor) or not isinstance(value, Sequence) or isinstance(value, str):
        want = "a non-empty list of tensors" if G is None else f"a list of {G} entries (one per problem)"
        _fail(TypeError, f"{name}: expected {want}, got {type(value).__name__}")
    if G is None and not value:
        _fail(ValueError, f"{name}: expected a non-empty list (one entry per problem), got an empty one")
    if G is not None and len(value) != G:
        _fail(ValueError, f"{name}: expected {G} entries (one per problem, like xs), got {len(value)}")
    return list(value)


def _check_tensor(t, name: str, shape: tuple, layout: str, like: Tensor):
    """A tensor of exactly ``shape`` (None entries: any size) in like's dtype and on like's device."""
    if not isinstance(t, Tensor):
        _fail(TypeError, f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        _fail(ValueError, f"{name}: expected shape {layout}, got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        _fail(TypeError, f"{name}: dtype {t.dtype} differs from xs[0]'s {like.dtype}; all tensors must match")
    if t.device != like.device:
        _fail(ValueError, f"{name}: on device {t.device}, expected xs[0]'s device {like.device}")


def _validate(xs, sources, ln_w, ln_b, in_w, in_b, eps):
    xs = _tensor_list(xs, "xs", None)
    G = len(xs)
    sources, ln_w, ln_b, in_w, in_b = (
        _tensor_list(v, n, G)
        for v, n in ((sources, "sources"), (ln_w, "ln_w"), (ln_b, "ln_b"), (in_w, "in_w"), (in_b, "in_b"))
    )
    x0 = xs[0]
    if not isinstance(x0, Tensor) or x0.dim() != 3:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        _fail(TypeError if not isinstance(x0, Tensor) else ValueError, f"xs[0]: expected a (T, B, E) tensor, got {got}")
    if x0.dtype not in _DTYPES:
        _fail(TypeError, f"xs[0]: expected a floating dtype in {_DTYPES}, got {x0.dtype}")
    E = x0.shape[2]
    if E < 1:
        _fail(ValueError, f"xs[0]: expected an embed dim E >= 1, got shape {tuple(x0.shape)}")
    for g in range(G):
        _check_tensor(xs[g], f"xs[{g}]", (None, None, E), f"(T, B, E={E})", x0)
        B = xs[g].shape[1]
        if isinstance(sources[g], (tuple, list)):
            if len(sources[g]) != 2:
                _fail(TypeError, f"sources[{g}]: expected a torch.Tensor (Tk, B, E), None or a pair (k source, "
                      f"v source), got a {type(sources[g]).__name__} of {len(sources[g])}")  # fmt: skip
            sources[g] = tuple(sources[g])
            for i, t in enumerate(sources[g]):
                _check_tensor(t, f"sources[{g}][{i}]", (None, B, E), f"(Tk, B={B}, E={E}) (batch of xs[{g}])", x0)
            if sources[g][0].shape != sources[g][1].shape:
                want, got = tuple(sources[g][0].shape), tuple(sources[g][1].shape)
                _fail(ValueError, f"sources[{g}][1]: expected the shape of sources[{g}][0] {want}, got {got}")
        elif sources[g] is not None:
            _check_tensor(sources[g], f"sources[{g}]", (None, B, E), f"(Tk, B={B}, E={E}) (batch of xs[{g}])", x0)
        _check_tensor(ln_w[g], f"ln_w[{g}]", (E,), f"({E},)", x0)
        _check_tensor(ln_b[g], f"ln_b[{g}]", (E,), f"({E},)", x0)
        _check_tensor(in_w[g], f"in_w[{g}]", (3 * E, E), f"(3E, E) = ({3 * E}, {E})", x0)
        _check_tensor(in_b[g], f"in_b[{g}]", (3 * E,), f"(3E,) = ({3 * E},)", x0)
    try:
        eps = check.positive(eps, "eps")
    except (TypeError, ValueError) as exc:
        _fail(type(exc), str(exc))
    return xs, sources, ln_w, ln_b, in_w, in_b, eps


# ----------------------------------------------------------------------------------------------
# functional API
# ----------------------------------------------------------------------------------------------


def encoder_in_projection_grouped(
    xs: Sequence[Tensor],
    sources: Sequence[Tensor | None],
    ln_w: Sequence[Tensor],
    ln_b: Sequence[Tensor],
    in_w: Sequence[Tensor],
    in_b: Sequence[Tensor],
    *,
    eps: float = 1e-5,
    return_x: bool = False,
    return_sources: bool = False,
    backend: str = "auto",
):
    """LN0 + q/k/v in-projection of G encoder layers of one width E (one launch on the Triton path).

    Args:
        xs: G query streams (Tq_g, B_g, E), any strides, fp16/bf16/fp32/fp64, E <= 128 (Triton).
        sources: G entries: None (self-attention: k, v from LN0(x)), (Tk_g, B_g, E) (cross-modal:
            k, v from LN0(s), the same LN0 parameters) or a pair of them (k from LN0(s_k), v from
            LN0(s_v): upstream's separately embedded key and value streams).
        ln_w, ln_b: G LayerNorm0 weights and biases (E,); in_w: G in_proj_weight (3E, E);
            in_b: G in_proj_bias (3E,). All tensors in xs[0]'s dtype and on its device.
        eps: LayerNorm epsilon. backend: "auto", "triton" or "reference" (``dmd_fast.ops.backend``).
        return_x: also return the layer's residual input, one per problem, equal to xs: on the Triton
            path a copy written by the same launch, so that x has one consumer and the gradient
            reaching the copy is added into dx inside the backward kernel (no autograd add); on the
            reference path xs themselves.
        return_sources: likewise, the sources as the next layer's (None, a tensor or a pair per problem):
            a layer's source grads then reach the previous layer's kernel, not an autograd add.
    Returns:
        G tuples (q (Tq, B, E), k, v ((Tk or Tq), B, E)), contiguous; q is not scaled. With ``return_x``
        and/or ``return_sources``: a tuple (those tuples, [G residual inputs (Tq, B, E)] if return_x,
        [G sources] if return_sources).
    """
    xs, sources, ln_w, ln_b, in_w, in_b, eps = _validate(xs, sources, ln_w, ln_b, in_w, in_b, eps)
    return_x = check.boolean(return_x, "return_x")
    return_sources = check.boolean(return_sources, "return_sources")
    x0 = xs[0]
    if resolve_backend(backend, x0.device, OP) == "reference":
        out = [reference(*p, eps=eps) for p in zip(xs, sources, ln_w, ln_b, in_w, in_b)]
        return _with_inputs(out, list(xs), list(sources), return_x, return_sources)
    if x0.shape[2] > MAX_EMBED_DIM:
        _fail(ValueError, f"xs[0]: the Triton path takes E <= {MAX_EMBED_DIM}, got E={x0.shape[2]}")
    if x0.device.type == "cpu":
        check.interpreter_dtype(x0.dtype, "xs[0]", OP)
    srcs, cross = [t for s in sources for t in _as_tuple(s)], [len(_as_tuple(s)) for s in sources]
    out = fwd_op(xs, srcs, cross, ln_w, ln_b, in_w, in_b, eps, return_x, return_sources)
    G = len(xs)
    qkv = [(out[g], out[G + g], out[2 * G + g]) for g in range(G)]
    copies = out[3 * G + 1 :]
    x_copies = copies[:G] if return_x else []
    src_copies = _sources(copies[len(x_copies) :], cross) if return_sources else []
    return _with_inputs(qkv, x_copies, src_copies, return_x, return_sources)


def _with_inputs(qkv, xs, sources, return_x: bool, return_sources: bool):
    if not (return_x or return_sources):
        return qkv
    return (qkv, *([xs] if return_x else []), *([sources] if return_sources else []))
