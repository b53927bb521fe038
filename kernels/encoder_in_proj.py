"""Fused LayerNorm0 + q/k/v in-projection of pre-LN MulT encoder layers in Triton, grouped.

Per problem g (one encoder layer: its own LN0 weight/bias, in_proj_weight W (3E, E), in_proj_bias b):
self-attention h = LN0(x), (q, k, v) = h Wᵀ + b split in thirds; cross-modal q = LN0(x) Wqᵀ + bq and
k, v = LN0(s) Wk,vᵀ + bk,v. Semantics: ``dmd_fast.reference.encoder_in_proj``.

- A problem is split into row *segments*: self-attention is one segment (the rows of x, all three
  thirds); cross-modal is two (the rows of x → q; the rows of s → k, v). Each segment has one int64
  descriptor row (``SEG``, machinery in ``kernels/grouped.py``): its row count N = T·B, the batch B
  (row r is (t, b) = (r // B, r % B) of a (T, B, E) input of any strides), a bit per third it
  computes, its offsets into the group's statistics and scratch buffers, and its tensors.
- Forward, one launch per group: ``encoder_in_proj_fwd_kernel``, grid (row blocks, segments). A
  program normalises BLOCK_M rows once (fp32 statistics, fp64 for fp64) and multiplies them by
  each owned third of W, BLOCK_N output columns at a time. Writes q, k, v contiguous (T, B, E)
  and the rows' (mean, rstd) into one (rows, 2) buffer; nothing else is saved.
- Backward, two launches: ``encoder_in_proj_bwd_kernel`` (grid (row programs, segments); a program
  owns ``steps`` consecutive row blocks) recomputes the normalised rows from the saved statistics,
  writes dx (and ds) and one scratch row of partial sums: [dW (3E·E) | db (3E) | dγ (E) | dβ (E)];
  ``encoder_in_proj_bwd_reduce_kernel`` (grid (column blocks, problems)) sums each problem's
  scratch rows in a fixed order. No atomics: bitwise deterministic. A third whose output gradient
  is None is skipped (its bit is cleared) and its dW/db rows come out 0.
- E up to 128, loaded with masks into an E_PAD = max(16, next_pow2(E)) register tile.
- fp32 dots use ``input_precision="ieee"``; bf16/fp16 inputs dot in their dtype with fp32
  accumulation; fp64 runs under the interpreter.

Launchers are thin: no input validation (``dmd_fast.ops.encoder_in_proj`` validates).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .grouped import SLOT, DescriptorLayout, desc_i32, desc_problem, desc_ptr, descriptor_table
from .host_math import cdiv, next_pow2

# One row per segment. y0, y1, y2: the q, k, v rows it writes (forward) or their gradients (backward).
SEG = DescriptorLayout(scalars=("N", "B", "bits", "row0", "rb0"),
                       tensors=("x", "dx", "y0", "y1", "y2", "ln_w", "ln_b", "w", "bias", "dres"))
C_W, C_N, C_B, C_BITS, C_ROW0, C_RB0 = (SEG.constexpr(n) for n in ("width", "N", "B", "bits", "row0", "rb0"))
C_X, C_DX, C_Y0, C_LN_W, C_LN_B, C_WEIGHT, C_BIAS = (SEG.constexpr(n) for n in ("x", "dx", "y0", "ln_w", "ln_b", "w",
                                                                                "bias"))
C_DRES = SEG.constexpr("dres")
C_SLOT = tl.constexpr(SLOT)
# bits 0-2: the thirds (q, k, v) a segment computes; bit 3 (RESIDUAL): forward, copy the input rows to the
# dx slot (the layer's residual input, so x has one consumer); backward, add the dres slot's rows into dx
RESIDUAL = 8
# One row per problem for the reduction: the scratch rows of its (one or two) segments and their bits.
RED = DescriptorLayout(scalars=("rb_a", "n_a", "bits_a", "rb_b", "n_b", "bits_b", "rb_c", "n_c", "bits_c"),
                       tensors=("dw", "db", "dln_w", "dln_b"))
R_W, R_RB_A, R_DW, R_DB, R_DLN_W, R_DLN_B = (RED.constexpr(n) for n in ("width", "rb_a", "dw", "db", "dln_w",
                                                                        "dln_b"))


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def ln_rows(desc, like, stats, m0, N, eps, s_xe, E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
            SAVED: tl.constexpr, ACC: tl.constexpr):
    """Rows [m0, m0 + BLOCK_M) of the segment's input, normalised. SAVED: mean/rstd from ``stats``,
    else computed (and the rows copied to the dx slot when the segment's RESIDUAL bit is set).
    Returns x̂ (BLOCK_M, E_PAD) ACC (0 outside the rows and E), h = x̂·γ + β in the
    input dtype (0 outside E), mean, rstd (BLOCK_M,), rows o_m and their mask."""
    o_m, o_e = m0 + tl.arange(0, BLOCK_M), tl.arange(0, E_PAD)
    m_m, m_e = o_m < N, o_e < E
    m_me = m_m[:, None] & m_e[None, :]
    B = desc_i32(desc, C_B)
    p_x = desc_ptr(desc, C_X, like)
    s_xt, s_xb = tl.load(desc + C_X + 1), tl.load(desc + C_X + 2)
    o_row = (o_m // B).to(tl.int64) * s_xt + (o_m % B).to(tl.int64) * s_xb
    # (BLOCK_M, E_PAD)
    b_x = tl.load(p_x + o_row[:, None] + o_e[None, :] * s_xe, mask=m_me, other=0.).to(ACC)
    p_st = stats + (desc_i32(desc, C_ROW0) + o_m).to(tl.int64) * 2
    if SAVED:
        b_mean = tl.load(p_st, mask=m_m, other=0.).to(ACC)
        b_rstd = tl.load(p_st + 1, mask=m_m, other=0.).to(ACC)
    else:
        b_mean = tl.sum(b_x, 1) / E
        b_xc = tl.where(m_e[None, :], b_x - b_mean[:, None], 0.)
        b_rstd = 1. / tl.sqrt(tl.sum(b_xc * b_xc, 1) / E + eps)
        tl.store(p_st, b_mean.to(stats.dtype.element_ty), mask=m_m)
        tl.store(p_st + 1, b_rstd.to(stats.dtype.element_ty), mask=m_m)
        if ((desc_i32(desc, C_BITS) >> 3) & 1) != 0:
            p_copy = desc_ptr(desc, C_DX, like) + o_m.to(tl.int64)[:, None] * E + o_e[None, :]
            tl.store(p_copy, b_x.to(like.dtype.element_ty), mask=m_me)
    b_xhat = tl.where(m_me, (b_x - b_mean[:, None]) * b_rstd[:, None], 0.)
    b_g = tl.load(desc_ptr(desc, C_LN_W, like) + o_e, mask=m_e, other=0.).to(ACC)
    b_b = tl.load(desc_ptr(desc, C_LN_B, like) + o_e, mask=m_e, other=0.).to(ACC)
    b_h = (b_xhat * b_g[None, :] + b_b[None, :]).to(like.dtype.element_ty)
    return b_xhat, b_h, b_g, b_rstd, o_m, m_m


@triton.jit
def encoder_in_proj_fwd_kernel(
    desc, like, stats, eps, s_xe,
    E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(max N, BLOCK_M), segments). Writes the segment's owned thirds of q, k, v rows
    (contiguous (T, B, E)) and (mean, rstd) per row into ``stats`` (rows, 2)."""
    i_m = tl.program_id(0)
    desc = desc_problem(desc, tl.program_id(1), C_W)
    N = desc_i32(desc, C_N)
    m0 = i_m * BLOCK_M
    if m0 >= N:
        return
    bits = desc_i32(desc, C_BITS)
    _, b_h, _, _, o_m, m_m = ln_rows(desc, like, stats, m0, N, eps, s_xe, E, E_PAD, BLOCK_M, False, ACC)
    o_e, o_j = tl.arange(0, E_PAD), tl.arange(0, BLOCK_N)
    m_e = o_e < E
    p_w = desc_ptr(desc, C_WEIGHT, like)
    p_bias = desc_ptr(desc, C_BIAS, like)
    o_rows = o_m.to(tl.int64)[:, None] * E
    for j in tl.static_range(3):
        if ((bits >> j) & 1) != 0:
            p_y = desc_ptr(desc, C_Y0 + j * C_SLOT, like)
            for n0 in range(0, E, BLOCK_N):
                o_n = n0 + o_j
                m_n = o_n < E
                # (E_PAD, BLOCK_N): Wᵀ[i, n] = W[j·E + n, i]
                b_wT = tl.load(p_w + (j * E + o_n)[None, :] * E + o_e[:, None], mask=m_e[:, None] & m_n[None, :],
                               other=0.)
                # (BLOCK_M, BLOCK_N)
                b_y = tl.dot(b_h, b_wT, input_precision=PRECISION, out_dtype=ACC)
                b_y += tl.load(p_bias + j * E + o_n, mask=m_n, other=0.).to(ACC)[None, :]
                tl.store(p_y + o_rows + o_n[None, :], b_y.to(like.dtype.element_ty),
                         mask=m_m[:, None] & m_n[None, :])


@triton.jit(do_not_specialize=["steps"])
def encoder_in_proj_bwd_kernel(
    desc, like, stats, scratch, s_xe, steps,
    E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(max N, steps · BLOCK_M), segments). A program owns rows [r_lo, r_lo + steps·BLOCK_M):
    writes their dx (contiguous (T, B, E)) and its scratch row rb0 + program: partial dW, db, dγ, dβ."""
    i_p = tl.program_id(0)
    desc = desc_problem(desc, tl.program_id(1), C_W)
    N = desc_i32(desc, C_N)
    r_lo = i_p * steps * BLOCK_M
    if r_lo >= N:
        return
    r_hi = tl.minimum(N, r_lo + steps * BLOCK_M)
    bits = desc_i32(desc, C_BITS)
    o_e, o_j = tl.arange(0, E_PAD), tl.arange(0, BLOCK_N)
    m_e = o_e < E
    p_w = desc_ptr(desc, C_WEIGHT, like)
    p_dx = desc_ptr(desc, C_DX, like)
    EE: tl.constexpr = E * E
    p_part = scratch + (desc_i32(desc, C_RB0) + i_p).to(tl.int64) * (3 * EE + 5 * E)

    # phase 1: dh = Σ_j dY_j W_j per row block → dx; dγ, dβ accumulated over the program's rows
    b_dg = tl.zeros((E_PAD,), dtype=ACC)
    b_db = tl.zeros((E_PAD,), dtype=ACC)
    for m0 in range(r_lo, r_hi, BLOCK_M):
        b_xhat, _, b_g, b_rstd, o_m, m_m = ln_rows(desc, like, stats, m0, N, 0., s_xe, E, E_PAD, BLOCK_M, True,
                                                   ACC)
        o_rows = o_m.to(tl.int64)[:, None] * E
        # (BLOCK_M, E_PAD)
        b_dh = tl.zeros((BLOCK_M, E_PAD), dtype=ACC)
        for j in tl.static_range(3):
            if ((bits >> j) & 1) != 0:
                p_dy = desc_ptr(desc, C_Y0 + j * C_SLOT, like)
                for n0 in range(0, E, BLOCK_N):
                    o_n = n0 + o_j
                    m_n = o_n < E
                    # (BLOCK_M, BLOCK_N), (BLOCK_N, E_PAD)
                    b_dy = tl.load(p_dy + o_rows + o_n[None, :], mask=m_m[:, None] & m_n[None, :], other=0.)
                    b_w = tl.load(p_w + (j * E + o_n)[:, None] * E + o_e[None, :], mask=m_n[:, None] & m_e[None, :],
                                  other=0.)
                    b_dh = tl.dot(b_dy, b_w, b_dh, input_precision=PRECISION, out_dtype=ACC)
        b_dg += tl.sum(b_dh * b_xhat, 0)
        b_db += tl.sum(b_dh, 0)
        # dx = rstd · (g − mean(g) − x̂ · mean(g x̂)), g = dh · γ
        b_gh = b_dh * b_g[None, :]
        b_c1 = tl.sum(b_gh * b_xhat, 1) / E
        b_c2 = tl.sum(b_gh, 1) / E
        b_dx = (b_gh - b_c2[:, None] - b_xhat * b_c1[:, None]) * b_rstd[:, None]
        if ((bits >> 3) & 1) != 0:
            b_dx += tl.load(desc_ptr(desc, C_DRES, like) + o_rows + o_e[None, :], mask=m_m[:, None] & m_e[None, :],
                            other=0.).to(ACC)
        tl.store(p_dx + o_rows + o_e[None, :], b_dx.to(like.dtype.element_ty), mask=m_m[:, None] & m_e[None, :])
    tl.store(p_part + 3 * EE + 3 * E + o_e, b_dg, mask=m_e)
    tl.store(p_part + 3 * EE + 4 * E + o_e, b_db, mask=m_e)

    # phase 2: per owned third and column block, dW_j = Σ_rows dY_jᵀ h and db_j = Σ_rows dY_j
    for j in tl.static_range(3):
        if ((bits >> j) & 1) != 0:
            p_dy = desc_ptr(desc, C_Y0 + j * C_SLOT, like)
            for n0 in range(0, E, BLOCK_N):
                o_n = n0 + o_j
                m_n = o_n < E
                # (BLOCK_N, E_PAD), (BLOCK_N,)
                b_dw = tl.zeros((BLOCK_N, E_PAD), dtype=ACC)
                b_dbias = tl.zeros((BLOCK_N,), dtype=ACC)
                for m0 in range(r_lo, r_hi, BLOCK_M):
                    _, b_h, _, _, o_m, m_m = ln_rows(desc, like, stats, m0, N, 0., s_xe, E, E_PAD, BLOCK_M, True,
                                                     ACC)
                    b_dy = tl.load(p_dy + o_m.to(tl.int64)[:, None] * E + o_n[None, :],
                                   mask=m_m[:, None] & m_n[None, :], other=0.)
                    b_dw = tl.dot(tl.trans(b_dy), b_h, b_dw, input_precision=PRECISION, out_dtype=ACC)
                    b_dbias += tl.sum(b_dy.to(ACC), 0)
                tl.store(p_part + (j * E + o_n)[:, None] * E + o_e[None, :], b_dw, mask=m_n[:, None] & m_e[None, :])
                tl.store(p_part + 3 * EE + j * E + o_n, b_dbias, mask=m_n)


@triton.jit
def encoder_in_proj_bwd_reduce_kernel(
    pdesc, like, scratch,
    E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(3E² + 5E, BLOCK_C), problems). Sums the problem's scratch rows (segment a's, then
    b's, in row order) over columns [c0, c0 + BLOCK_C) and writes dW (3E, E), db (3E,), dγ, dβ (E,)."""
    i_c = tl.program_id(0)
    pdesc = desc_problem(pdesc, tl.program_id(1), R_W)
    EE: tl.constexpr = E * E
    C: tl.constexpr = 3 * EE + 5 * E
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    # third of each column (3: the LayerNorm columns, written by every segment)
    o_third = tl.where(o_c < 3 * EE, o_c // EE, tl.where(o_c < 3 * EE + 3 * E, (o_c - 3 * EE) // E, 3))
    o_r = tl.arange(0, BLOCK_R)
    # (BLOCK_R, BLOCK_C)
    b_acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    for seg in tl.static_range(3):
        rb = desc_i32(pdesc, R_RB_A + 3 * seg)
        n = desc_i32(pdesc, R_RB_A + 3 * seg + 1)
        bits = desc_i32(pdesc, R_RB_A + 3 * seg + 2)
        m_use = m_c & ((o_third == 3) | (((bits >> o_third) & 1) != 0))
        for r0 in range(rb, rb + n, BLOCK_R):
            m_r = r0 + o_r < rb + n
            b_acc += tl.load(scratch + (r0 + o_r).to(tl.int64)[:, None] * C + o_c[None, :],
                             mask=m_r[:, None] & m_use[None, :], other=0.)
    # (BLOCK_C,)
    b_sum = tl.sum(b_acc, 0).to(like.dtype.element_ty)
    tl.store(desc_ptr(pdesc, R_DW, like) + o_c, b_sum, mask=o_c < 3 * EE)
    m_db = (o_c >= 3 * EE) & (o_c < 3 * EE + 3 * E)
    tl.store(desc_ptr(pdesc, R_DB, like) + (o_c - 3 * EE), b_sum, mask=m_db)
    m_dg = (o_c >= 3 * EE + 3 * E) & (o_c < 3 * EE + 4 * E)
    tl.store(desc_ptr(pdesc, R_DLN_W, like) + (o_c - 3 * EE - 3 * E), b_sum, mask=m_dg)
    m_dbeta = (o_c >= 3 * EE + 4 * E) & m_c
    tl.store(desc_ptr(pdesc, R_DLN_B, like) + (o_c - 3 * EE - 4 * E), b_sum, mask=m_dbeta)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _empty(shape, dtype, device) -> torch.Tensor:
    """Output allocation; tests patch this to poison outputs."""
    return torch.empty(shape, dtype=dtype, device=device)


# Triton decides at decoration (import) time whether the kernels run in the interpreter.
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def e_pad(E: int) -> int:
    """Register tile width for an embed dim: max(16, next power of two)."""
    return max(16, next_pow2(E))


# (BLOCK_M, BLOCK_N, num_warps) per (kernel role, dtype class) and E_PAD, chosen offline with
# benchmarks/compile_check_encoder_in_proj.py (no spills on sm_90); no runtime autotune.
_GPU_BLOCKS = {
    ("fwd", "fp32"): {16: (64, 16, 4), 32: (64, 32, 4), 64: (32, 32, 4), 128: (32, 32, 4)},
    ("fwd", "16"): {16: (64, 16, 4), 32: (64, 32, 4), 64: (64, 32, 4), 128: (32, 32, 4)},
    ("bwd", "fp32"): {16: (64, 16, 4), 32: (32, 32, 4), 64: (32, 16, 8), 128: (16, 16, 8)},
    ("bwd", "16"): {16: (64, 16, 4), 32: (64, 32, 8), 64: (32, 16, 4), 128: (16, 16, 4)},
}
_REDUCE_BLOCKS = (16, 256, 4)  # BLOCK_R, BLOCK_C, num_warps
_INTERP_BLOCK_M = 64
_INTERP_REDUCE = (16, 4096, 4)
MAX_ROW_PROGRAMS = 64  # backward: row programs per segment at most (each owns `steps` row blocks)


@functools.lru_cache(maxsize=64)
def block_config(role: str, E: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the "fwd" or "bwd" kernel; one output block per third under
    the interpreter (BLOCK_N = E_PAD)."""
    if _INTERPRETING:
        return _INTERP_BLOCK_M, e_pad(E), 4
    cls = "16" if dtype in (torch.float16, torch.bfloat16) else "fp32"
    return _GPU_BLOCKS[(role, cls)][e_pad(E)]


def reduce_config() -> tuple[int, int, int]:
    return _INTERP_REDUCE if _INTERPRETING else _REDUCE_BLOCKS


def acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _last_stride(ts) -> tuple[list, int]:
    """The inputs with one shared last-dim stride (odd ones copied, rarely), and that stride."""
    if len({t.stride(2) for t in ts}) > 1:
        ts = [t if t.stride(2) == 1 else t.contiguous() for t in ts]
    return list(ts), ts[0].stride(2)


def _segments(xs, sources):
    """(problem, input, bits) per segment: self-attention one (x, q|k|v); cross-modal two (x, q), (s, k|v),
    or three (x, q), (s_k, k), (s_v, v) when the source entry is a pair (s_k, s_v)."""
    segs = []
    for g, (x, s) in enumerate(zip(xs, sources)):
        if s is None:
            segs.append((g, x, 0b111))
        elif isinstance(s, tuple):
            segs += [(g, x, 0b001), (g, s[0], 0b010), (g, s[1], 0b100)]
        else:
            segs += [(g, x, 0b001), (g, s, 0b110)]
    return segs


def _kv_sources(xs, sources) -> tuple[list, list]:
    """The tensors k and v are projected from, per problem."""
    ks = [x if s is None else s[0] if isinstance(s, tuple) else s for x, s in zip(xs, sources)]
    vs = [x if s is None else s[1] if isinstance(s, tuple) else s for x, s in zip(xs, sources)]
    return ks, vs


def in_proj_fwd_grouped(xs, sources, ln_ws, ln_bs, ws, bs, *, eps=1e-5, copy_x=False, copy_sources=False,
                        block_m=None, block_n=None):
    """One launch for G problems of one E (own T, B, tensors). xs (Tq, B, E), sources None, (Tk, B, E) or a
    pair (k source, v source) of them, any strides; ln_ws, ln_bs (E,); ws (3E, E); bs (3E,). Returns lists qs (Tq, B, E),
    ks, vs ((Tk or Tq), B, E), contiguous, and stats (rows, 2) fp32 (fp64 for fp64): per segment
    row, mean and rstd (for :func:`in_proj_bwd_grouped`), then the copies written by the same launch
    (contiguous): of xs with ``copy_x`` and of the sources with ``copy_sources`` (flat, in source order),
    empty lists otherwise."""
    E = xs[0].shape[2]
    dtype, device = xs[0].dtype, xs[0].device
    qs = [_empty(x.shape, dtype, device) for x in xs]
    k_in, v_in = _kv_sources(xs, sources)
    ks = [_empty(t.shape, dtype, device) for t in k_in]
    vs = [_empty(t.shape, dtype, device) for t in v_in]
    segs = _segments(xs, sources)
    ins, s_xe = _last_stride([t for _, t, _ in segs])
    ws = [w.contiguous() for w in ws]
    copies, src_copies = [], []
    rows, row0, first = [], 0, set()
    for (g, _, bits), t in zip(segs, ins):
        N = t.shape[0] * t.shape[1]
        ys = (qs[g] if bits & 1 else None, ks[g] if bits & 2 else None, vs[g] if bits & 4 else None)
        is_x = g not in first  # a problem's first segment reads x, the others its sources
        first.add(g)
        copy = _empty(t.shape, dtype, device) if (copy_x if is_x else copy_sources) else None
        if copy is not None:
            (copies if is_x else src_copies).append(copy)
        bits |= RESIDUAL if copy is not None else 0
        rows.append(SEG.pack((N, t.shape[1], bits, row0, 0), (t, copy, *ys, ln_ws[g], ln_bs[g], ws[g], bs[g])))
        row0 += N
    stats = _empty((row0, 2), stats_dtype(dtype), device)
    max_n = max(r[C_N.value] for r in rows)
    if max_n == 0 or E == 0:
        return qs, ks, vs, stats, copies, src_copies
    desc = descriptor_table(rows, device, "grouped encoder in-projection")
    bm, bn, warps = block_config("fwd", E, dtype)
    bm, bn = block_m or bm, block_n or bn
    encoder_in_proj_fwd_kernel[(cdiv(max_n, bm), len(rows))](
        desc, xs[0], stats, float(eps), s_xe,
        E=E, E_PAD=e_pad(E), BLOCK_M=bm, BLOCK_N=bn, PRECISION="ieee", ACC=acc_dtype(dtype), num_warps=warps)
    return qs, ks, vs, stats, copies, src_copies


def in_proj_bwd_grouped(dqs, dks, dvs, xs, sources, ln_ws, ln_bs, ws, stats, *, dres=None, dres_src=None,
                        block_m=None, block_n=None, steps=None):
    """Backward of :func:`in_proj_fwd_grouped` in 2 launches; dqs, dks, dvs: G entries each, None for
    a zero gradient; ``dres`` / ``dres_src``: None, or the gradients of the copies of xs (G) / of the
    sources (flat, in source order), None entries zero, added into dx / ds.
    Returns lists dxs, dss (None for self-attention problems, a pair for a pair of sources), and the
    parameters' gradients stacked over the group: dln_w (G, E), dln_b (G, E), dW (G, 3E, E), db (G, 3E)."""
    G, E = len(xs), xs[0].shape[2]
    dtype, device = xs[0].dtype, xs[0].device
    dxs = [_empty(x.shape, dtype, device) for x in xs]
    dss = [None if s is None else tuple(_empty(t.shape, dtype, device) for t in s) if isinstance(s, tuple)
           else _empty(s.shape, dtype, device) for s in sources]
    # the parameters' gradients of all problems: one (G, ...) tensor per kind (returned as such)
    dln_w_all, dln_b_all, dw_all, db_all = (_empty((G, *s), dtype, device) for s in ((E,), (E,), (3 * E, E), (3 * E,)))
    dln_ws, dln_bs, dws, dbs = (t.unbind(0) for t in (dln_w_all, dln_b_all, dw_all, db_all))
    segs = _segments(xs, sources)
    ins, s_xe = _last_stride([t for _, t, _ in segs])
    ws = [w.contiguous() for w in ws]
    max_n = max(t.shape[0] * t.shape[1] for t in ins)
    bm, bn, warps = block_config("bwd", E, dtype)
    bm, bn = block_m or bm, block_n or bn
    steps = steps or max(1, cdiv(cdiv(max_n, bm), MAX_ROW_PROGRAMS))
    rows_per_prog = steps * bm
    rows, row0, rb0 = [], 0, 0
    red = [[0] * len(RED.scalars) for _ in range(G)]  # (rb, n, bits) of up to three segments per problem
    n_seg = [0] * G
    src_grads = iter(dres_src or ())
    for (g, _, bits), t in zip(segs, ins):
        N = t.shape[0] * t.shape[1]
        dys = [d.contiguous() if d is not None and bits >> j & 1 else None
               for j, d in enumerate((dqs[g], dks[g], dvs[g]))]
        bits = sum(1 << j for j, d in enumerate(dys) if d is not None)
        dx = dxs[g] if n_seg[g] == 0 else dss[g][n_seg[g] - 1] if isinstance(dss[g], tuple) else dss[g]
        d_res = (dres[g] if dres is not None else None) if n_seg[g] == 0 else next(src_grads, None)
        d_res = None if d_res is None else d_res.contiguous()
        seg_bits = bits | (RESIDUAL if d_res is not None else 0)
        rows.append(SEG.pack((N, t.shape[1], seg_bits, row0, rb0), (t, dx, *dys, ln_ws[g], ln_bs[g], ws[g], None,
                                                                        d_res)))
        n_rb = cdiv(N, rows_per_prog)
        red[g][3 * n_seg[g] : 3 * n_seg[g] + 3] = (rb0, n_rb, bits)
        n_seg[g] += 1
        row0 += N
        rb0 += n_rb
    red = [RED.pack(sc, (dw, db, dg, dbeta)) for sc, dw, db, dg, dbeta in zip(red, dws, dbs, dln_ws, dln_bs)]
    acc = acc_dtype(dtype)
    scratch = _empty((rb0, 3 * E * E + 5 * E), stats.dtype, device)
    if max_n:
        desc = descriptor_table(rows, device, "grouped encoder in-projection backward")
        encoder_in_proj_bwd_kernel[(cdiv(max_n, rows_per_prog), len(rows))](
            desc, xs[0], stats, scratch, s_xe, steps,
            E=E, E_PAD=e_pad(E), BLOCK_M=bm, BLOCK_N=bn, PRECISION="ieee", ACC=acc, num_warps=warps)
    br, bc, rwarps = reduce_config()
    pdesc = descriptor_table(red, device, "grouped encoder in-projection reduction")
    encoder_in_proj_bwd_reduce_kernel[(cdiv(3 * E * E + 5 * E, bc), G)](
        pdesc, xs[0], scratch, E=E, BLOCK_R=br, BLOCK_C=bc, ACC=acc, num_warps=rwarps)
    return dxs, dss, dln_w_all, dln_b_all, dw_all, db_all
