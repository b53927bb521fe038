"""Fused post-attention block of pre-LN MulT encoder layers: validation, backend, registration.

``encoder_ffn_block_grouped`` has the meaning of ``dmd_fast.reference.encoder_ffn`` per problem
(out-projection, residual, LN1, fc1, ReLU, fc2, residual, and the encoder's final LayerNorm on its last
layer), with residual dropout (on the out-projection term and on the FFN term, p ``res_dropout``) and
ReLU dropout (on the hidden, p ``relu_dropout``), p per problem. The Triton path draws an int64
[seed, offset] pair on the device from ``generator`` (or torch's default generator: ``torch.manual_seed``
makes runs repeatable, CUDA-graph capture works), or takes the caller's (``seed``), and the kernels
regenerate their Philox keep masks in the backward (``kernels.encoder_ffn.ffn_dropout_masks``
materialises them); the reference path draws torch masks. The Triton path
(``dmd_fast.kernels.encoder_ffn``) is one forward launch per group that saves the inputs, four
statistics per row and, with the final LayerNorm, the pre-LN output; and two backward launches (row
programs, then a deterministic reduction of the parameter gradients). Registered as
``dmd_fast::encoder_ffn_fwd`` / ``dmd_fast::encoder_ffn_bwd`` with fake kernels and autograd; eager
calls run the same bodies through an autograd twin (``dmd_fast/ops/registration.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dmd_fast import validation as check
from dmd_fast.ops.backend import resolve_backend
from dmd_fast.ops.registration import define_op
from dmd_fast.ops.seed import check_seed, op_seed, refuse_seed_on_reference
from dmd_fast.reference.encoder_ffn import encoder_ffn_block as reference

OP = "encoder_ffn_block"
MAX_EMBED_DIM = 128
PARAMS = ("w_o", "b_o", "ln1_w", "ln1_b", "w_1", "b_1", "w_2", "b_2")
FINAL_PARAMS = ("lnf_w", "lnf_b")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# ops
# ----------------------------------------------------------------------------------------------


def _param_dicts(lists, final: bool) -> list[dict]:
    names = PARAMS + (FINAL_PARAMS if final else ())
    return [dict(zip(names, ts)) for ts in zip(*lists[: len(names)])]


def _fwd(
    xs: list[Tensor],
    os_: list[Tensor],
    w_o: list[Tensor],
    b_o: list[Tensor],
    ln1_w: list[Tensor],
    ln1_b: list[Tensor],
    w_1: list[Tensor],
    b_1: list[Tensor],
    w_2: list[Tensor],
    b_2: list[Tensor],
    lnf_w: list[Tensor],
    lnf_b: list[Tensor],
    seed: Tensor | None,
    res_p: list[float],
    relu_p: list[float],
    eps: float,
    pair: bool,
) -> list[Tensor]:
    """[out_0 .. out_{G-1}, stats (rows, 4), pre_0 .. pre_{G-1} (only with the final LayerNorm)];
    lnf_w / lnf_b: [] (no final LayerNorm) or G tensors; seed: int64 [seed, offset] or None (no dropout);
    res_p, relu_p: G dropout probabilities. ``pair``: problems 2i and 2i + 1 write the two halves of one
    (T, B, 2E) output, so the G outputs are G / 2 pairs side by side (no concatenation kernel)."""
    from dmd_fast.kernels.encoder_ffn import ffn_fwd_grouped as launch

    final = bool(lnf_w)
    params = _param_dicts((w_o, b_o, ln1_w, ln1_b, w_1, b_1, w_2, b_2, lnf_w, lnf_b), final)
    outs, stats, pres = launch(xs, os_, params, final=final, eps=eps, seed=seed, res_p=res_p, relu_p=relu_p, pair=pair)
    return outs + [stats] + pres


def _fwd_fake(xs, os_, w_o, b_o, ln1_w, ln1_b, w_1, b_1, w_2, b_2, lnf_w, lnf_b, seed, res_p, relu_p, eps, pair):
    rows = sum(x.shape[0] * x.shape[1] for x in xs)
    sdt = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    pres = [x.new_empty(x.shape) for x in xs] if lnf_w else []
    if pair:
        outs = [x.new_empty((*x.shape[:2], 2 * x.shape[2])) for x in xs[::2]]
    else:
        outs = [x.new_empty(x.shape) for x in xs]
    return outs + [xs[0].new_empty((rows, 4), dtype=sdt)] + pres


def _fwd_setup(ctx, inputs, output):
    *tensor_lists, seed, ctx.res_p, ctx.relu_p, ctx.eps, ctx.pair = inputs
    ctx.G, ctx.final = len(tensor_lists[0]), bool(tensor_lists[-1])
    n_out = ctx.G // 2 if ctx.pair else ctx.G
    ctx.mark_non_differentiable(*output[n_out:])
    ctx.save_for_backward(*(t for ts in tensor_lists for t in ts), seed, *output[n_out:])


def _output_grads(grads, xs, pair: bool) -> list:
    """Per problem gradient of its output (zeros for None); with ``pair``, the halves of each pair's
    (T, B, 2E) gradient (views: the kernel reads rows of any stride)."""
    if not pair:
        return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, xs)]
    E, douts = xs[0].shape[2], []
    for i, g in enumerate(grads):
        if g is None:
            douts += [torch.zeros_like(xs[2 * i]), torch.zeros_like(xs[2 * i + 1])]
        else:
            douts += [g[..., :E], g[..., E:]]
    return douts


def _fwd_backward(ctx, grads):
    G, final, saved = ctx.G, ctx.final, list(ctx.saved_tensors)
    n_lists = 12 if final else 10
    lists = [saved[i * G : (i + 1) * G] for i in range(n_lists)]
    seed, stats, pres = saved[n_lists * G], saved[n_lists * G + 1], saved[n_lists * G + 2 :]
    xs, os_ = lists[0], lists[1]
    douts = _output_grads(grads[: G // 2 if ctx.pair else G], xs, ctx.pair)
    lnf = (lists[10], lists[11]) if final else ([], [])
    res = bwd_op.inner(ctx, douts, xs, os_, *lists[2:10], *lnf, stats, pres, seed, ctx.res_p, ctx.relu_p)
    dxs, dos, flat = res[:G], res[G : 2 * G], res[2 * G]
    from dmd_fast.kernels.encoder_ffn import grad_columns

    cols = grad_columns(xs[0].shape[2])
    names = PARAMS + (FINAL_PARAMS if final else ())
    # per parameter: one (G, *shape) view of its columns, unbound into G views (2 calls, not 2 per problem)
    per_param = [list(flat[:, c : c + _numel(s)].view(G, *s).unbind(0)) for c, s in (cols[n] for n in names)]
    if not final:
        per_param += [None, None]
    return (dxs, dos, *per_param, None, None, None, None, None)


def _numel(shape) -> int:
    return shape[0] * (shape[1] if len(shape) > 1 else 1)


def _bwd(
    douts: list[Tensor],
    xs: list[Tensor],
    os_: list[Tensor],
    w_o: list[Tensor],
    b_o: list[Tensor],
    ln1_w: list[Tensor],
    ln1_b: list[Tensor],
    w_1: list[Tensor],
    b_1: list[Tensor],
    w_2: list[Tensor],
    b_2: list[Tensor],
    lnf_w: list[Tensor],
    lnf_b: list[Tensor],
    stats: Tensor,
    pres: list[Tensor],
    seed: Tensor | None,
    res_p: list[float],
    relu_p: list[float],
) -> list[Tensor]:
    """[dx_0 .., do_0 .., grads (G, C)]: each problem's parameter gradients in one row
    (``kernels.encoder_ffn.grad_columns``)."""
    from dmd_fast.kernels.encoder_ffn import ffn_bwd_grouped as launch

    final = bool(lnf_w)
    params = _param_dicts((w_o, b_o, ln1_w, ln1_b, w_1, b_1, w_2, b_2, lnf_w, lnf_b), final)
    dxs, dos, flat = launch(douts, xs, os_, params, stats, pres, final=final, seed=seed, res_p=res_p, relu_p=relu_p)
    return dxs + dos + [flat]


def _bwd_fake(
    douts, xs, os_, w_o, b_o, ln1_w, ln1_b, w_1, b_1, w_2, b_2, lnf_w, lnf_b, stats, pres, seed, res_p, relu_p
):
    from dmd_fast.kernels.encoder_ffn import grad_width

    C = grad_width(xs[0].shape[2])
    return [x.new_empty(x.shape) for x in xs] * 2 + [xs[0].new_empty((len(xs), C))]


bwd_op = define_op("encoder_ffn_bwd", _bwd, fake=_bwd_fake)
fwd_op = define_op(
    "encoder_ffn_fwd", _fwd, fake=_fwd_fake, setup_context=_fwd_setup, backward=_fwd_backward, list_output=True
)


# ----------------------------------------------------------------------------------------------
# validation and the functional API
# ----------------------------------------------------------------------------------------------


def _fail(cls, msg):
    raise cls(f"{OP}: {msg}")


def _check_list(ts, name: str, G: int | None) -> list:
    if isinstance(ts, Tensor) or not isinstance(ts, Sequence):
        _fail(TypeError, f"{name}: expected a list of tensors (one per problem), got {type(ts).__name__}")
    if G is not None and len(ts) != G:
        _fail(ValueError, f"{name}: expected {G} tensors (one per problem), got {len(ts)}")
    for i, t in enumerate(ts):
        if not isinstance(t, Tensor):
            _fail(TypeError, f"{name}[{i}]: expected a torch.Tensor, got {type(t).__name__}")
    return list(ts)


def _check_group(xs, os_, lists: dict) -> int:
    """Shapes, dtypes and devices of the group; returns E."""
    xs = _check_list(xs, "xs", None)
    if not xs:
        _fail(ValueError, "xs: expected at least one problem, got an empty list")
    G = len(xs)
    os_ = _check_list(os_, "os", G)
    x0 = xs[0]
    if x0.dim() != 3:
        _fail(ValueError, f"xs[0]: expected a (T, B, E) tensor, got shape {tuple(x0.shape)}")
    E = x0.shape[2]
    if not 1 <= E <= MAX_EMBED_DIM:
        _fail(ValueError, f"xs[0]: embed dim E must be in [1, {MAX_EMBED_DIM}], got {E}")
    if x0.dtype not in _DTYPES:
        _fail(TypeError, f"xs[0]: expected a floating dtype in {_DTYPES}, got {x0.dtype}")
    for g, (x, o) in enumerate(zip(xs, os_)):
        for name, t in ((f"xs[{g}]", x), (f"os[{g}]", o)):
            if t.dim() != 3 or t.shape[2] != E:
                _fail(ValueError, f"{name}: expected shape (T, B, E={E}), got {tuple(t.shape)}")
            if t.dtype != x0.dtype:
                _fail(TypeError, f"{name}: dtype {t.dtype} differs from xs[0]'s {x0.dtype}")
            if t.device != x0.device:
                _fail(ValueError, f"{name}: on device {t.device}, expected xs[0]'s device {x0.device}")
        if o.shape != x.shape:
            _fail(ValueError, f"os[{g}]: expected the shape of xs[{g}] {tuple(x.shape)}, got {tuple(o.shape)}")
    shapes = {"w_o": (E, E), "w_1": (4 * E, E), "w_2": (E, 4 * E), "b_1": (4 * E,)}
    for name, ts in lists.items():
        for g, t in enumerate(_check_list(ts, name, G)):
            want = shapes.get(name, (E,))
            if tuple(t.shape) != want:
                _fail(ValueError, f"{name}[{g}]: expected shape {want}, got {tuple(t.shape)}")
            if t.dtype != x0.dtype or t.device != x0.device:
                _fail(TypeError, f"{name}[{g}]: expected {x0.dtype} on {x0.device}, got {t.dtype} on {t.device}")
    return E


def _check_pairs(pair_outputs, xs) -> None:
    if not isinstance(pair_outputs, bool):
        _fail(TypeError, f"pair_outputs: expected a bool, got {type(pair_outputs).__name__}")
    if not pair_outputs:
        return
    if len(xs) % 2:
        _fail(ValueError, f"pair_outputs: expected an even number of problems (pairs side by side), got {len(xs)}")
    for i in range(0, len(xs), 2):
        if xs[i].shape != xs[i + 1].shape:
            _fail(
                ValueError,
                f"pair_outputs: problems {i} and {i + 1} write one (T, B, 2E) output, so their shapes must agree; "
                f"got {tuple(xs[i].shape)} and {tuple(xs[i + 1].shape)}",
            )


def _probabilities(p, name: str, G: int) -> list[float]:
    """A float or G floats, each in [0, 1) → G floats."""
    if isinstance(p, Tensor) or not isinstance(p, (Sequence, int, float)) or isinstance(p, (str, bytes)):
        _fail(TypeError, f"{name}: expected a float in [0, 1) or a list of {G} of them, got {type(p).__name__}")
    ps = [p] * G if isinstance(p, (int, float)) else list(p)
    if len(ps) != G:
        _fail(ValueError, f"{name}: expected {G} probabilities (one per problem), got {len(ps)}")
    if isinstance(p, (int, float)):
        return [check.probability(p, name)] * G
    return [check.probability(v, f"{name}[{i}]") for i, v in enumerate(ps)]


def _torch_masks(x: Tensor, res_p: float, relu_p: float, generator) -> dict:
    """Reference keep masks drawn with torch (None where p is 0)."""
    T, B, E = x.shape

    def keep(C, p):
        return None if p == 0 else torch.rand((T, B, C), generator=generator, device=x.device) >= p

    return dict(keep_res1=keep(E, res_p), keep_relu=keep(4 * E, relu_p), keep_res2=keep(E, res_p))


def encoder_ffn_block_grouped(
    xs: Sequence[Tensor],
    os: Sequence[Tensor],  # noqa: A002 (the attention outputs, as the issue names them)
    w_o: Sequence[Tensor],
    b_o: Sequence[Tensor],
    ln1_w: Sequence[Tensor],
    ln1_b: Sequence[Tensor],
    w_1: Sequence[Tensor],
    b_1: Sequence[Tensor],
    w_2: Sequence[Tensor],
    b_2: Sequence[Tensor],
    lnf_w: Sequence[Tensor] | None = None,
    lnf_b: Sequence[Tensor] | None = None,
    *,
    res_dropout: float | Sequence[float] = 0.0,
    relu_dropout: float | Sequence[float] = 0.0,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
    seed: Tensor | None = None,
    pair_outputs: bool = False,
    backend: str = "auto",
) -> list[Tensor]:
    """G post-attention blocks of one width E in one launch (per problem: x (T, B, E) the layer's input,
    o (T, B, E) its attention output with heads merged; out_proj, LN1, fc1, fc2 parameters as
    ``TransformerEncoderLayer`` holds them; lnf_*: the encoder's final LayerNorm, or None).

    ``res_dropout`` / ``relu_dropout``: a float in [0, 1) or G of them (residual dropout on both residual
    branches, ReLU dropout on the hidden); ``generator``: source of the dropout seed (default: torch's
    generator for the device); ``seed``: instead of a draw, an int64 [seed, offset] tensor of shape (2,)
    on the device (e.g. a row of ``ops.seed.draw_seeds``), not with ``generator``, Triton backend only.
    Returns G outputs (T, B, E), contiguous; with ``pair_outputs`` (G even, problems 2i and 2i + 1 of one
    shape) G / 2 outputs (T, B, 2E), ``torch.cat([out_2i, out_2i+1], dim=2)``, written in place by the
    kernel (the memory encoders' inputs)."""
    lists = dict(w_o=w_o, b_o=b_o, ln1_w=ln1_w, ln1_b=ln1_b, w_1=w_1, b_1=b_1, w_2=w_2, b_2=b_2)
    if (lnf_w is None) != (lnf_b is None):
        _fail(
            ValueError,
            f"{'lnf_b' if lnf_b is None else 'lnf_w'}: is None while the other is given; pass both or neither",
        )
    if lnf_w is not None:
        lists.update(lnf_w=lnf_w, lnf_b=lnf_b)
    E = _check_group(xs, os, lists)
    G = len(xs)
    _check_pairs(pair_outputs, xs)
    res_p, relu_p = _probabilities(res_dropout, "res_dropout", G), _probabilities(relu_dropout, "relu_dropout", G)
    eps = check.positive(eps, "eps")
    xs, os = list(xs), list(os)
    check.generator(generator, "generator", xs[0].device)
    check_seed(seed, generator, xs[0].device, OP)
    if resolve_backend(backend, xs[0].device, OP) == "reference":
        refuse_seed_on_reference(seed, OP)
        finals = (lists.get("lnf_w"), lists.get("lnf_b"))
        outs = []
        for g, (x, o) in enumerate(zip(xs, os)):
            masks = _torch_masks(x, res_p[g], relu_p[g], generator)
            lnf = (None, None) if lnf_w is None else (finals[0][g], finals[1][g])
            outs.append(
                reference(
                    x, o, *(lists[n][g] for n in PARAMS), *lnf, eps=eps, **masks, res_p=res_p[g], relu_p=relu_p[g]
                )
            )
        if pair_outputs:
            return [torch.cat(outs[2 * i : 2 * i + 2], dim=2) for i in range(G // 2)]
        return outs
    if xs[0].device.type == "cpu":
        check.interpreter_dtype(xs[0].dtype, "xs", OP)
    del E
    final = [list(lnf_w), list(lnf_b)] if lnf_w is not None else [[], []]
    seed = op_seed(seed, generator, xs[0].device, max(res_p + relu_p) > 0)
    out = fwd_op(xs, os, *(list(lists[n]) for n in PARAMS), *final, seed, res_p, relu_p, float(eps), pair_outputs)
    return out[: G // 2 if pair_outputs else G]
