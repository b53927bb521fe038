"""Graph distillation (GD-unit) op: validation, backend choice, torch.library registration.

``graph_distill`` has the reference's signature and semantics (``dmd_fast.reference.graph_distill``)
plus ``backend``, ``check_prior`` and ``check_finite``. The Triton path is one kernel launch that
returns the three loss terms, their weighted total, the edges and four gradient rows (one per term
and one for the total); its backward scales the total's row by the incoming gradient (one launch),
or mixes the term rows when the terms themselves are differentiated. Gradients that reach the returned ``edges``
or ``edge_scores`` are supported too (a short PyTorch vector-Jacobian product, run only when such a
gradient exists). ``prior`` is a constant: it gets no gradient on the Triton path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmd_fast import validation as check
from dmd_fast.common.graph_distill import LOGIT_METRICS, REPR_METRICS, SOFTMAX_SCOPES, GraphDistillResult, edge_pairs
from dmd_fast.ops.backend import check_backend_name, resolve_backend
from dmd_fast.ops.registration import define_op
from dmd_fast.reference.graph_distill import graph_distill as reference_graph_distill

OP = "graph_distill"
MAX_MODALITIES = 8
MAX_REPR_DIM = 1024
MAX_GD_SIZE = 128
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PRIOR_ATOL = 1e-4


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in dtype (no call at all when it already is: this runs ~20 times per unit and step)."""
    return t if t.dtype == dtype else t.to(dtype)


def check_total_weights(total_weights) -> tuple[float, float, float]:
    """The (logit, repr, reg) weights of ``loss_total`` as floats, or a ValueError naming the argument."""
    return check.reals(total_weights, "total_weights", 3, "weights (logit, repr, reg)")


def _acc_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _fwd(
    logits: Tensor,
    reprs: Tensor,
    w_logit: Tensor,
    b_logit: Tensor,
    w_repr: Tensor,
    b_repr: Tensor,
    w_edge: Tensor,
    b_edge: Tensor,
    prior: Tensor,
    alpha: float,
    joint: bool,
    logit_metric: str,
    repr_metric: str,
    w_logit_loss: float,
    w_repr_loss: float,
    reg: float,
    need_grad: bool,
    total_weights: list[float],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused forward: loss (3,), total (), edges (E, B), scores (B, E), edge means (E,), gradient rows (4, N)
    (see grad_shapes)."""
    from dmd_fast.kernels.graph_distill import graph_distill_fwd as launch

    return launch(
        logits,
        reprs,
        w_logit,
        b_logit,
        w_repr,
        b_repr,
        w_edge,
        b_edge,
        prior,
        alpha=alpha,
        joint=joint,
        logit_metric=logit_metric,
        repr_metric=repr_metric,
        w_logit_loss=w_logit_loss,
        w_repr_loss=w_repr_loss,
        reg=reg,
        need_grad=need_grad,
        total_weights=total_weights,
    )


def _fwd_fake(
    logits,
    reprs,
    w_logit,
    b_logit,
    w_repr,
    b_repr,
    w_edge,
    b_edge,
    prior,
    alpha,
    joint,
    logit_metric,
    repr_metric,
    w_logit_loss,
    w_repr_loss,
    reg,
    need_grad,
    total_weights,
):
    M, B, C = logits.shape
    R, G = reprs.shape[2], w_logit.shape[0]
    acc = _acc_dtype(logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, b_edge, prior)
    from dmd_fast.kernels.graph_distill import grad_shapes

    N = sum(math.prod(s) for s in grad_shapes(M, B, C, R, G))
    new = lambda *shape: logits.new_empty(shape, dtype=acc)  # noqa: E731
    E = M * (M - 1)
    return new(3), new(), new(E, B), new(B, E), new(E), new(4 if need_grad else 0, N)


def _setup_context(ctx, inputs, output):
    logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, b_edge, prior = inputs[:9]
    ctx.alpha, ctx.joint = inputs[9], inputs[10]
    ctx.dtypes = [t.dtype for t in inputs[:8]]
    from dmd_fast.kernels.graph_distill import grad_shapes

    ctx.shapes = grad_shapes(*logits.shape, reprs.shape[2], w_logit.shape[0])
    ctx.mark_non_differentiable(output[4], output[5])  # edge means: a detached readout
    ctx.set_materialize_grads(False)  # unused outputs give None: the edge VJP runs only when needed
    ctx.save_for_backward(logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, output[2], output[5])


def _edge_vjp(ctx, logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, edges, g_edges, g_scores):
    """Gradients reaching the returned edges (E, B) / scores (B, E), through softmax and the folded scorer."""
    M, B = logits.shape[:2]
    acc = edges.dtype
    p = edges.t()  # (B, E)
    g_e = torch.zeros_like(p) if g_scores is None else g_scores.to(acc)
    if g_edges is not None:
        gp = g_edges.t().to(acc) * p
        dot = (
            gp.sum(1, keepdim=True)
            if ctx.joint
            else gp.view(B, M, M - 1).sum(2, keepdim=True).expand(B, M, M - 1).reshape(B, -1)
        )
        g_e = g_e + ctx.alpha * (gp - p * dot)
    pairs = torch.tensor(edge_pairs(M), device=p.device)  # (E, 2) = (to j, from i)
    eye = torch.eye(M, device=p.device, dtype=acc)
    ds, dt = g_e @ eye[pairs[:, 0]], g_e @ eye[pairs[:, 1]]  # (B, M) per target / source node
    G = w_logit.shape[0]
    a = w_edge.reshape(4, G).to(acc)  # rows a_l, a_r, c_l, c_r
    total = g_e.sum()
    out = []
    for f, w, b, (ia, ic) in ((logits, w_logit, b_logit, (0, 2)), (reprs, w_repr, b_repr, (1, 3))):
        f, w, b = f.to(acc), w.to(acc), b.to(acc)
        ua, uc = a[ia] @ w, a[ic] @ w  # (F,)
        g_f = ds.t()[..., None] * ua + dt.t()[..., None] * uc  # (M, B, F)
        fs, ft = torch.einsum("bm,mbf->f", ds, f), torch.einsum("bm,mbf->f", dt, f)
        g_w = torch.outer(a[ia], fs) + torch.outer(a[ic], ft)
        g_b = (a[ia] + a[ic]) * total
        g_a, g_c = w @ fs + b * total, w @ ft + b * total
        out.append((g_f, g_w, g_b, g_a, g_c))
    (gx, gwl, gbl, gal, gcl), (gr, gwr, gbr, gar, gcr) = out
    g_we = torch.cat((gal, gar, gcl, gcr)).view(1, -1)
    return gx, gr, gwl, gbl, gwr, gbr, g_we, total.view(1)


def _backward(ctx, g_loss, g_total, g_edges, g_scores, _means, _grads):
    logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, edges, grads = ctx.saved_tensors
    flat = None
    if g_total is not None:  # the common case: one scale of the total's stored row
        flat = _as(g_total, grads.dtype) * grads[3]
    if g_loss is not None:  # one (3,) x (3, N) product mixes the term rows
        mixed = _as(g_loss, grads.dtype) @ grads[:3]
        flat = mixed if flat is None else flat + mixed
    out = None
    if flat is not None:
        out = [g.view(s) for g, s in zip(flat.split([math.prod(s) for s in ctx.shapes]), ctx.shapes)]
    if g_edges is not None or g_scores is not None:
        extra = _edge_vjp(ctx, logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, edges, g_edges, g_scores)
        out = extra if out is None else [o + e for o, e in zip(out, extra)]
    out = [None] * 8 if out is None else [_as(o, dt) for o, dt in zip(out, ctx.dtypes)]
    return (*out, None, None, None, None, None, None, None, None, None, None)


# registered as dmd_fast::graph_distill_fwd (dmd_fast/ops/registration.py: custom op + eager twin)
fwd_op = define_op("graph_distill_fwd", _fwd, fake=_fwd_fake, setup_context=_setup_context, backward=_backward)


def _shape_error(arg, got, expected, hint=""):
    return ValueError(f"{arg}: expected shape {expected}, got {tuple(got)}{hint}")


def _validate(
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
    alpha,
    softmax_scope,
    logit_metric,
    repr_metric,
    w_losses,
    reg,
    check_prior,
    check_finite,
):
    """Raise ValueError/TypeError naming the argument, what it received and what it expects."""
    if softmax_scope not in SOFTMAX_SCOPES:
        raise ValueError(f"softmax_scope: expected one of {SOFTMAX_SCOPES}, got {softmax_scope!r}")
    if logit_metric not in LOGIT_METRICS:
        raise ValueError(f"logit_metric: expected one of {LOGIT_METRICS}, got {logit_metric!r}")
    if repr_metric not in REPR_METRICS:
        raise ValueError(f"repr_metric: expected one of {REPR_METRICS}, got {repr_metric!r}")
    check.real(alpha, "alpha")
    check.real(reg, "reg")
    check.reals(w_losses, "w_losses", 2, "weights (logit, repr)")
    named = dict(
        logits=logits,
        reprs=reprs,
        w_logit=w_logit,
        b_logit=b_logit,
        w_repr=w_repr,
        b_repr=b_repr,
        w_edge=w_edge,
        b_edge=b_edge,
        prior=prior,
    )
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: expected a floating dtype in {_DTYPES}, got {t.dtype}")
        if t.device != logits.device:
            raise ValueError(f"{name}: expected device {logits.device} (as logits), got {t.device}")
    if logits.dim() != 3:
        raise _shape_error("logits", logits.shape, "(M, B, C)")
    if reprs.dim() != 3:
        raise _shape_error("reprs", reprs.shape, "(M, B, R)")
    M, B, C = logits.shape
    R = reprs.shape[2]
    if not 2 <= M <= MAX_MODALITIES:
        raise ValueError(f"logits: expected 2..{MAX_MODALITIES} modalities (dim 0), got M={M}")
    if reprs.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"reprs: expected (M, B) = {tuple(logits.shape[:2])} as logits, got "
            f"{tuple(reprs.shape[:2])} (shape {tuple(reprs.shape)})"
        )
    if B < 1 or C < 1 or R < 1:
        raise ValueError(
            f"logits/reprs: expected non-empty batch and feature dims, got logits "
            f"{tuple(logits.shape)}, reprs {tuple(reprs.shape)}"
        )
    if R > MAX_REPR_DIM:
        raise ValueError(f"reprs: expected repr dim R <= {MAX_REPR_DIM}, got R={R}")
    if w_logit.dim() != 2 or w_logit.shape[1] != C:
        raise _shape_error("w_logit", w_logit.shape, f"(g, C={C})")
    G = w_logit.shape[0]
    if not 1 <= G <= MAX_GD_SIZE:
        raise ValueError(f"w_logit: expected gd size g in 1..{MAX_GD_SIZE} (dim 0), got g={G}")
    for name, t, exp in (
        ("b_logit", b_logit, (G,)),
        ("w_repr", w_repr, (G, R)),
        ("b_repr", b_repr, (G,)),
        ("w_edge", w_edge, (1, 4 * G)),
        ("b_edge", b_edge, (1,)),
        ("prior", prior, (M * (M - 1),)),
    ):
        if tuple(t.shape) != exp:
            raise _shape_error(name, t.shape, exp, f" (g={G} from w_logit, R={R} from reprs, E=M(M-1) for M={M})")
    may_sync = not torch.compiler.is_compiling() and not (logits.is_cuda and torch.cuda.is_current_stream_capturing())
    if check_prior and may_sync:
        p = prior.detach().double()
        check.finite_tensor(p, "prior", " (pass check_prior=False to skip this host-syncing check)")
        if softmax_scope == "joint":
            s = p.sum().item()
            if not abs(s - 1.0) <= _PRIOR_ATOL:
                raise ValueError(
                    f"prior: expected to sum to 1 for softmax_scope='joint', got sum {s:.6g} "
                    "(pass check_prior=False to allow)"
                )
        else:
            s = p.view(M, M - 1).sum(1)
            if not (s - 1.0).abs().max().item() <= _PRIOR_ATOL:
                raise ValueError(
                    f"prior: expected each target node's {M - 1} incoming edges to sum to 1 for "
                    f"softmax_scope='target', got group sums {s.tolist()} "
                    "(pass check_prior=False to allow)"
                )
    if check_finite and may_sync:
        for name, t in (("logits", logits), ("reprs", reprs), ("prior", prior)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"{name}: expected finite values, got NaN or inf "
                    "(pass check_finite=False to skip this host-syncing check)"
                )


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
    backend="auto",
    check_prior=True,
    check_finite=True,
) -> GraphDistillResult:
    """One GD-unit; the reference's semantics (see ``dmd_fast.reference.graph_distill``).

    Args:
        logits: (M, B, C), reprs: (M, B, R) per modality, 2 <= M <= 8, R <= 1024.
        w_logit (g, C), b_logit (g,), w_repr (g, R), b_repr (g,), w_edge (1, 4g), b_edge (1,), g <= 128.
        prior: (E,) constant, E = M(M-1), upstream edge order.
        total_weights: weights of (logit, repr, reg) in ``loss_total`` (0 leaves a term out). Backward
            from ``loss_total`` alone is one launch (the kernel stores the total's gradient row).
        backend: 'auto' | 'triton' | 'reference' (see ``dmd_fast.ops.backend``).
        check_prior: raise unless the prior is finite and sums to 1 ('joint') or to 1 per target node
            ('target').
        check_finite: raise on NaN/inf logits, reprs or prior (host sync). Both checks are skipped while
            torch.compile traces. alpha, reg, w_losses and total_weights must be finite numbers.
    Returns:
        GraphDistillResult; the losses, edges (E, B) and edge_scores (B, E) have the inputs' promoted dtype.
        Scalar hyperparameters reach the kernel as fp32 values.
    """
    check_backend_name(backend)
    _validate(
        logits,
        reprs,
        w_logit,
        b_logit,
        w_repr,
        b_repr,
        w_edge,
        b_edge,
        prior,
        alpha=alpha,
        softmax_scope=softmax_scope,
        logit_metric=logit_metric,
        repr_metric=repr_metric,
        w_losses=w_losses,
        reg=reg,
        check_prior=check_prior,
        check_finite=check_finite,
    )
    total_weights = check_total_weights(total_weights)
    kw = dict(
        alpha=alpha,
        softmax_scope=softmax_scope,
        logit_metric=logit_metric,
        repr_metric=repr_metric,
        w_losses=tuple(w_losses),
        reg=reg,
        total_weights=total_weights,
    )
    if resolve_backend(backend, logits.device, OP) == "reference":
        return reference_graph_distill(logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, b_edge, prior, **kw)
    inputs = (logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, b_edge)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    args = (
        logits,
        reprs,
        w_logit,
        b_logit,
        w_repr,
        b_repr,
        w_edge,
        b_edge,
        prior.detach(),
        float(alpha),
        softmax_scope == "joint",
        logit_metric,
        repr_metric,
        float(w_losses[0]),
        float(w_losses[1]),
        float(reg),
        need_grad,
        list(total_weights),
    )
    out = fwd_op(*args)
    loss, total, edges, scores, means = out[:5]
    dt = logits.dtype
    for t in inputs[1:]:
        dt = torch.promote_types(dt, t.dtype)
    return GraphDistillResult(
        _as(loss[0], dt),
        _as(loss[1], dt),
        _as(loss[2], dt),
        _as(total, dt),
        _as(edges, dt),
        _as(scores, dt),
        _as(means, dt),
    )
