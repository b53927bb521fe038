"""Cross-modal attention op: validation, backend choice, torch.library registration.

``cross_modal_attention`` has the meaning of ``dmd_fast.reference.cross_modal_attention`` on
(B, H, L, D) tensors of any strides. The Triton path (``dmd_fast.kernels.attention``) is one
forward launch that saves O and the row log-sum-exp, and two backward launches. It is registered as
the custom ops ``dmd_fast::attention_fwd`` / ``dmd_fast::attention_bwd`` (plus ``*_grouped`` and
``attention_dropout_mask``) with fake kernels and autograd, so ``torch.compile(fullgraph=True)``
traces through it; eager calls run the same bodies through autograd twins
(``dmd_fast/ops/registration.py``). Launchers (``dmd_fast.kernels.attention.attention_*``) and
ops (``fwd_op``, ``bwd_op``, ...) have distinct names.

Dropout draws an int64 [seed, offset] pair on q's device from ``generator`` (or torch's default
generator, so ``torch.manual_seed`` makes runs repeatable and CUDA-graph capture works), or the grouped
entry takes the caller's (``seed``); the kernels hash it with (b, h, i, j). The keep probability is
quantised to multiples of 1/256 (see ``dmd_fast.kernels.attention``); kept weights are scaled by 1/(1 − p).

``key_lengths`` values are range-checked only for CPU tensors (a check on CUDA would sync the
host); on CUDA, values outside [0, Lk] act as clamped, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dmd_fast import validation as check
from dmd_fast.ops.backend import resolve_backend
from dmd_fast.ops.registration import define_op
from dmd_fast.ops.seed import check_seed, draw_seed, op_seed, refuse_seed_on_reference
from dmd_fast.reference.attention import cross_modal_attention as reference_attention

OP = "cross_modal_attention"
MAX_HEAD_DIM = 128
PRECISIONS = ("ieee", "tf32", "tf32x3")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# ops (dmd_fast/ops/registration.py: custom op + eager twin per body)
# ----------------------------------------------------------------------------------------------


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_lengths: Tensor | None,
    seed: Tensor | None,
    offset_causal: bool,
    dropout_p: float,
    scale: float,
    input_precision: str,
) -> tuple[Tensor, Tensor]:
    """(o (B, H, Lq, D), lse (B, H, Lq) base-2 log-sum-exp of the scaled scores)."""
    from dmd_fast.kernels.attention import attention_fwd as launch

    return launch(
        q,
        k,
        v,
        key_lengths=key_lengths,
        offset_causal=offset_causal,
        dropout_p=dropout_p,
        seed=seed,
        scale=scale,
        input_precision=input_precision,
    )


def _fwd_fake(q, k, v, key_lengths, seed, offset_causal, dropout_p, scale, input_precision):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=_lse_dtype(q))


def _fwd_setup(ctx, inputs, output):
    q, k, v, key_lengths, seed, ctx.offset_causal, ctx.dropout_p, ctx.scale, ctx.precision = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse, key_lengths, seed)


def _fwd_backward(ctx, do, _dlse):
    q, k, v, o, lse, key_lengths, seed = ctx.saved_tensors
    if do is None:  # o got no gradient (the eager twin does not materialise it)
        do = torch.zeros_like(o)
    dq, dk, dv = bwd_op.inner(
        ctx, do, q, k, v, o, lse, key_lengths, seed, ctx.offset_causal, ctx.dropout_p, ctx.scale, ctx.precision
    )
    return dq, dk, dv, None, None, None, None, None, None


def _bwd(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    key_lengths: Tensor | None,
    seed: Tensor | None,
    offset_causal: bool,
    dropout_p: float,
    scale: float,
    input_precision: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) shaped like q, k, v."""
    from dmd_fast.kernels.attention import attention_bwd as launch

    return launch(
        do,
        q,
        k,
        v,
        o,
        lse,
        key_lengths=key_lengths,
        offset_causal=offset_causal,
        dropout_p=dropout_p,
        seed=seed,
        scale=scale,
        input_precision=input_precision,
    )


def _bwd_fake(do, q, k, v, o, lse, key_lengths, seed, offset_causal, dropout_p, scale, input_precision):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fwd_grouped(
    qs: list[Tensor],
    ks: list[Tensor],
    vs: list[Tensor],
    key_lengths: list[Tensor],
    seed: Tensor | None,
    offset_causal: bool,
    dropout_p: list[float],
    scale: float,
    input_precision: str,
) -> list[Tensor]:
    """G problems in one launch: [o_0 .. o_{G-1}, lse_0 .. lse_{G-1}]. key_lengths: [] or G int32 (B,)."""
    from dmd_fast.kernels.attention import attention_fwd_grouped as launch

    os_, lses = launch(
        qs,
        ks,
        vs,
        key_lengths=key_lengths or None,
        offset_causal=offset_causal,
        dropout_p=dropout_p,
        seed=seed,
        scale=scale,
        input_precision=input_precision,
    )
    return os_ + lses


def _fwd_grouped_fake(qs, ks, vs, key_lengths, seed, offset_causal, dropout_p, scale, input_precision):
    return [torch.empty_like(q) for q in qs] + [q.new_empty(q.shape[:3], dtype=_lse_dtype(q)) for q in qs]


def _grouped_setup(ctx, inputs, output):
    qs, ks, vs, key_lengths, seed, ctx.offset_causal, ctx.dropout_p, ctx.scale, ctx.precision = inputs
    G = ctx.G = len(qs)
    ctx.has_kl = bool(key_lengths)
    ctx.mark_non_differentiable(*output[G:])
    ctx.save_for_backward(*qs, *ks, *vs, *output, *key_lengths, seed)


def _grouped_backward(ctx, grads):
    G, saved = ctx.G, ctx.saved_tensors
    qs, ks, vs, os_, lses = (list(saved[i * G : (i + 1) * G]) for i in range(5))
    kls = list(saved[5 * G : 6 * G]) if ctx.has_kl else []
    dos = [torch.zeros_like(o) if g is None else g for g, o in zip(grads[:G], os_)]
    d = bwd_grouped_op.inner(
        ctx, dos, qs, ks, vs, os_, lses, kls, saved[-1], ctx.offset_causal, ctx.dropout_p, ctx.scale, ctx.precision
    )
    return d[:G], d[G : 2 * G], d[2 * G :], [None] * len(kls), None, None, None, None, None


def _bwd_grouped(
    dos: list[Tensor],
    qs: list[Tensor],
    ks: list[Tensor],
    vs: list[Tensor],
    os_: list[Tensor],
    lses: list[Tensor],
    key_lengths: list[Tensor],
    seed: Tensor | None,
    offset_causal: bool,
    dropout_p: list[float],
    scale: float,
    input_precision: str,
) -> list[Tensor]:
    """Backward of the grouped op in 2 launches: [dq_0 .., dk_0 .., dv_0 ..]."""
    from dmd_fast.kernels.attention import attention_bwd_grouped as launch

    dqs, dks, dvs = launch(
        dos,
        qs,
        ks,
        vs,
        os_,
        lses,
        key_lengths=key_lengths or None,
        offset_causal=offset_causal,
        dropout_p=dropout_p,
        seed=seed,
        scale=scale,
        input_precision=input_precision,
    )
    return dqs + dks + dvs


def _bwd_grouped_fake(dos, qs, ks, vs, os_, lses, key_lengths, seed, offset_causal, dropout_p, scale, input_precision):
    return [torch.empty_like(t) for t in (*qs, *ks, *vs)]


def _dropout_mask(
    seed: Tensor, batch: int, heads: int, len_q: int, len_k: int, dropout_p: float, group_index: int
) -> Tensor:
    """The kernels' keep-mask bool (B, H, Lq, Lk) for ``seed`` (debug/test path)."""
    from dmd_fast.kernels.attention_dropout import attention_dropout_mask as launch

    return launch(seed, batch, heads, len_q, len_k, dropout_p, group_index=group_index)


def _dropout_mask_fake(seed, batch, heads, len_q, len_k, dropout_p, group_index):
    return seed.new_empty((batch, heads, len_q, len_k), dtype=torch.bool)


# registered as dmd_fast::attention_fwd, ..._bwd, ..._fwd_grouped, ..._bwd_grouped, ..._dropout_mask
bwd_op = define_op("attention_bwd", _bwd, fake=_bwd_fake)
fwd_op = define_op("attention_fwd", _fwd, fake=_fwd_fake, setup_context=_fwd_setup, backward=_fwd_backward)
bwd_grouped_op = define_op("attention_bwd_grouped", _bwd_grouped, fake=_bwd_grouped_fake)
fwd_grouped_op = define_op(
    "attention_fwd_grouped",
    _fwd_grouped,
    fake=_fwd_grouped_fake,
    setup_context=_grouped_setup,
    backward=_grouped_backward,
    list_output=True,
)
dropout_mask_op = define_op("attention_dropout_mask", _dropout_mask, fake=_dropout_mask_fake)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _fail(cls, msg):
    raise cls(f"{OP}: {msg}")


def _check_qkv(q, k, v, names=("q", "k", "v")):
    """Shapes, dtypes and devices of one problem; returns (B, H, Lq, Lk, D)."""
    for t, n in zip((q, k, v), names):
        if not isinstance(t, Tensor):
            _fail(TypeError, f"{n}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            _fail(ValueError, f"{n}: expected a 4-D tensor (B, H, L, D), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            _fail(TypeError, f"{n}: expected a floating dtype in {_DTYPES}, got {t.dtype}")
    qn, kn, vn = names
    for t, n in ((k, kn), (v, vn)):
        if t.dtype != q.dtype:
            _fail(TypeError, f"{n}: dtype {t.dtype} differs from {qn}'s {q.dtype}; all of q, k, v must match")
        if t.device != q.device:
            _fail(ValueError, f"{n}: on device {t.device}, expected {qn}'s device {q.device}")
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if tuple(k.shape[:2]) != (B, H) or k.shape[3] != D:
        _fail(
            ValueError,
            f"{kn}: expected shape (B, H, Lk, D) = ({B}, {H}, Lk, {D}) to match {qn} "
            f"{tuple(q.shape)}, got {tuple(k.shape)}",
        )
    if tuple(v.shape) != tuple(k.shape):
        _fail(
            ValueError,
            f"{vn}: expected the shape of {kn} {tuple(k.shape)} (same batch, heads, key length "
            f"and head_dim), got {tuple(v.shape)}",
        )
    if not 1 <= D <= MAX_HEAD_DIM:
        _fail(ValueError, f"{qn}: head_dim must be in [1, {MAX_HEAD_DIM}], got {D}")
    return B, H, Lq, Lk, D


def _check_key_lengths(key_lengths, B, Lk, device, name="key_lengths"):
    """Validate and return key lengths as int32 (B,) on ``device`` (None stays None)."""
    if key_lengths is None:
        return None
    if not isinstance(key_lengths, Tensor):
        _fail(TypeError, f"{name}: expected an integer tensor of shape ({B},), got {type(key_lengths).__name__}")
    if key_lengths.dtype.is_floating_point or key_lengths.dtype.is_complex or key_lengths.dtype == torch.bool:
        _fail(TypeError, f"{name}: expected an integer dtype, got {key_lengths.dtype}")
    if tuple(key_lengths.shape) != (B,):
        _fail(ValueError, f"{name}: expected shape ({B},) (one length per sample), got {tuple(key_lengths.shape)}")
    if key_lengths.device != device and key_lengths.device.type != "cpu":
        _fail(ValueError, f"{name}: on device {key_lengths.device}, expected {device} or cpu")
    if key_lengths.device.type == "cpu" and not torch.compiler.is_compiling() and B:
        lo, hi = int(key_lengths.min()), int(key_lengths.max())
        if lo < 0 or hi > Lk:
            _fail(ValueError, f"{name}: values must lie in [0, Lk={Lk}], got min {lo}, max {hi}")
    return key_lengths.to(device=device, dtype=torch.int32, non_blocking=True)


def _check_options(dropout_p, scale, input_precision, D, dtype):
    try:
        dropout_p = check.probability(dropout_p, "dropout_p")
        scale = check.attention_scale(scale, D, dtype)
    except (TypeError, ValueError) as exc:
        _fail(type(exc), str(exc))
    if input_precision not in PRECISIONS:
        _fail(ValueError, f"input_precision: expected one of {PRECISIONS}, got {input_precision!r}")
    return dropout_p, scale


# ----------------------------------------------------------------------------------------------
# functional API
# ----------------------------------------------------------------------------------------------


def cross_modal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_lengths: Tensor | None = None,
    offset_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    generator: torch.Generator | None = None,
    input_precision: str = "ieee",
    backend: str = "auto",
    return_keep_mask: bool = False,
):
    """O = dropout(softmax(scale · Q Kᵀ + mask)) · V.

    Args:
        q: (B, H, Lq, D); k, v: (B, H, Lk, D); any strides, fp16/bf16/fp32/fp64, D <= 128.
        key_lengths: optional integer (B,): keys j >= key_lengths[b] are invisible.
        offset_causal: DMD's mask, query i sees key j iff j <= i + |Lk − Lq|.
        dropout_p: dropout on the attention weights in [0, 1), kept weights scaled by 1/(1 − p).
        scale: score scale, default D**−0.5.
        generator: source of the dropout seed (default: torch's generator for q's device).
        input_precision: fp32 matmul precision on the Triton path: "ieee" (default), "tf32", "tf32x3".
        backend: "auto", "triton" or "reference" (see ``dmd_fast.ops.backend``).
        return_keep_mask: also return the dropout keep-mask bool (B, H, Lq, Lk) (debug path).
    Returns:
        O (B, H, Lq, D) in q's dtype (laid out like q when q is dense), or (O, keep_mask).
        A query row with no visible key gives O = 0 and zero gradients.
    """
    B, H, Lq, Lk, D = _check_qkv(q, k, v)
    dropout_p, scale = _check_options(dropout_p, scale, input_precision, D, q.dtype)
    key_lengths = _check_key_lengths(key_lengths, B, Lk, q.device)
    check.generator(generator, "generator", q.device)
    check.boolean(offset_causal, "offset_causal")
    if resolve_backend(backend, q.device, OP) == "reference":
        keep = None
        if return_keep_mask and dropout_p > 0:
            keep = torch.rand((B, H, Lq, Lk), generator=generator, device=q.device) >= dropout_p
        out = reference_attention(
            q,
            k,
            v,
            key_lengths=key_lengths,
            offset_causal=offset_causal,
            dropout_p=dropout_p,
            scale=scale,
            keep_mask=keep,
            generator=generator,
        )
    else:
        if q.device.type == "cpu":
            check.interpreter_dtype(q.dtype, "q", OP)
        if check.scale_in_inputs(scale, q.dtype):
            q, scale = q * scale, 1.0
        seed = draw_seed(generator, q.device) if dropout_p > 0 else None
        out, _ = fwd_op(q, k, v, key_lengths, seed, bool(offset_causal), dropout_p, scale, input_precision)
        if return_keep_mask and dropout_p > 0:
            keep = dropout_mask_op(seed, B, H, Lq, Lk, dropout_p, 0)
    if not return_keep_mask:
        return out
    if dropout_p == 0:
        keep = torch.ones((B, H, Lq, Lk), dtype=torch.bool, device=q.device)
    return out, keep


def cross_modal_attention_grouped(
    problems: Sequence[tuple[Tensor, Tensor, Tensor]],
    *,
    key_lengths: Sequence[Tensor | None] | None = None,
    offset_causal: bool = False,
    dropout_p: float | Sequence[float] = 0.0,
    scale: float | None = None,
    generator: torch.Generator | None = None,
    seed: Tensor | None = None,
    input_precision: str = "ieee",
    backend: str = "auto",
    return_keep_mask: bool = False,
):
    """G independent attentions (e.g. DMD's six cross-modal pairs of one layer) in one launch.

    Args:
        problems: G tuples (q (B, H, Lq_g, D), k, v (B, H, Lk_g, D)); B, H, D, dtype and device shared.
        key_lengths: None or G entries, each None or integer (B,) for that problem.
        dropout_p: one probability for all problems, or G of them (DMD keys attention dropout by the
            source modality), still one launch.
        seed: instead of a draw, an int64 [seed, offset] tensor of shape (2,) on q's device (e.g. a row
            of ``ops.seed.draw_seeds``); not with ``generator``; Triton backend only.
        Other arguments as :func:`cross_modal_attention`; one seed is drawn (or given) for the group and
            problem g hashes it with g, so its dropout mask differs from a separate call's.
    Returns:
        List of G outputs O_g (B, H, Lq_g, D), or (outputs, keep_masks).
    """
    if isinstance(problems, Tensor) or not isinstance(problems, Sequence) or not problems:
        _fail(TypeError, "problems: expected a non-empty sequence of (q, k, v) tuples")
    G = len(problems)
    dims = []
    for g, p in enumerate(problems):
        if not isinstance(p, (tuple, list)) or len(p) != 3:
            _fail(TypeError, f"problems[{g}]: expected a (q, k, v) tuple, got {type(p).__name__}")
        dims.append(_check_qkv(*p, names=tuple(f"problems[{g}].{n}" for n in "qkv")))
    q0 = problems[0][0]
    B, H, _, _, D = dims[0]
    for g, (p, d) in enumerate(zip(problems, dims)):
        if (d[0], d[1], d[4]) != (B, H, D) or p[0].dtype != q0.dtype or p[0].device != q0.device:
            _fail(
                ValueError,
                f"problems[{g}]: expected B={B}, H={H}, D={D}, dtype {q0.dtype} and device "
                f"{q0.device} like problems[0], got B={d[0]}, H={d[1]}, D={d[4]}, "
                f"{p[0].dtype} on {p[0].device}",
            )
    if isinstance(dropout_p, Sequence) and not isinstance(dropout_p, str):
        if len(dropout_p) != G:
            _fail(ValueError, f"dropout_p: expected a float or {G} floats (one per problem), got {len(dropout_p)}")
        ps = [check.probability(p, f"dropout_p[{g}]") for g, p in enumerate(dropout_p)]
    else:
        ps = [_check_options(dropout_p, scale, input_precision, D, q0.dtype)[0]] * G
    _, scale = _check_options(0.0, scale, input_precision, D, q0.dtype)
    if key_lengths is not None and (not isinstance(key_lengths, Sequence) or len(key_lengths) != G):
        _fail(TypeError, f"key_lengths: expected None or a sequence of {G} entries (None or (B,) tensors)")
    kls = [
        _check_key_lengths(kl, B, d[3], q0.device, f"key_lengths[{g}]")
        for g, (kl, d) in enumerate(zip(key_lengths or [None] * G, dims))
    ]
    check.generator(generator, "generator", q0.device)
    check_seed(seed, generator, q0.device, OP)
    check.boolean(offset_causal, "offset_causal")
    if resolve_backend(backend, q0.device, OP) == "reference":
        refuse_seed_on_reference(seed, OP)
        outs, keeps = [], []
        for (q, k, v), kl, d, p in zip(problems, kls, dims, ps):
            keep = None
            if return_keep_mask:
                keep = torch.rand((B, H, d[2], d[3]), generator=generator, device=q.device) >= p
            outs.append(
                reference_attention(
                    q,
                    k,
                    v,
                    key_lengths=kl,
                    offset_causal=offset_causal,
                    dropout_p=p,
                    scale=scale,
                    keep_mask=keep,
                    generator=generator,
                )
            )
            keeps.append(keep)
    else:
        if q0.device.type == "cpu":
            check.interpreter_dtype(q0.dtype, "problems[0].q", OP)
        if check.scale_in_inputs(scale, q0.dtype):
            problems, scale = [(p[0] * scale, p[1], p[2]) for p in problems], 1.0
        if all(kl is None for kl in kls):
            kls = []
        else:
            kls = [
                torch.full((B,), d[3], dtype=torch.int32, device=q0.device) if kl is None else kl
                for kl, d in zip(kls, dims)
            ]
        seed = op_seed(seed, generator, q0.device, max(ps) > 0)
        res = fwd_grouped_op(
            [p[0] for p in problems],
            [p[1] for p in problems],
            [p[2] for p in problems],
            kls,
            seed,
            bool(offset_causal),
            ps,
            scale,
            input_precision,
        )
        outs = list(res[:G])
        if return_keep_mask:
            keeps = [
                dropout_mask_op(seed, B, H, d[2], d[3], p, g)
                if p > 0
                else torch.ones((B, H, d[2], d[3]), dtype=torch.bool, device=q0.device)
                for g, (d, p) in enumerate(zip(dims, ps))
            ]
    return (outs, keeps) if return_keep_mask else outs


def attention_weights(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_lengths: Tensor | None = None,
    offset_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Attention probabilities (B, H, Lq, Lk) for visualisation, without dropout.

    A separate path through the reference (it materialises the scores); the fast op never does.
    """
    B, H, Lq, Lk, D = _check_qkv(q, k, v)
    _, scale = _check_options(0.0, scale, "ieee", D, q.dtype)
    key_lengths = _check_key_lengths(key_lengths, B, Lk, q.device)
    _, probs = reference_attention(
        q, k, v, key_lengths=key_lengths, offset_causal=offset_causal, scale=scale, return_weights=True
    )
    return probs
