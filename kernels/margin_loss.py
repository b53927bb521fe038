"""DMD's margin ("sim") loss in Triton: upstream's HingeLoss over every anchor in one program.

feats F (N, d), labels y (N,): cos = F Fᵀ / (n nᵀ) with n = max(√(Σ F² + 1e-8), 1e-8); for an anchor p,
positives a ≠ p with y_a = y_p, negatives b with y_b ≠ y_p, hinge max(0, 0.15·|y_p − y_b| − cos[p, a] +
cos[p, b]) meaned over its (a, b) pairs; the loss is the mean over the anchors that have both
(0 when none has). Semantics: ``dmd_fast.reference.margin.margin_loss_loop``.

- Forward, one launch, one program: ``margin_loss_fwd_kernel``; the Gram matrix in d chunks, then a
  loop over the anchors on an (N_PAD, N_PAD) tile of (positive, negative) pairs.
- Backward, one launch, one program: ``margin_loss_bwd_kernel`` recomputes cos and the pair masks,
  forms dcos, then dF = (dG + dGᵀ) F + F · dn/n per d chunk (dG = dcos / (n nᵀ)).
N ≤ 64 (``MAX_ROWS``: the (N_PAD, N_PAD) tiles live in registers, 16 warps); fp32 dots in IEEE mode;
fp64 runs under the interpreter.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .host_math import next_pow2

MAX_ROWS = 64
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _cosines(f_ptr, N, D, s_n, s_d, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
             ACC: tl.constexpr):
    """(cos (N_PAD, N_PAD), raw √(Σ F² + 1e-8), n = max(raw, 1e-8) (N_PAD,)); 0 outside N."""
    o_i = tl.arange(0, N_PAD)
    m_i = o_i < N
    gram = tl.zeros((N_PAD, N_PAD), ACC)
    sq = tl.zeros((N_PAD,), ACC)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m = m_i[:, None] & (o_d < D)[None, :]
        f = tl.load(f_ptr + o_i.to(tl.int64)[:, None] * s_n + o_d[None, :] * s_d, mask=m, other=0.).to(ACC)
        gram = tl.dot(f, tl.trans(f), gram, input_precision=PRECISION, out_dtype=ACC)
        sq += tl.sum(f * f, 1)
    raw = tl.sqrt(sq + 1e-8)
    n = tl.maximum(raw, 1e-8)
    cos = tl.where(m_i[:, None] & m_i[None, :], gram / (n[:, None] * n[None, :]), 0.)
    return cos, raw, n


@triton.jit
def _anchor(cos, y, o_i, m_i, p):
    """Anchor p: its cosine row, the (positive a, negative b) pair mask, the raw hinge (a, b) and the
    anchor's pair count."""
    sel = o_i == p
    c_row = tl.sum(tl.where(sel[:, None], cos, 0.), 0)
    y_p = tl.sum(tl.where(sel, y, 0.), 0)
    pos = m_i & (y == y_p) & (o_i != p)
    neg = m_i & (y != y_p)
    pairs = pos[:, None] & neg[None, :]
    hinge = (0.15 * tl.abs(y_p - y))[None, :] - c_row[:, None] + c_row[None, :]
    count = tl.sum(pos.to(tl.int32), 0) * tl.sum(neg.to(tl.int32), 0)
    return sel, pairs, hinge, count


@triton.jit
def margin_loss_fwd_kernel(
    f_ptr, y_ptr, out, N, D, s_n, s_d, s_y,
    N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (1,). out: the loss (one element)."""
    o_i = tl.arange(0, N_PAD)
    m_i = o_i < N
    cos, raw, n = _cosines(f_ptr, N, D, s_n, s_d, N_PAD, BLOCK_D, PRECISION, ACC)
    y = tl.load(y_ptr + o_i * s_y, mask=m_i, other=0.).to(ACC)
    total = tl.zeros((), ACC)
    valid = tl.zeros((), tl.int32)
    for p in range(0, N):
        sel, pairs, hinge, count = _anchor(cos, y, o_i, m_i, p)
        s = tl.sum(tl.sum(tl.where(pairs, tl.maximum(hinge, 0.), 0.), 1), 0)
        total += tl.where(count > 0, s / tl.maximum(count, 1).to(ACC), 0.)
        valid += (count > 0).to(tl.int32)
    tl.store(out, total / tl.maximum(valid, 1).to(ACC))


@triton.jit
def margin_loss_bwd_kernel(
    f_ptr, y_ptr, g_ptr, df_ptr, N, D, s_n, s_d, s_y,
    N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (1,). df (N, D) contiguous: the loss's gradient times g (one element)."""
    o_i = tl.arange(0, N_PAD)
    m_i = o_i < N
    cos, raw, n = _cosines(f_ptr, N, D, s_n, s_d, N_PAD, BLOCK_D, PRECISION, ACC)
    y = tl.load(y_ptr + o_i * s_y, mask=m_i, other=0.).to(ACC)
    valid = tl.zeros((), tl.int32)
    for p in range(0, N):
        sel, pairs, hinge, count = _anchor(cos, y, o_i, m_i, p)
        valid += (count > 0).to(tl.int32)
    g = tl.load(g_ptr).to(ACC) / tl.maximum(valid, 1).to(ACC)
    dcos = tl.zeros((N_PAD, N_PAD), ACC)
    for p in range(0, N):
        sel, pairs, hinge, count = _anchor(cos, y, o_i, m_i, p)
        w = tl.where(count > 0, g / tl.maximum(count, 1).to(ACC), 0.)
        act = tl.where(pairs & (hinge >= 0.), w, 0.)  # clamp_min's gradient passes where hinge >= 0
        row = tl.sum(act, 0) - tl.sum(act, 1)  # + for cos[p, b] (negatives), − for cos[p, a] (positives)
        dcos += tl.where(sel[:, None], row[None, :], 0.)
    # cos = G / (n nᵀ): dG = dcos / (n nᵀ); dn_i = −Σ_j (dcos_ij + dcos_ji) cos_ij / n_i (cos symmetric)
    dcos_t = tl.trans(dcos)
    dgs = (dcos + dcos_t) / (n[:, None] * n[None, :])
    dn = -tl.sum((dcos + dcos_t) * cos, 1) / n
    draw = tl.where(raw >= 1e-8, dn, 0.)  # the clamp of n passes where raw >= 1e-8
    coef = tl.where(m_i, draw / raw, 0.)  # d√(Σf² + 1e-8) / df = f / raw
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        m = m_i[:, None] & (o_d < D)[None, :]
        f = tl.load(f_ptr + o_i.to(tl.int64)[:, None] * s_n + o_d[None, :] * s_d, mask=m, other=0.).to(ACC)
        df = tl.dot(dgs.to(ACC), f, input_precision=PRECISION, out_dtype=ACC) + f * coef[:, None]
        tl.store(df_ptr + o_i.to(tl.int64)[:, None] * D + o_d[None, :], df.to(df_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------


def config(N: int) -> tuple[int, int, int]:
    """(N_PAD, BLOCK_D, num_warps) (benchmarks/compile_check_margin_loss.py)."""
    n_pad = max(16, next_pow2(N))
    if _INTERPRETING:
        return n_pad, 64, 4
    return n_pad, 64, 16 if n_pad >= 64 else 4


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def margin_fwd(feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """feats (N, d) fp32/fp64, y (N,) in feats' dtype → the loss (0-d). One launch."""
    N, D = feats.shape
    out = torch.empty((), dtype=feats.dtype, device=feats.device)
    n_pad, bd, warps = config(N)
    margin_loss_fwd_kernel[(1,)](
        feats, y, out, N, D, feats.stride(0), feats.stride(1), y.stride(0),
        N_PAD=n_pad, BLOCK_D=bd, PRECISION="ieee", ACC=_acc(feats.dtype), num_warps=warps)
    return out


def margin_bwd(feats: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dF (N, d) contiguous for the upstream gradient g (one element). One launch."""
    N, D = feats.shape
    df = torch.empty((N, D), dtype=feats.dtype, device=feats.device)
    n_pad, bd, warps = config(N)
    margin_loss_bwd_kernel[(1,)](
        feats, y, g, df, N, D, feats.stride(0), feats.stride(1), y.stride(0),
        N_PAD=n_pad, BLOCK_D=bd, PRECISION="ieee", ACC=_acc(feats.dtype), num_warps=warps)
    return df
