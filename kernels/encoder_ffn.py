"""Fused post-attention block of pre-LN MulT encoder layers in Triton, grouped.

Per problem g (one encoder layer, E its width, F = 4E), rows r = (t, b) of (T, B, E) tensors:
    x1 = x + D_res1(o Woᵀ + bo);  y = x1 + D_res2(D_relu(relu(LN1(x1) W1ᵀ + b1)) W2ᵀ + b2);  out = LNf(y) if FINAL
(``dmd_fast.reference.encoder_ffn``). Dropout (DROPOUT, p per problem in the descriptor row): three Philox
streams per problem (``kernels/encoder_ffn_dropout.py``), regenerated in the backward, never stored;
``ffn_dropout_masks`` materialises them. With DROPOUT the backward's workspace also keeps dy (the
residual's gradient) next to dz = D_res2(dy) (fc2's).

- Forward, one launch per group: ``encoder_ffn_fwd_kernel``, grid (row blocks, problems). A program
  takes BLOCK_M rows through the out-projection, the residual, LN1, then the hidden BLOCK_F columns
  at a time (fc1, ReLU, fc2 accumulated): the (rows, 4E) hidden never reaches memory. Saves per row
  (mean1, rstd1, meanf, rstdf) and, with FINAL, the pre-LN output y.
- Backward, two launches: ``encoder_ffn_bwd_kernel`` (grid (row programs, problems); a program owns
  consecutive row blocks) recomputes x1, LN1 and the hidden: phase 0 keeps dz (the gradient reaching
  fc2 and the residual, through LNf) in a workspace; phase 1 (row-major) writes dx = dx1 and do = dx1 Wo
  and keeps h = LN1(x1) there too; phase 2 sums this program's partial dWo (Wo-column-major) and dW1,
  db1, dW2 (hidden-chunk-major); they and the vector gradients go to the program's scratch row.
  ``encoder_ffn_reduce_kernel`` (grid (column blocks, problems)) sums each problem's scratch rows in a fixed order. No atomics: bitwise deterministic.
- E up to 128 in an E_PAD = max(16, next_pow2(E)) register tile; fp32 dots ``input_precision="ieee"``,
  16-bit inputs dot in their dtype with fp32 accumulation and statistics; fp64 under the interpreter.

Launchers are thin: no input validation (``dmd_fast.ops.encoder_ffn`` validates).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .encoder_ffn_dropout import (
    RELU,
    RES1,
    RES2,
    drop_threshold,
    f64_bits,
    ffn_drop,
    ffn_dropout_masks,
    ffn_keep,
    keep_scale,
)
from .grouped import DescriptorLayout, desc_i32, desc_problem, desc_ptr, descriptor_table
from .host_math import cdiv, next_pow2

PROB = DescriptorLayout(
    scalars=("N", "B", "row0", "rb0", "n_rb", "drop_res", "drop_relu", "scale_res", "scale_relu"),
    tensors=("x", "o", "out", "pre", "w_o", "b_o", "ln1_w", "ln1_b", "w_1", "b_1", "w_2", "b_2", "lnf_w", "lnf_b",
             "dout", "dx", "do", "grad"))
C_W, C_N, C_B, C_ROW0, C_RB0, C_NRB = (PROB.constexpr(n) for n in ("width", "N", "B", "row0", "rb0", "n_rb"))
C_DROP_RES, C_DROP_RELU, C_SC_RES, C_SC_RELU = (PROB.constexpr(n) for n in PROB.scalars[5:])
(C_X, C_O, C_OUT, C_PRE, C_WO, C_BO, C_G1, C_BE1, C_W1, C_B1, C_W2, C_B2, C_GF, C_BEF, C_DOUT, C_DX, C_DO,
 C_GRAD) = (PROB.constexpr(n) for n in PROB.tensors)


__all__ = ["ffn_bwd_grouped", "ffn_dropout_masks", "ffn_fwd_grouped", "grad_columns", "grad_width"]


def grad_columns(E: int) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Column offset and shape of each parameter gradient in a scratch / gradient row."""
    F = 4 * E
    cols, c = {}, 0
    for name, shape in (("w_o", (E, E)), ("w_1", (F, E)), ("w_2", (E, F)), ("b_o", (E,)), ("ln1_w", (E,)),
                        ("ln1_b", (E,)), ("b_1", (F,)), ("b_2", (E,)), ("lnf_w", (E,)), ("lnf_b", (E,))):
        cols[name] = (c, shape)
        c += shape[0] * (shape[1] if len(shape) > 1 else 1)
    return cols


def grad_width(E: int) -> int:
    return 9 * E * E + 10 * E


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------

@triton.jit
def _row_offsets(desc, COL: tl.constexpr, o_m, B):
    """Element offsets of rows o_m = (t, b) of the (T, B, E) tensor at slot COL (last-dim stride 1)."""
    s_t, s_b = tl.load(desc + COL + 1), tl.load(desc + COL + 2)
    return (o_m // B).to(tl.int64) * s_t + (o_m % B).to(tl.int64) * s_b


@triton.jit
def _vec(desc, COL: tl.constexpr, like, o_e, m_e, ACC: tl.constexpr):
    return tl.load(desc_ptr(desc, COL, like) + o_e, mask=m_e, other=0.).to(ACC)


@triton.jit
def _x1_rows(desc, like, o_m, m_m, o_e, m_e, B, E: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
             ACC: tl.constexpr, DROPOUT: tl.constexpr, dr):
    """x1 = x + D_res1(o Woᵀ + bo) for rows o_m: (BLOCK_M, E_PAD) in ACC (0 outside); Wo read BLOCK_K columns at
    a time. dr: ``_dropout_args``."""
    m_me = m_m[:, None] & m_e[None, :]
    p_o = desc_ptr(desc, C_O, like) + _row_offsets(desc, C_O, o_m, B)[:, None]
    b_y = tl.zeros((o_m.shape[0], o_e.shape[0]), dtype=ACC)
    b_y = _rows_dot(b_y, p_o, m_m, desc_ptr(desc, C_WO, like), 1, E, o_e, m_e, like, E, BLOCK_K, PRECISION, ACC)
    b_y += _vec(desc, C_BO, like, o_e, m_e, ACC)[None, :]
    b_y = ffn_drop(b_y, DROPOUT, dr[0], dr[1], RES1, o_m, 0, o_e.shape[0], dr[2], dr[4])
    b_x = tl.load(desc_ptr(desc, C_X, like) + _row_offsets(desc, C_X, o_m, B)[:, None] + o_e[None, :], mask=m_me,
                  other=0.).to(ACC)
    return tl.where(m_me, b_x + b_y, 0.)


@triton.jit
def _rows_dot(acc, p_rows, m_m, p_w, s_wk, s_wn, o_n, m_n, like, K: tl.constexpr, BLOCK_K: tl.constexpr,
              PRECISION: tl.constexpr, ACC: tl.constexpr):
    """acc + A W with A's rows (BLOCK_M, K) read from memory BLOCK_K columns at a time (``p_rows``: row
    pointers (BLOCK_M, 1)) and W[k, n] at p_w + k·s_wk + n·s_wn: no K-wide register operand."""
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_a = tl.load(p_rows + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.).to(like.dtype.element_ty)
        b_w = tl.load(p_w + o_k[:, None] * s_wk + o_n[None, :] * s_wn, mask=m_k[:, None] & m_n[None, :], other=0.)
        acc = tl.dot(b_a, b_w, acc, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _dropout_args(desc, seed_ptr, DROPOUT: tl.constexpr, ACC: tl.constexpr):
    """(seed, rng, res threshold, relu threshold, res scale, relu scale) of this problem (dummies without DROPOUT)."""
    if DROPOUT:
        seed = tl.load(seed_ptr)
        rng = tl.load(seed_ptr + 1) + tl.program_id(1)
        t_res = tl.load(desc + C_DROP_RES).to(tl.uint32)
        t_relu = tl.load(desc + C_DROP_RELU).to(tl.uint32)
        s_res = tl.load(desc + C_SC_RES).to(tl.float64, bitcast=True).to(ACC)
        s_relu = tl.load(desc + C_SC_RELU).to(tl.float64, bitcast=True).to(ACC)
        return seed, rng, t_res, t_relu, s_res, s_relu
    else:
        return 0, 0, 0, 0, 1., 1.


@triton.jit
def _kept(b_v, DROPOUT: tl.constexpr, keep, row0, o_m, m_m, o_f, m_f, F: tl.constexpr, scale):
    """b_v (BLOCK_M, BLOCK_F), hidden columns o_f of rows o_m, with the ReLU dropout read from ``keep``."""
    if DROPOUT:
        b_k = tl.load(keep + (row0 + o_m).to(tl.int64)[:, None] * F + o_f[None, :], mask=m_m[:, None] & m_f[None, :],
                      other=0)
        b_v = tl.where(b_k != 0, b_v * scale, 0.)
    return b_v


@triton.jit
def _hidden(b_h, p_w1, p_b1, f0, o_e, m_e, E: tl.constexpr, F: tl.constexpr, BLOCK_F: tl.constexpr,
            PRECISION: tl.constexpr, ACC: tl.constexpr):
    """Hidden columns [f0, f0 + BLOCK_F): pre-activation u = h W1ᵀ + b1 (BLOCK_M, BLOCK_F) in ACC."""
    o_f = f0 + tl.arange(0, BLOCK_F)
    m_f = o_f < F
    # (E_PAD, BLOCK_F): W1ᵀ[k, j] = W1[f0 + j, k]
    b_w1T = tl.load(p_w1 + o_f[None, :] * E + o_e[:, None], mask=m_e[:, None] & m_f[None, :], other=0.)
    b_u = tl.dot(b_h, b_w1T, input_precision=PRECISION, out_dtype=ACC)
    return b_u + tl.load(p_b1 + o_f, mask=m_f, other=0.).to(ACC)[None, :], o_f, m_f


@triton.jit
def _hidden_rows(p_h_rows, m_m, p_w1, p_b1, f0, like, E: tl.constexpr, F: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """:func:`_hidden` with h's rows read from memory (``p_h_rows`` (BLOCK_M, 1)) BLOCK_K columns at a time."""
    o_f = f0 + tl.arange(0, BLOCK_F)
    m_f = o_f < F
    b_u = _rows_dot(tl.zeros((BLOCK_M, BLOCK_F), dtype=ACC), p_h_rows, m_m, p_w1, 1, E, o_f, m_f, like, E, BLOCK_K,
                    PRECISION, ACC)
    return b_u + tl.load(p_b1 + o_f, mask=m_f, other=0.).to(ACC)[None, :], o_f, m_f


@triton.jit
def _layer_norm(b_v, m_me, eps, E: tl.constexpr):
    """Row mean, rstd and v̂ (0 outside) of (BLOCK_M, E_PAD) rows (biased variance)."""
    b_mean = tl.sum(b_v, 1) / E
    b_c = tl.where(m_me, b_v - b_mean[:, None], 0.)
    b_rstd = 1. / tl.sqrt(tl.sum(b_c * b_c, 1) / E + eps)
    return b_mean, b_rstd, b_c * b_rstd[:, None]


@triton.jit
def _ln_backward(b_dv, b_hat, b_rstd, b_g, E: tl.constexpr):
    """d input of a LayerNorm from d output b_dv, x̂, rstd and γ (rows (BLOCK_M, E_PAD), 0 outside)."""
    b_gh = b_dv * b_g[None, :]
    b_c1 = tl.sum(b_gh * b_hat, 1) / E
    b_c2 = tl.sum(b_gh, 1) / E
    return (b_gh - b_c2[:, None] - b_hat * b_c1[:, None]) * b_rstd[:, None]


@triton.jit
def encoder_ffn_fwd_kernel(
    desc, like, stats, seed_ptr, eps,
    E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    FINAL: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, DROPOUT: tl.constexpr, OUT_ROW: tl.constexpr,
):
    """Grid (cdiv(max N, BLOCK_M), G). Writes out ((T, B, E) rows of stride OUT_ROW: E, or 2E), stats (rows, 4) and, FINAL, pre."""
    F: tl.constexpr = 4 * E
    desc = desc_problem(desc, tl.program_id(1), C_W)
    N = desc_i32(desc, C_N)
    m0 = tl.program_id(0) * BLOCK_M
    if m0 >= N:
        return
    B = desc_i32(desc, C_B)
    o_m, o_e = m0 + tl.arange(0, BLOCK_M), tl.arange(0, E_PAD)
    m_m, m_e = o_m < N, o_e < E
    m_me = m_m[:, None] & m_e[None, :]
    dr = _dropout_args(desc, seed_ptr, DROPOUT, ACC)
    b_x1 = _x1_rows(desc, like, o_m, m_m, o_e, m_e, B, E, BLOCK_K, PRECISION, ACC, DROPOUT, dr)
    b_mean, b_rstd, b_hat = _layer_norm(b_x1, m_me, eps, E)
    b_h = (b_hat * _vec(desc, C_G1, like, o_e, m_e, ACC)[None, :]
           + _vec(desc, C_BE1, like, o_e, m_e, ACC)[None, :]).to(like.dtype.element_ty)
    p_w1, p_b1, p_w2 = desc_ptr(desc, C_W1, like), desc_ptr(desc, C_B1, like), desc_ptr(desc, C_W2, like)
    b_z = tl.zeros((BLOCK_M, E_PAD), dtype=ACC)
    for f0 in range(0, F, BLOCK_F):
        b_u, o_f, m_f = _hidden(b_h, p_w1, p_b1, f0, o_e, m_e, E, F, BLOCK_F, PRECISION, ACC)
        b_a = ffn_drop(tl.maximum(b_u, 0.), DROPOUT, dr[0], dr[1], RELU, o_m, f0, BLOCK_F, dr[3], dr[5])
        b_a = b_a.to(like.dtype.element_ty)
        # (BLOCK_F, E_PAD): W2ᵀ[j, n] = W2[n, f0 + j]
        b_w2T = tl.load(p_w2 + o_e[None, :] * F + o_f[:, None], mask=m_f[:, None] & m_e[None, :], other=0.)
        b_z = tl.dot(b_a, b_w2T, b_z, input_precision=PRECISION, out_dtype=ACC)
    b_z = ffn_drop(b_z + _vec(desc, C_B2, like, o_e, m_e, ACC)[None, :], DROPOUT, dr[0], dr[1], RES2, o_m, 0, E_PAD,
                   dr[2], dr[4])
    b_y = b_x1 + b_z
    p_st = stats + (desc_i32(desc, C_ROW0) + o_m).to(tl.int64) * 4
    tl.store(p_st, b_mean.to(stats.dtype.element_ty), mask=m_m)
    tl.store(p_st + 1, b_rstd.to(stats.dtype.element_ty), mask=m_m)
    o_rows = o_m.to(tl.int64)[:, None] * E + o_e[None, :]
    if FINAL:
        tl.store(desc_ptr(desc, C_PRE, like) + o_rows, b_y.to(like.dtype.element_ty), mask=m_me)
        b_meanf, b_rstdf, b_yhat = _layer_norm(tl.where(m_me, b_y, 0.), m_me, eps, E)
        tl.store(p_st + 2, b_meanf.to(stats.dtype.element_ty), mask=m_m)
        tl.store(p_st + 3, b_rstdf.to(stats.dtype.element_ty), mask=m_m)
        b_y = b_yhat * _vec(desc, C_GF, like, o_e, m_e, ACC)[None, :] + _vec(desc, C_BEF, like, o_e, m_e, ACC)[None, :]
    # out: T·B rows of stride OUT_ROW (E, or 2E for a half of a contiguous (T, B, 2E) pair output)
    o_out = o_m.to(tl.int64)[:, None] * OUT_ROW + o_e[None, :]
    tl.store(desc_ptr(desc, C_OUT, like) + o_out, b_y.to(like.dtype.element_ty), mask=m_me)


@triton.jit(do_not_specialize=["steps"])
def encoder_ffn_bwd_kernel(
    desc, like, stats, scratch, work, keep, seed_ptr, steps,
    E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    FINAL: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, DROPOUT: tl.constexpr,
):
    """Grid (cdiv(max N, steps · BLOCK_M), G). Rows [r_lo, r_lo + steps · BLOCK_M) of the problem: writes dx,
    do (contiguous (T, B, E)) and scratch row rb0 + program (``grad_columns``). ``work`` (rows, 2, E) holds
    h and dz between the phases ((rows, 3, E) with DROPOUT: dz = D_res2(dy) for fc2, dy for the residual).
    With DROPOUT, ``keep`` int8 (rows, 4E) holds the ReLU dropout's keep mask, drawn once before phase 1 (the
    hidden loops read it: Philox inside them made phase 1 spill on sm_90); None without."""
    F: tl.constexpr = 4 * E
    EE: tl.constexpr = E * E
    WS: tl.constexpr = (3 if DROPOUT else 2) * E  # `work` row stride
    desc = desc_problem(desc, tl.program_id(1), C_W)
    N = desc_i32(desc, C_N)
    r_lo = tl.program_id(0) * steps * BLOCK_M
    if r_lo >= N:
        return
    r_hi = tl.minimum(N, r_lo + steps * BLOCK_M)
    B, row0 = desc_i32(desc, C_B), desc_i32(desc, C_ROW0)
    o_e, o_i = tl.arange(0, E_PAD), tl.arange(0, BLOCK_M)
    m_e = o_e < E
    p_w1, p_b1, p_w2 = desc_ptr(desc, C_W1, like), desc_ptr(desc, C_B1, like), desc_ptr(desc, C_W2, like)
    b_g1 = _vec(desc, C_G1, like, o_e, m_e, ACC)
    b_be1 = _vec(desc, C_BE1, like, o_e, m_e, ACC)
    p_wo, p_o = desc_ptr(desc, C_WO, like), desc_ptr(desc, C_O, like)
    p_dx, p_do = desc_ptr(desc, C_DX, like), desc_ptr(desc, C_DO, like)
    p_part = scratch + (desc_i32(desc, C_RB0) + tl.program_id(0)).to(tl.int64) * (9 * EE + 10 * E)
    dr = _dropout_args(desc, seed_ptr, DROPOUT, ACC)
    b_dbo = tl.zeros((E_PAD,), dtype=ACC)
    b_dg1 = tl.zeros((E_PAD,), dtype=ACC)
    b_dbe1 = tl.zeros((E_PAD,), dtype=ACC)
    b_db2 = tl.zeros((E_PAD,), dtype=ACC)
    b_dgf = tl.zeros((E_PAD,), dtype=ACC)
    b_dbef = tl.zeros((E_PAD,), dtype=ACC)

    # phase 0, row blocks: dz = the gradient reaching fc2's output and the residual (through LNf) → `work`
    for m0 in range(r_lo, r_hi, BLOCK_M):
        o_m = m0 + o_i
        m_m = o_m < r_hi
        m_me = m_m[:, None] & m_e[None, :]
        b_dout = tl.load(desc_ptr(desc, C_DOUT, like) + _row_offsets(desc, C_DOUT, o_m, B)[:, None] + o_e[None, :],
                         mask=m_me, other=0.).to(ACC)
        if FINAL:
            p_st = stats + (row0 + o_m).to(tl.int64) * 4
            b_meanf = tl.load(p_st + 2, mask=m_m, other=0.).to(ACC)
            b_rstdf = tl.load(p_st + 3, mask=m_m, other=0.).to(ACC)
            b_pre = tl.load(desc_ptr(desc, C_PRE, like) + o_m.to(tl.int64)[:, None] * E + o_e[None, :], mask=m_me,
                            other=0.).to(ACC)
            b_yhat = tl.where(m_me, (b_pre - b_meanf[:, None]) * b_rstdf[:, None], 0.)
            b_dgf += tl.sum(b_dout * b_yhat, 0)
            b_dbef += tl.sum(b_dout, 0)
            b_dy = tl.where(m_me, _ln_backward(b_dout, b_yhat, b_rstdf, _vec(desc, C_GF, like, o_e, m_e, ACC), E), 0.)
        else:
            b_dy = b_dout
        p_work = work + (row0 + o_m).to(tl.int64)[:, None] * WS + o_e[None, :]
        # dz: the gradient reaching fc2's output (through D_res2); dy goes on to x1 unmasked
        b_dz = ffn_drop(b_dy, DROPOUT, dr[0], dr[1], RES2, o_m, 0, E_PAD, dr[2], dr[4])
        b_db2 += tl.sum(b_dz, 0)
        tl.store(p_work + E, b_dz.to(work.dtype.element_ty), mask=m_me)
        if DROPOUT:
            tl.store(p_work + 2 * E, b_dy.to(work.dtype.element_ty), mask=m_me)
    # phase 0's vector gradients leave the registers before phase 1
    tl.store(p_part + 9 * EE + 3 * E + F + o_e, b_db2, mask=m_e)
    tl.store(p_part + 9 * EE + 4 * E + F + o_e, b_dgf, mask=m_e)
    tl.store(p_part + 9 * EE + 5 * E + F + o_e, b_dbef, mask=m_e)
    if DROPOUT:  # phase 0b: the ReLU dropout's keep mask of this program's rows → `keep`
        for m0 in range(r_lo, r_hi, BLOCK_M):
            o_m = m0 + o_i
            m_m = o_m < r_hi
            for f0 in range(0, F, BLOCK_F):
                o_f = f0 + tl.arange(0, BLOCK_F)
                b_keep = ffn_keep(dr[0], dr[1], RELU, o_m, f0, BLOCK_F, dr[3])
                tl.store(keep + (row0 + o_m).to(tl.int64)[:, None] * F + o_f[None, :], b_keep.to(tl.int8),
                         mask=m_m[:, None] & (o_f < F)[None, :])
    tl.debug_barrier()  # phase 1 reads dz rows written by other threads of this program

    # phase 1, row blocks: the hidden's gradient into h, LN1's backward → dx, do; h to `work`
    for m0 in range(r_lo, r_hi, BLOCK_M):
        o_m = m0 + o_i
        m_m = o_m < r_hi
        m_me = m_m[:, None] & m_e[None, :]
        o_rows = o_m.to(tl.int64)[:, None] * E + o_e[None, :]
        p_st = stats + (row0 + o_m).to(tl.int64) * 4
        p_work = work + (row0 + o_m).to(tl.int64)[:, None] * WS + o_e[None, :]
        b_x1 = _x1_rows(desc, like, o_m, m_m, o_e, m_e, B, E, BLOCK_K, PRECISION, ACC, DROPOUT, dr)
        b_mean = tl.load(p_st, mask=m_m, other=0.).to(ACC)
        b_rstd = tl.load(p_st + 1, mask=m_m, other=0.).to(ACC)
        b_hat = tl.where(m_me, (b_x1 - b_mean[:, None]) * b_rstd[:, None], 0.)
        b_h = (b_hat * b_g1[None, :] + b_be1[None, :]).to(like.dtype.element_ty)
        tl.store(p_work, b_h.to(work.dtype.element_ty), mask=m_me)
        tl.debug_barrier()  # the hidden's dots read h and dz back BLOCK_K columns at a time
        p_h_rows = work + (row0 + o_m).to(tl.int64)[:, None] * WS
        b_dh = tl.zeros((BLOCK_M, E_PAD), dtype=ACC)
        for f0 in range(0, F, BLOCK_F):
            b_u, o_f, m_f = _hidden_rows(p_h_rows, m_m, p_w1, p_b1, f0, like, E, F, BLOCK_M, BLOCK_F, BLOCK_K,
                                         PRECISION, ACC)
            b_da = _rows_dot(tl.zeros((BLOCK_M, BLOCK_F), dtype=ACC), p_h_rows + E, m_m, p_w2, F, 1, o_f, m_f, like, E,
                             BLOCK_K, PRECISION, ACC)
            b_du = tl.where(b_u > 0., _kept(b_da, DROPOUT, keep, row0, o_m, m_m, o_f, m_f, F, dr[5]), 0.)
            # (BLOCK_F, E_PAD): W1[f0 + j, k]
            b_w1 = tl.load(p_w1 + o_f[:, None] * E + o_e[None, :], mask=m_f[:, None] & m_e[None, :], other=0.)
            b_dh = tl.dot(b_du.to(like.dtype.element_ty), b_w1, b_dh, input_precision=PRECISION, out_dtype=ACC)
        b_dg1 += tl.sum(b_dh * b_hat, 0)
        b_dbe1 += tl.sum(b_dh, 0)
        b_dy = tl.load(p_work + (2 * E if DROPOUT else E), mask=m_me, other=0.).to(ACC)
        b_dx1 = tl.where(m_me, _ln_backward(b_dh, b_hat, b_rstd, b_g1, E) + b_dy, 0.)
        tl.store(p_dx + o_rows, b_dx1.to(like.dtype.element_ty), mask=m_me)
        b_dyo = ffn_drop(b_dx1, DROPOUT, dr[0], dr[1], RES1, o_m, 0, E_PAD, dr[2], dr[4])  # through D_res1
        b_dbo += tl.sum(b_dyo, 0)
        b_dx1l = b_dyo.to(like.dtype.element_ty)
        for k0 in range(0, E, BLOCK_K):  # do = D_res1(dx1) Wo, BLOCK_K output columns at a time
            o_k = k0 + tl.arange(0, BLOCK_K)
            m_k = o_k < E
            # (E_PAD, BLOCK_K): Wo[n, k]
            b_wo = tl.load(p_wo + o_e[:, None] * E + o_k[None, :], mask=m_e[:, None] & m_k[None, :], other=0.)
            b_do = tl.dot(b_dx1l, b_wo, input_precision=PRECISION, out_dtype=ACC)
            tl.store(p_do + o_m.to(tl.int64)[:, None] * E + o_k[None, :], b_do.to(like.dtype.element_ty),
                     mask=m_m[:, None] & m_k[None, :])
    c_vec = 9 * EE
    tl.store(p_part + c_vec + o_e, b_dbo, mask=m_e)
    tl.store(p_part + c_vec + E + o_e, b_dg1, mask=m_e)
    tl.store(p_part + c_vec + 2 * E + o_e, b_dbe1, mask=m_e)
    tl.debug_barrier()  # phase 2 reads `work` and dx rows written by other threads of this program

    # phase 2a, Wo's columns: dWo = Σ D_res1(dx1)ᵀ o over this program's rows
    for k0 in range(0, E, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < E
        b_dwo = tl.zeros((E_PAD, BLOCK_K), dtype=ACC)
        for m0 in range(r_lo, r_hi, BLOCK_M):
            o_m = m0 + o_i
            m_m = o_m < r_hi
            b_dx1 = tl.load(p_dx + o_m.to(tl.int64)[:, None] * E + o_e[None, :], mask=m_m[:, None] & m_e[None, :],
                            other=0.)
            if DROPOUT:
                b_dx1 = ffn_drop(b_dx1.to(ACC), DROPOUT, dr[0], dr[1], RES1, o_m, 0, E_PAD, dr[2], dr[4])
                b_dx1 = b_dx1.to(like.dtype.element_ty)
            b_o = tl.load(p_o + _row_offsets(desc, C_O, o_m, B)[:, None] + o_k[None, :],
                          mask=m_m[:, None] & m_k[None, :], other=0.)
            b_dwo = tl.dot(tl.trans(b_dx1), b_o, b_dwo, input_precision=PRECISION, out_dtype=ACC)
        tl.store(p_part + o_e[:, None] * E + o_k[None, :], b_dwo, mask=m_e[:, None] & m_k[None, :])

    # phase 2b, hidden chunks: dW1 = Σ duᵀ h, db1 = Σ du, dW2 = Σ dzᵀ a over this program's rows
    for f0 in range(0, F, BLOCK_F):
        o_f = f0 + tl.arange(0, BLOCK_F)
        m_f = o_f < F
        b_dw1 = tl.zeros((BLOCK_F, E_PAD), dtype=ACC)
        b_dw2 = tl.zeros((E_PAD, BLOCK_F), dtype=ACC)
        b_db1 = tl.zeros((BLOCK_F,), dtype=ACC)
        for m0 in range(r_lo, r_hi, BLOCK_M):
            o_m = m0 + o_i
            m_me = (o_m < r_hi)[:, None] & m_e[None, :]
            m_m = o_m < r_hi
            p_h_rows = work + (row0 + o_m).to(tl.int64)[:, None] * WS
            b_h = tl.load(p_h_rows + o_e[None, :], mask=m_me, other=0.).to(like.dtype.element_ty)
            b_dz = tl.load(p_h_rows + E + o_e[None, :], mask=m_me, other=0.).to(like.dtype.element_ty)
            b_u, _, _ = _hidden_rows(p_h_rows, m_m, p_w1, p_b1, f0, like, E, F, BLOCK_M, BLOCK_F, BLOCK_K, PRECISION,
                                     ACC)
            b_u = tl.where(m_m[:, None], b_u, 0.)
            b_a = _kept(tl.maximum(b_u, 0.), DROPOUT, keep, row0, o_m, m_m, o_f, m_f, F, dr[5])
            b_a = b_a.to(like.dtype.element_ty)
            b_da = _rows_dot(tl.zeros((BLOCK_M, BLOCK_F), dtype=ACC), p_h_rows + E, m_m, p_w2, F, 1, o_f, m_f, like, E,
                             BLOCK_K, PRECISION, ACC)
            b_du = tl.where(b_u > 0., _kept(b_da, DROPOUT, keep, row0, o_m, m_m, o_f, m_f, F, dr[5]), 0.)
            b_dul = b_du.to(like.dtype.element_ty)
            b_dw1 = tl.dot(tl.trans(b_dul), b_h, b_dw1, input_precision=PRECISION, out_dtype=ACC)
            b_dw2 = tl.dot(tl.trans(b_dz), b_a, b_dw2, input_precision=PRECISION, out_dtype=ACC)
            b_db1 += tl.sum(b_du, 0)
        tl.store(p_part + EE + o_f[:, None] * E + o_e[None, :], b_dw1, mask=m_f[:, None] & m_e[None, :])
        tl.store(p_part + 5 * EE + o_e[:, None] * F + o_f[None, :], b_dw2, mask=m_e[:, None] & m_f[None, :])
        tl.store(p_part + c_vec + 3 * E + o_f, b_db1, mask=m_f)


@triton.jit
def encoder_ffn_reduce_kernel(
    desc, scratch, like,
    C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(C, BLOCK_C), G). Sums the problem's scratch rows in row order into its gradient row."""
    desc = desc_problem(desc, tl.program_id(1), C_W)
    rb, n = desc_i32(desc, C_RB0), desc_i32(desc, C_NRB)
    o_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    o_r = tl.arange(0, BLOCK_R)
    b_acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    for r0 in range(rb, rb + n, BLOCK_R):
        m_r = r0 + o_r < rb + n
        b_acc += tl.load(scratch + (r0 + o_r).to(tl.int64)[:, None] * C + o_c[None, :], mask=m_r[:, None] & m_c[None, :],
                         other=0.)
    tl.store(desc_ptr(desc, C_GRAD, like) + o_c, tl.sum(b_acc, 0).to(like.dtype.element_ty), mask=m_c)


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


def block_k(E: int) -> int:
    """Columns per step of the K-chunked dots (the out-projection, and the backward's hidden from h and dz):
    whole rows up to E_PAD 64, 32 at E_PAD 128 (no 128-wide register operand; compile_check_encoder_ffn.py)."""
    return e_pad(E) if _INTERPRETING or e_pad(E) <= 64 else 32


# (BLOCK_M, BLOCK_F, num_warps) per (role, dtype class) and E_PAD, chosen offline with
# benchmarks/compile_check_encoder_ffn.py (no spills on sm_90); no runtime autotune.
_GPU_BLOCKS = {
    ("fwd", "fp32"): {16: (64, 32, 4), 32: (64, 32, 4), 64: (16, 32, 4), 128: (16, 32, 4)},
    ("fwd", "16"): {16: (64, 32, 4), 32: (64, 32, 4), 64: (32, 32, 4), 128: (16, 32, 4)},
    ("bwd", "fp32"): {16: (16, 32, 4), 32: (16, 32, 4), 64: (16, 16, 8), 128: (16, 16, 8)},
    ("bwd", "16"): {16: (16, 32, 4), 32: (16, 32, 4), 64: (16, 32, 4), 128: (16, 16, 8)},
}
_DROPOUT_BLOCKS = {  # where the dropout variants need other blocks to stay free of spills
    ("fwd", "fp32"): {32: (32, 32, 4)},
    ("bwd", "16"): {128: (16, 16, 4)},
}
_DROPOUT_RAGGED_BLOCKS = {  # the same for E < E_PAD (the column masks change the register budget)
    ("bwd", "16"): {128: (16, 16, 8)},
}
_REDUCE_BLOCKS = (16, 256, 4)
_INTERP_BLOCKS = (64, 128, 4)
_INTERP_REDUCE = (16, 4096, 4)
MAX_ROW_PROGRAMS = 32  # backward: row programs per problem at most (each owns `steps` row blocks)


@functools.lru_cache(maxsize=64)
def block_config(role: str, E: int, dtype: torch.dtype, dropout: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_F, num_warps) of the "fwd" or "bwd" kernel (``_DROPOUT_BLOCKS`` where dropout
    needs other blocks to stay free of spills)."""
    if _INTERPRETING:
        return _INTERP_BLOCKS
    cls = "16" if dtype in (torch.float16, torch.bfloat16) else "fp32"
    if dropout:
        table = _DROPOUT_RAGGED_BLOCKS if E < e_pad(E) else {}
        for t in (table, _DROPOUT_BLOCKS):
            if e_pad(E) in t.get((role, cls), {}):
                return t[(role, cls)][e_pad(E)]
    return _GPU_BLOCKS[(role, cls)][e_pad(E)]


def acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _drop_cols(res_p, relu_p, G: int) -> list[tuple[int, int, int, int]]:
    """Per problem (drop_res, drop_relu, scale_res, scale_relu) descriptor scalars (p lists or None = 0)."""
    res_p, relu_p = res_p or [0.0] * G, relu_p or [0.0] * G
    return [(drop_threshold(a), drop_threshold(b), f64_bits(keep_scale(a)), f64_bits(keep_scale(b)))
            for a, b in zip(res_p, relu_p)]


def _dropout_on(seed, res_p, relu_p) -> bool:
    return seed is not None and max([0.0, *(res_p or ()), *(relu_p or ())]) > 0


def _unit_last(ts) -> list:
    """(T, B, E) inputs with last-dim stride 1 (the rare other ones copied)."""
    return [t if t.stride(2) == 1 else t.contiguous() for t in ts]


def ffn_fwd_grouped(xs, os_, params, *, final: bool, eps=1e-5, seed=None, res_p=None, relu_p=None, block_m=None,
                    block_f=None, pair=False):
    """One launch for G problems of one E. xs, os_ (T, B, E) any strides (last-dim 1 or copied);
    params: G dicts of ``grad_columns`` names → tensors (lnf_* only when ``final``); seed: int64
    [seed, offset] on the device (dropout), res_p / relu_p: G dropout probabilities or None. Returns outs
    (contiguous (T, B, E); with ``pair``, G / 2 contiguous (T, B, 2E), problems 2i and 2i + 1 (one shape)
    side by side), stats (rows, 4) and pres (the pre-LN outputs; empty list unless final)."""
    E = xs[0].shape[2]
    dtype, device = xs[0].dtype, xs[0].device
    xs, os_ = _unit_last(xs), _unit_last(os_)
    if pair:
        pairs = [_empty((*xs[i].shape[:2], 2 * E), dtype, device) for i in range(0, len(xs), 2)]
        outs = [half for t in pairs for half in (t[..., :E], t[..., E:])]  # kernel rows of stride 2E
    else:
        outs = [_empty(x.shape, dtype, device) for x in xs]
    pres = [_empty(x.shape, dtype, device) for x in xs] if final else []
    rows, row0 = [], 0
    for g, (x, o, out, p, dc) in enumerate(zip(xs, os_, outs, params, _drop_cols(res_p, relu_p, len(xs)))):
        N = x.shape[0] * x.shape[1]
        rows.append(PROB.pack((N, x.shape[1], row0, 0, 0, *dc), (
            x, o, out, pres[g] if final else None, p["w_o"], p["b_o"], p["ln1_w"], p["ln1_b"], p["w_1"], p["b_1"],
            p["w_2"], p["b_2"], p.get("lnf_w"), p.get("lnf_b"))))
        row0 += N
    stats = _empty((row0, 4), stats_dtype(dtype), device)
    max_n = max(x.shape[0] * x.shape[1] for x in xs)
    if pair:
        outs = pairs
    if max_n == 0:
        return outs, stats, pres
    desc = descriptor_table(rows, device, "grouped encoder FFN block")
    drop = _dropout_on(seed, res_p, relu_p)
    bm, bf, warps = block_config("fwd", E, dtype, drop)
    bm, bf = block_m or bm, block_f or bf
    encoder_ffn_fwd_kernel[(cdiv(max_n, bm), len(rows))](
        desc, xs[0], stats, seed if drop else None, float(eps),
        E=E, E_PAD=e_pad(E), BLOCK_M=bm, BLOCK_F=bf, BLOCK_K=block_k(E), FINAL=bool(final), PRECISION="ieee",
        ACC=acc_dtype(dtype), DROPOUT=drop, OUT_ROW=2 * E if pair else E, num_warps=warps)
    return outs, stats, pres


def ffn_bwd_grouped(douts, xs, os_, params, stats, pres, *, final: bool, seed=None, res_p=None, relu_p=None,
                    block_m=None, block_f=None, steps=None):
    """Backward of :func:`ffn_fwd_grouped` (same seed and p: same masks) in 2 launches. Returns dxs, dos (contiguous (T, B, E)) and the
    parameter gradients as one (G, ``grad_width``) buffer, a row per problem (``grad_columns``)."""
    G, E = len(xs), xs[0].shape[2]
    dtype, device = xs[0].dtype, xs[0].device
    xs, os_, douts = _unit_last(xs), _unit_last(os_), _unit_last(douts)
    dxs = [_empty(x.shape, dtype, device) for x in xs]
    dos = [_empty(x.shape, dtype, device) for x in xs]
    C = grad_width(E)
    flat = _empty((G, C), dtype, device)
    drop = _dropout_on(seed, res_p, relu_p)
    bm, bf, warps = block_config("bwd", E, dtype, drop)
    bm, bf = block_m or bm, block_f or bf
    max_n = max(x.shape[0] * x.shape[1] for x in xs)
    steps = steps or max(1, cdiv(cdiv(max_n, bm), MAX_ROW_PROGRAMS))
    rows, row0, rb0 = [], 0, 0
    for g, (x, o, p, dc) in enumerate(zip(xs, os_, params, _drop_cols(res_p, relu_p, G))):
        N = x.shape[0] * x.shape[1]
        n_rb = cdiv(N, steps * bm)
        rows.append(PROB.pack((N, x.shape[1], row0, rb0, n_rb, *dc), (
            x, o, None, pres[g] if final else None, p["w_o"], p["b_o"], p["ln1_w"], p["ln1_b"], p["w_1"], p["b_1"],
            p["w_2"], p["b_2"], p.get("lnf_w"), p.get("lnf_b"), douts[g], dxs[g], dos[g], flat[g])))
        row0 += N
        rb0 += n_rb
    acc = acc_dtype(dtype)
    scratch = torch.empty((rb0, C), dtype=stats.dtype, device=device)  # every program writes its whole row
    work = torch.empty((row0, 3 if drop else 2, E), dtype=stats.dtype, device=device)
    keep = torch.empty((row0, 4 * E), dtype=torch.int8, device=device) if drop else None
    desc = descriptor_table(rows, device, "grouped encoder FFN block backward")
    if max_n:
        encoder_ffn_bwd_kernel[(cdiv(max_n, steps * bm), G)](
            desc, xs[0], stats, scratch, work, keep, seed if drop else None, steps,
            E=E, E_PAD=e_pad(E), BLOCK_M=bm, BLOCK_F=bf, BLOCK_K=block_k(E), FINAL=bool(final), PRECISION="ieee",
            ACC=acc, DROPOUT=drop, num_warps=warps)
    br, bc, rwarps = _INTERP_REDUCE if _INTERPRETING else _REDUCE_BLOCKS
    encoder_ffn_reduce_kernel[(cdiv(C, bc), G)](desc, scratch, xs[0], C=C, BLOCK_R=br, BLOCK_C=bc, ACC=acc,
                                                 num_warps=rwarps)
    return dxs, dos, flat
