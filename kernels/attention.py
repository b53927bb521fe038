"""Fused cross-modal attention in Triton: forward, two-role backward, grouped entry, dropout mask.

O = dropout(softmax(scale · Q Kᵀ + mask)) · V per (batch, head) on (B, H, L, D) tensors of any
strides. Semantics follow ``dmd_fast.reference.cross_modal_attention``.

- Softmax runs in base 2 with ``scale · log2(e)`` folded into Q (in Q's dtype, as the reference
  scales Q). The forward saves O and the row log-sum-exp ``lse[b, h, i] = log2 Σ_j 2^(s_ij)``,
  s = Q Kᵀ · scale · log2(e), fp32 (fp64 for fp64 inputs). A row with no visible key gets O = 0 and
  ``lse = +inf``, so the backward recomputes P = 2^(s − lse) = 0 there: zero, finite gradients.
- Masks are constexpr modes: offset-causal (query i sees key j iff j <= i + |Lk − Lq|) and/or
  per-sample key lengths (int32[B], values outside [0, Lk] act as clamped). Key blocks past the
  last visible column are never visited; only blocks that straddle a boundary apply the mask.
- Dropout: Philox4x32-10 with the int64 ``seed`` (read from a device tensor ``[seed, offset]``, so
  CUDA-graph safe) as its 64-bit key and counter (j // 16, i, b·H + h, (offset + g) mod 2³²),
  g the grouped problem index (0 for a single call). Key j uses byte j % 4 (bits 8·(j % 4) ..)
  of output word (j % 16) // 4: one Philox call serves 16 keys. Key j is kept iff that byte
  < ``round(256 · (1 − p))``: the keep probability is quantised to multiples of 1/256 (|error|
  <= 1/512); kept weights are scaled by the nominal 1/(1 − p), as in the reference. Nothing
  (Lq, Lk)-sized is stored; the backward and :func:`attention_dropout_mask` regenerate the bits.
- Backward: ``attention_bwd_dkv_kernel`` (a program per key block walks the query blocks) and
  ``attention_bwd_dq_kernel`` (a program per query block walks the key blocks). No atomics:
  bitwise deterministic. Δ = rowsum(dO ∘ O) is recomputed inside both.
- Grouped launches run G independent problems (same B, H, D, dtype) in one grid: a per-problem
  int64 descriptor row (``LAYOUT``, machinery in ``kernels/grouped.py``) holds lengths, dropout,
  data addresses and the b, h, t strides; the last-dim stride is a shared kernel argument, so
  grouped and single launches compile to the same code.
- head_dim 1..128 is loaded with masks into a D_PAD = max(16, next_pow2(D)) register tile.
- Addressing: int64 scalar bases per (b, h, block), int32 offsets inside a block.
- fp64 (for gradcheck and exact parity) runs under the interpreter and compiles on sm_90 (FMA path).

Launchers are thin: no input validation (``dmd_fast.ops.attention`` validates).
"""
from __future__ import annotations

import functools
import os
import struct

import torch
import triton.language as tl

from .attention_dropout import dropout_keep, keep_threshold
from .attention_tiles import (
    C_DK,
    C_DO,
    C_DQ,
    C_DV,
    C_KEY_LEN,
    C_W,
    LAYOUT,
    fwd_key_loop,
    hilo,
    jit_unspecialised,
    key_range,
    problem_prologue,
    visible_end,
)
from .grouped import (
    desc_problem,
    desc_ptr,
    desc_strided,
    descriptor_table,
    f32_bits,
    group_stride_args,
    unify_last_stride,
)
from .host_math import cdiv, next_pow2

LOG2E = 1.4426950408889634

# ----------------------------------------------------------------------------------------------
# kernels (int32 tile offsets inside a block: the launcher checks |stride| · block < 2³¹)
# ----------------------------------------------------------------------------------------------

@jit_unspecialised
def attention_fwd_kernel(
    q, k, v, o, lse, key_len, seed_ptr, desc,
    s_qb, s_qh, s_qt, s_qd, s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd,
    s_ob, s_oh, s_ot, s_od,
    H, T_q, T_k, qk_hi, qk_lo, dr_hi, dr_lo, THRESH,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, KEY_LEN: tl.constexpr, DROPOUT: tl.constexpr, GROUPED: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(Lq, BLOCK_M), B·H, G). Writes o (B, H, Lq, D) and lse (B, H, Lq)."""
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    (seed, rng, T_q, T_k, THRESH, dr_hi, dr_lo, q, k, v, o, lse, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh,
     s_vt, s_ob, s_oh, s_ot) = problem_prologue(
        seed_ptr, desc, q, k, v, o, lse, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
        T_q, T_k, THRESH, dr_hi, dr_lo, GROUPED, DROPOUT)
    if GROUPED:
        desc = desc_problem(desc, tl.program_id(2), C_W)
        if KEY_LEN:
            key_len = desc_ptr(desc, C_KEY_LEN, key_len)
    m0 = i_m * BLOCK_M
    if m0 >= T_q:
        return
    qk_scale = hilo(qk_hi, qk_lo, ACC)
    i_b, i_h = (i_bh // H).to(tl.int64), (i_bh % H).to(tl.int64)

    o_i, o_j, o_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, D_PAD)
    o_m = m0 + o_i
    m_m, m_d = o_m < T_q, o_d < D
    m_md = m_m[:, None] & m_d[None, :]
    # (BLOCK_M, D_PAD), scaled into the log2 domain in the input dtype (like the reference's q·scale)
    p_q = q + i_b * s_qb + i_h * s_qh + m0.to(tl.int64) * s_qt
    b_q = tl.load(p_q + o_i[:, None] * s_qt + o_d[None, :] * s_qd, mask=m_md, other=0.)
    b_q = (b_q.to(ACC) * qk_scale).to(q.dtype.element_ty)

    n_vis, off, n_full, n_end = key_range(key_len, i_b, i_m, T_q, T_k, BLOCK_M, BLOCK_N, CAUSAL, KEY_LEN)
    p_k = k + i_b * s_kb + i_h * s_kh
    p_v = v + i_b * s_vb + i_h * s_vh
    # (D_PAD, BLOCK_N), (BLOCK_N, D_PAD) offsets inside a key block
    o_kT = o_j[None, :] * s_kt + o_d[:, None] * s_kd
    o_v = o_j[:, None] * s_vt + o_d[None, :] * s_vd
    b_acc = tl.zeros((BLOCK_M, D_PAD), dtype=ACC)
    b_m = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    b_l = tl.zeros((BLOCK_M,), dtype=ACC)
    b_acc, b_m, b_l = fwd_key_loop(b_acc, b_m, b_l, b_q, p_k, p_v, s_kt, s_vt, o_kT, o_v, o_m, m_d,
                                0, n_full, n_vis, off, seed, rng, i_bh, THRESH,
                                BLOCK_M, BLOCK_N, False, CAUSAL, DROPOUT, PRECISION, ACC)
    b_acc, b_m, b_l = fwd_key_loop(b_acc, b_m, b_l, b_q, p_k, p_v, s_kt, s_vt, o_kT, o_v, o_m, m_d,
                                n_full, n_end, n_vis, off, seed, rng, i_bh, THRESH,
                                BLOCK_M, BLOCK_N, True, CAUSAL, DROPOUT, PRECISION, ACC)

    m_empty = b_l == 0.
    b_scale = 1. / tl.where(m_empty, 1., b_l)
    if DROPOUT:
        b_scale = b_scale * hilo(dr_hi, dr_lo, ACC)
    # (BLOCK_M, D_PAD)
    b_o = b_acc * b_scale[:, None]
    p_o = o + i_b * s_ob + i_h * s_oh + m0.to(tl.int64) * s_ot
    tl.store(p_o + o_i[:, None] * s_ot + o_d[None, :] * s_od, b_o.to(o.dtype.element_ty), mask=m_md)
    # (BLOCK_M,)
    b_lse = tl.where(m_empty, float("inf"), b_m + tl.math.log2(tl.where(m_empty, 1., b_l)))
    tl.store(lse + i_bh.to(tl.int64) * T_q + o_m, b_lse.to(lse.dtype.element_ty), mask=m_m)


@jit_unspecialised
def attention_bwd_dq_kernel(
    q, k, v, o, lse, do, dq, key_len, seed_ptr, desc,
    s_qb, s_qh, s_qt, s_qd, s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd,
    s_ob, s_oh, s_ot, s_od, s_dob, s_doh, s_dot, s_dod, s_dqb, s_dqh, s_dqt, s_dqd,
    H, T_q, T_k, qk_hi, qk_lo, sm_hi, sm_lo, dr_hi, dr_lo, THRESH,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, KEY_LEN: tl.constexpr, DROPOUT: tl.constexpr, GROUPED: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(Lq, BLOCK_M), B·H, G). Writes dq (B, H, Lq, D); a program walks the key blocks."""
    i_m, i_bh = tl.program_id(0), tl.program_id(1)
    (seed, rng, T_q, T_k, THRESH, dr_hi, dr_lo, q, k, v, o, lse, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh,
     s_vt, s_ob, s_oh, s_ot) = problem_prologue(
        seed_ptr, desc, q, k, v, o, lse, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
        T_q, T_k, THRESH, dr_hi, dr_lo, GROUPED, DROPOUT)
    if GROUPED:
        desc = desc_problem(desc, tl.program_id(2), C_W)
        if KEY_LEN:
            key_len = desc_ptr(desc, C_KEY_LEN, key_len)
        do, s_dob, s_doh, s_dot = desc_strided(desc, C_DO, do)
        dq, s_dqb, s_dqh, s_dqt = desc_strided(desc, C_DQ, dq)
    m0 = i_m * BLOCK_M
    if m0 >= T_q:
        return
    qk_scale = hilo(qk_hi, qk_lo, ACC)
    drop_scale = 1.
    if DROPOUT:
        drop_scale = hilo(dr_hi, dr_lo, ACC)
    i_b, i_h = (i_bh // H).to(tl.int64), (i_bh % H).to(tl.int64)

    o_i, o_j, o_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, D_PAD)
    o_m = m0 + o_i
    m_m, m_d = o_m < T_q, o_d < D
    m_md = m_m[:, None] & m_d[None, :]
    m0l = m0.to(tl.int64)
    # (BLOCK_M, D_PAD)
    b_q = tl.load(q + i_b * s_qb + i_h * s_qh + m0l * s_qt + o_i[:, None] * s_qt + o_d[None, :] * s_qd,
                  mask=m_md, other=0.)
    b_q = (b_q.to(ACC) * qk_scale).to(q.dtype.element_ty)
    b_do = tl.load(do + i_b * s_dob + i_h * s_doh + m0l * s_dot + o_i[:, None] * s_dot + o_d[None, :] * s_dod,
                   mask=m_md, other=0.)
    b_o = tl.load(o + i_b * s_ob + i_h * s_oh + m0l * s_ot + o_i[:, None] * s_ot + o_d[None, :] * s_od,
                  mask=m_md, other=0.)
    # (BLOCK_M,)
    b_delta = tl.sum(b_do.to(ACC) * b_o.to(ACC), 1)
    b_lse = tl.load(lse + i_bh.to(tl.int64) * T_q + o_m, mask=m_m, other=float("inf")).to(ACC)

    n_vis, off, n_full, n_end = key_range(key_len, i_b, i_m, T_q, T_k, BLOCK_M, BLOCK_N, CAUSAL, KEY_LEN)
    p_k = k + i_b * s_kb + i_h * s_kh
    p_v = v + i_b * s_vb + i_h * s_vh
    # (D_PAD, BLOCK_N) offsets inside a key block
    o_kT = o_j[None, :] * s_kt + o_d[:, None] * s_kd
    o_vT = o_j[None, :] * s_vt + o_d[:, None] * s_vd
    b_dq = tl.zeros((BLOCK_M, D_PAD), dtype=ACC)
    for n0 in range(0, n_end, BLOCK_N):
        o_n = n0 + o_j
        m_n = o_n < n_vis
        m_kv = m_d[:, None] & m_n[None, :]
        n0l = tl.cast(n0, tl.int64)
        # (D_PAD, BLOCK_N)
        b_kT = tl.load(p_k + n0l * s_kt + o_kT, mask=m_kv, other=0.)
        b_vT = tl.load(p_v + n0l * s_vt + o_vT, mask=m_kv, other=0.)
        # (BLOCK_M, BLOCK_N)
        b_p = tl.math.exp2(tl.dot(b_q, b_kT, input_precision=PRECISION, out_dtype=ACC) - b_lse[:, None])
        if n0 >= n_full:
            m_s = m_n[None, :]
            if CAUSAL:
                m_s = m_s & (o_n[None, :] <= o_m[:, None] + off)
            b_p = tl.where(m_s, b_p, 0.)
        b_dp = tl.dot(b_do, b_vT, input_precision=PRECISION, out_dtype=ACC)
        if DROPOUT:
            b_dp = tl.where(dropout_keep(seed, rng, i_bh, o_m, n0, THRESH, BLOCK_M, BLOCK_N),
                            b_dp * drop_scale, 0.)
        b_ds = b_p * (b_dp - b_delta[:, None])
        # (BLOCK_M, D_PAD)
        b_dq = tl.dot(b_ds.to(b_kT.dtype), tl.trans(b_kT), b_dq, input_precision=PRECISION, out_dtype=ACC)
    b_dq = b_dq * hilo(sm_hi, sm_lo, ACC)
    p_dq = dq + i_b * s_dqb + i_h * s_dqh + m0l * s_dqt
    tl.store(p_dq + o_i[:, None] * s_dqt + o_d[None, :] * s_dqd, b_dq.to(dq.dtype.element_ty), mask=m_md)


@jit_unspecialised
def attention_bwd_dkv_kernel(
    q, k, v, o, lse, do, dk, dv, key_len, seed_ptr, desc,
    s_qb, s_qh, s_qt, s_qd, s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd,
    s_ob, s_oh, s_ot, s_od, s_dob, s_doh, s_dot, s_dod,
    s_dkb, s_dkh, s_dkt, s_dkd, s_dvb, s_dvh, s_dvt, s_dvd,
    H, T_q, T_k, qk_hi, qk_lo, sm_hi, sm_lo, dr_hi, dr_lo, THRESH,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, KEY_LEN: tl.constexpr, DROPOUT: tl.constexpr, GROUPED: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(Lk, BLOCK_N), B·H, G). Writes dk, dv (B, H, Lk, D); a program walks the query blocks."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    (seed, rng, T_q, T_k, THRESH, dr_hi, dr_lo, q, k, v, o, lse, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh,
     s_vt, s_ob, s_oh, s_ot) = problem_prologue(
        seed_ptr, desc, q, k, v, o, lse, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
        T_q, T_k, THRESH, dr_hi, dr_lo, GROUPED, DROPOUT)
    if GROUPED:
        desc = desc_problem(desc, tl.program_id(2), C_W)
        if KEY_LEN:
            key_len = desc_ptr(desc, C_KEY_LEN, key_len)
        do, s_dob, s_doh, s_dot = desc_strided(desc, C_DO, do)
        dk, s_dkb, s_dkh, s_dkt = desc_strided(desc, C_DK, dk)
        dv, s_dvb, s_dvh, s_dvt = desc_strided(desc, C_DV, dv)
    n0 = i_n * BLOCK_N
    if n0 >= T_k:
        return
    qk_scale = hilo(qk_hi, qk_lo, ACC)
    drop_scale = 1.
    if DROPOUT:
        drop_scale = hilo(dr_hi, dr_lo, ACC)
    i_b, i_h = (i_bh // H).to(tl.int64), (i_bh % H).to(tl.int64)

    o_i, o_j, o_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, D_PAD)
    o_n = n0 + o_j
    n_vis = visible_end(key_len, i_b, T_k, KEY_LEN)
    m_n, m_d = o_n < n_vis, o_d < D
    m_nd = m_n[:, None] & m_d[None, :]
    n0l = tl.cast(n0, tl.int64)
    # (BLOCK_N, D_PAD)
    b_k = tl.load(k + i_b * s_kb + i_h * s_kh + n0l * s_kt + o_j[:, None] * s_kt + o_d[None, :] * s_kd,
                  mask=m_nd, other=0.)
    b_v = tl.load(v + i_b * s_vb + i_h * s_vh + n0l * s_vt + o_j[:, None] * s_vt + o_d[None, :] * s_vd,
                  mask=m_nd, other=0.)

    # query range: rows [m_lo, m_full) need the mask, [m_full, T_q) do not
    off = tl.abs(T_k - T_q)
    m_lo = 0
    m_full = 0
    if CAUSAL:
        m_lo = tl.maximum(n0 - off, 0) // BLOCK_M * BLOCK_M
        m_full = tl.maximum(n0 + BLOCK_N - 1 - off + BLOCK_M - 1, 0) // BLOCK_M * BLOCK_M
    if n0 + BLOCK_N > n_vis:
        m_full = T_q
    m_hi = T_q
    if n0 >= n_vis:
        m_hi = 0  # no visible key in this block: dk = dv = 0

    p_q = q + i_b * s_qb + i_h * s_qh
    p_o = o + i_b * s_ob + i_h * s_oh
    p_do = do + i_b * s_dob + i_h * s_doh
    p_lse = lse + i_bh.to(tl.int64) * T_q
    # offsets inside a query block: (D_PAD, BLOCK_M), (BLOCK_M, D_PAD), (BLOCK_M, D_PAD)
    o_qT = o_i[None, :] * s_qt + o_d[:, None] * s_qd
    o_do = o_i[:, None] * s_dot + o_d[None, :] * s_dod
    o_o = o_i[:, None] * s_ot + o_d[None, :] * s_od
    b_dk = tl.zeros((BLOCK_N, D_PAD), dtype=ACC)
    b_dv = tl.zeros((BLOCK_N, D_PAD), dtype=ACC)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        o_m = m0 + o_i
        m_m = o_m < T_q
        m0l = tl.cast(m0, tl.int64)
        # (D_PAD, BLOCK_M)
        b_qT = tl.load(p_q + m0l * s_qt + o_qT, mask=m_d[:, None] & m_m[None, :], other=0.)
        b_qT = (b_qT.to(ACC) * qk_scale).to(q.dtype.element_ty)
        # (BLOCK_M, D_PAD)
        b_do = tl.load(p_do + m0l * s_dot + o_do, mask=m_m[:, None] & m_d[None, :], other=0.)
        b_o = tl.load(p_o + m0l * s_ot + o_o, mask=m_m[:, None] & m_d[None, :], other=0.)
        # (BLOCK_M,)
        b_delta = tl.sum(b_do.to(ACC) * b_o.to(ACC), 1)
        b_lse = tl.load(p_lse + o_m, mask=m_m, other=float("inf")).to(ACC)
        # (BLOCK_N, BLOCK_M)
        b_pT = tl.math.exp2(tl.dot(b_k, b_qT, input_precision=PRECISION, out_dtype=ACC) - b_lse[None, :])
        if m0 < m_full:
            m_sT = m_n[:, None]
            if CAUSAL:
                m_sT = m_sT & (o_n[:, None] <= o_m[None, :] + off)
            b_pT = tl.where(m_sT, b_pT, 0.)
        b_dpT = tl.dot(b_v, tl.trans(b_do), input_precision=PRECISION, out_dtype=ACC)
        if DROPOUT:
            m_keepT = tl.trans(dropout_keep(seed, rng, i_bh, o_m, n0, THRESH, BLOCK_M, BLOCK_N))
            b_pdT = tl.where(m_keepT, b_pT * drop_scale, 0.)
            b_dpT = tl.where(m_keepT, b_dpT * drop_scale, 0.)
        else:
            b_pdT = b_pT
        # (BLOCK_N, D_PAD)
        b_dv = tl.dot(b_pdT.to(b_do.dtype), b_do, b_dv, input_precision=PRECISION, out_dtype=ACC)
        b_dsT = b_pT * (b_dpT - b_delta[None, :])
        b_dk = tl.dot(b_dsT.to(b_qT.dtype), tl.trans(b_qT), b_dk, input_precision=PRECISION, out_dtype=ACC)
    # the scores used q·scale·log2(e): dk = scale · dSᵀ Q = dSᵀ (Q · qk_scale) · scale / qk_scale
    b_dk = b_dk * (hilo(sm_hi, sm_lo, ACC) / qk_scale)
    m_st = (o_n < T_k)[:, None] & m_d[None, :]
    p_dk = dk + i_b * s_dkb + i_h * s_dkh + n0l * s_dkt
    p_dv = dv + i_b * s_dvb + i_h * s_dvh + n0l * s_dvt
    tl.store(p_dk + o_j[:, None] * s_dkt + o_d[None, :] * s_dkd, b_dk.to(dk.dtype.element_ty), mask=m_st)
    tl.store(p_dv + o_j[:, None] * s_dvt + o_d[None, :] * s_dvd, b_dv.to(dv.dtype.element_ty), mask=m_st)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _empty_like(t: torch.Tensor) -> torch.Tensor:
    """Output allocation (q's layout when q is dense); tests patch this to poison outputs."""
    return torch.empty_like(t)


def _empty(shape, dtype, device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


# Triton decides at decoration (import) time whether the kernels run in the interpreter.
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _interpreting() -> bool:
    return _INTERPRETING


def d_pad(head_dim: int) -> int:
    """Register tile width for a head_dim: max(16, next power of two)."""
    return max(16, next_pow2(head_dim))


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per (kernel role, dtype class) and D_PAD, chosen offline
# with benchmarks/compile_check_attention.py (no spills on sm_90); no runtime autotune. fp32 covers fp64.
_GPU_BLOCKS = {
    ("fwd", "fp32"): {16: (64, 64, 8, 2), 32: (32, 32, 4, 2), 64: (16, 32, 4, 1), 128: (16, 16, 4, 1)},
    ("fwd", "16"): {16: (64, 64, 4, 3), 32: (64, 64, 4, 3), 64: (64, 64, 8, 3), 128: (16, 16, 4, 1)},
    ("dq", "fp32"): {16: (64, 64, 8, 2), 32: (64, 32, 8, 2), 64: (32, 32, 4, 2), 128: (32, 32, 8, 2)},
    ("dq", "16"): {16: (64, 64, 4, 3), 32: (64, 64, 4, 3), 64: (64, 64, 8, 3), 128: (16, 32, 4, 2)},
    ("dkv", "fp32"): {16: (32, 32, 4, 3), 32: (32, 64, 8, 3), 64: (16, 32, 4, 1), 128: (16, 32, 4, 1)},
    ("dkv", "16"): {16: (64, 64, 4, 3), 32: (32, 64, 4, 3), 64: (16, 32, 4, 2), 128: (16, 16, 4, 1)},
}
_INTERP_BLOCKS = (64, 64, 4, 1)


def block_config(role: str, head_dim: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a kernel role ("fwd", "dq", "dkv")."""
    if _interpreting():
        return _INTERP_BLOCKS
    cls = "16" if dtype in (torch.float16, torch.bfloat16) else "fp32"
    return _GPU_BLOCKS[(role, cls)][d_pad(head_dim)]


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _hilo_split(x: float):
    """x as fp32 hi + lo (lo: the fp32 rounding error), without a tensor round trip."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, float(x - hi)


@functools.lru_cache(maxsize=256)
def _scalars(scale: float, dropout_p: float):
    """Float arguments (hi, lo pairs) and the dropout threshold shared by all kernels."""
    qk = _hilo_split(scale * LOG2E)
    sm = _hilo_split(scale)
    dr = _hilo_split(1.0 / (1.0 - dropout_p)) if dropout_p > 0 else (1.0, 0.0)
    return qk, sm, dr, keep_threshold(dropout_p)


def _strides(t: torch.Tensor):
    return tuple(t.stride())


def _check_tile_offsets(block: int, *tensors):
    """Offsets inside a block are int32: |stride_t| · block + |stride_d| · 128 must stay below 2³¹."""
    for t in tensors:
        if abs(t.stride(2)) * block + abs(t.stride(3)) * 128 >= 2 ** 31:
            raise ValueError(f"attention kernels: strides {tuple(t.stride())} of a {tuple(t.shape)} tensor are "
                             f"too large for int32 offsets inside a {block}-row block")


def _block_args(role, D, dtype, block_m, block_n):
    bm, bn, warps, stages = block_config(role, D, dtype)
    bm = block_m or bm
    bn = block_n or bn
    if bm < 16 or bn < 16 or bm & (bm - 1) or bn & (bn - 1):
        raise ValueError(f"block_m/block_n: expected powers of two >= 16, got BLOCK_M={bm}, BLOCK_N={bn}")
    return bm, bn, dict(num_warps=warps, num_stages=stages)


def _constexprs(D, dtype, bm, bn, offset_causal, has_kl, dropout, grouped, input_precision):
    return dict(D=D, D_PAD=d_pad(D), BLOCK_M=bm, BLOCK_N=bn, CAUSAL=bool(offset_causal),
                KEY_LEN=bool(has_kl), DROPOUT=bool(dropout), GROUPED=bool(grouped),
                PRECISION=input_precision, ACC=_acc_dtype(dtype))


def attention_fwd(q, k, v, *, key_lengths=None, offset_causal=False, dropout_p=0.0, seed=None,
                  scale=None, input_precision="ieee", block_m=None, block_n=None):
    """Forward. q (B, H, Lq, D), k/v (B, H, Lk, D) any strides; key_lengths int32 (B,) or None;
    seed int64 [seed, offset] on q's device (needed when dropout_p > 0).
    Returns o (B, H, Lq, D) (q's layout when q is dense) and lse (B, H, Lq) fp32 (fp64 for fp64)."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = D ** -0.5 if scale is None else float(scale)
    o = _empty_like(q)
    lse = _empty((B, H, Lq), _lse_dtype(q.dtype), q.device)
    if o.numel() == 0:
        return o, lse
    bm, bn, launch = _block_args("fwd", D, q.dtype, block_m, block_n)
    _check_tile_offsets(max(bm, bn), q, k, v, o)
    (qk, _, dr, thresh) = _scalars(scale, dropout_p)
    grid = (cdiv(Lq, bm), B * H, 1)
    attention_fwd_kernel[grid](
        q, k, v, o, lse, key_lengths, seed if dropout_p > 0 else None, None,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        H, Lq, Lk, qk[0], qk[1], dr[0], dr[1], thresh,
        **_constexprs(D, q.dtype, bm, bn, offset_causal, key_lengths is not None, dropout_p > 0, False,
                      input_precision),
        **launch)
    return o, lse


def attention_bwd(do, q, k, v, o, lse, *, key_lengths=None, offset_causal=False, dropout_p=0.0,
                  seed=None, scale=None, input_precision="ieee", block_m=None, block_n=None):
    """Backward (2 launches, no atomics). do (B, H, Lq, D) any strides; the rest as returned by
    :func:`attention_fwd`. Returns dq, dk, dv shaped (and laid out) like q, k, v."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = D ** -0.5 if scale is None else float(scale)
    dq, dk, dv = _empty_like(q), _empty_like(k), _empty_like(v)
    (qk, sm, dr, thresh) = _scalars(scale, dropout_p)
    seed = seed if dropout_p > 0 else None
    has_kl, drop = key_lengths is not None, dropout_p > 0
    if dq.numel():
        bm, bn, launch = _block_args("dq", D, q.dtype, block_m, block_n)
        _check_tile_offsets(max(bm, bn), q, k, v, o, do, dq)
        attention_bwd_dq_kernel[(cdiv(Lq, bm), B * H, 1)](
            q, k, v, o, lse, do, dq, key_lengths, seed, None,
            *_strides(q), *_strides(k), *_strides(v), *_strides(o), *_strides(do), *_strides(dq),
            H, Lq, Lk, qk[0], qk[1], sm[0], sm[1], dr[0], dr[1], thresh,
            **_constexprs(D, q.dtype, bm, bn, offset_causal, has_kl, drop, False, input_precision),
            **launch)
    if dk.numel():
        bm, bn, launch = _block_args("dkv", D, q.dtype, block_m, block_n)
        _check_tile_offsets(max(bm, bn), q, k, v, o, do, dk, dv)
        attention_bwd_dkv_kernel[(cdiv(Lk, bn), B * H, 1)](
            q, k, v, o, lse, do, dk, dv, key_lengths, seed, None,
            *_strides(q), *_strides(k), *_strides(v), *_strides(o), *_strides(do), *_strides(dk),
            *_strides(dv),
            H, Lq, Lk, qk[0], qk[1], sm[0], sm[1], dr[0], dr[1], thresh,
            **_constexprs(D, q.dtype, bm, bn, offset_causal, has_kl, drop, False, input_precision),
            **launch)
    return dq, dk, dv


@functools.lru_cache(maxsize=256)
@functools.lru_cache(maxsize=256)
def _drop_cols(dropout_p: float) -> tuple[int, int, int]:
    """The dropout columns (thresh, dr_hi, dr_lo) of a problem's descriptor row."""
    _, _, dr, thresh = _scalars(1.0, dropout_p)
    return thresh, f32_bits(dr[0]), f32_bits(dr[1])


def _group_dropout(dropout_p, G) -> list:
    """One dropout probability per problem from a float or a sequence of G floats."""
    ps = [float(dropout_p)] * G if isinstance(dropout_p, (int, float)) else [float(p) for p in dropout_p]
    if len(ps) != G:
        raise ValueError(f"dropout_p: expected a float or {G} values (one per problem), got {len(ps)}")
    return ps


def _desc_row(T_q, T_k, dropout_p, *tensors):
    """One problem's descriptor row: tensors in LAYOUT's slot order (q, k, v, o, lse, key_len[, do, dq, dk,
    dv]). Built on every grouped launch, so kept to :meth:`DescriptorLayout.pack`."""
    return LAYOUT.pack((T_q, T_k, *_drop_cols(dropout_p)), tensors)


def attention_fwd_grouped(qs, ks, vs, *, key_lengths=None, offset_causal=False, dropout_p=0.0, seed=None,
                          scale=None, input_precision="ieee", block_m=None, block_n=None):
    """G problems in one launch (same B, H, D, dtype; own Lq, Lk, strides). key_lengths: None or a
    list of G int32 (B,) tensors. dropout_p: one float, or G floats (each problem its own p). Problem g
    draws dropout bits with offset + g. Returns lists o, lse."""
    G = len(qs)
    ps = _group_dropout(dropout_p, G)
    B, H, _, D = qs[0].shape
    scale = D ** -0.5 if scale is None else float(scale)
    qs, ks, vs = unify_last_stride(qs), unify_last_stride(ks), unify_last_stride(vs)
    os_ = [_empty_like(q) for q in qs]
    lses = [_empty((B, H, q.shape[2]), _lse_dtype(q.dtype), q.device) for q in qs]
    if B * H == 0:
        return os_, lses
    kls = key_lengths or [None] * G
    rows = [_desc_row(q.shape[2], k.shape[2], p, q, k, v, o, lse, kl)
            for q, k, v, o, lse, kl, p in zip(qs, ks, vs, os_, lses, kls, ps)]
    desc = descriptor_table(rows, qs[0].device, "grouped attention")
    bm, bn, launch = _block_args("fwd", D, qs[0].dtype, block_m, block_n)
    _check_tile_offsets(max(bm, bn), *qs, *ks, *vs, *os_)
    (qk, _, dr, thresh) = _scalars(scale, max(ps))  # dr, thresh: per problem from the descriptor
    drop = max(ps) > 0
    grid = (max(cdiv(q.shape[2], bm) for q in qs), B * H, G)
    if grid[0] == 0:
        return os_, lses
    attention_fwd_kernel[grid](
        qs[0], ks[0], vs[0], os_[0], lses[0], kls[0], seed if drop else None, desc,
        *group_stride_args("grouped attention", qs, ks, vs, os_), H, 0, 0, qk[0], qk[1], dr[0], dr[1], thresh,
        **_constexprs(D, qs[0].dtype, bm, bn, offset_causal, key_lengths is not None, drop, True,
                      input_precision),
        **launch)
    return os_, lses


def attention_bwd_grouped(dos, qs, ks, vs, os_, lses, *, key_lengths=None, offset_causal=False,
                          dropout_p=0.0, seed=None, scale=None, input_precision="ieee", block_m=None,
                          block_n=None):
    """Backward of :func:`attention_fwd_grouped` in 2 launches. Returns lists dq, dk, dv."""
    G = len(qs)
    ps = _group_dropout(dropout_p, G)
    B, H, _, D = qs[0].shape
    scale = D ** -0.5 if scale is None else float(scale)
    qs, ks, vs, dos = (unify_last_stride(ts) for ts in (qs, ks, vs, dos))
    dqs = [_empty_like(q) for q in qs]
    dks = [_empty_like(k) for k in ks]
    dvs = [_empty_like(v) for v in vs]
    if B * H == 0:
        return dqs, dks, dvs
    kls = key_lengths or [None] * G
    rows = [_desc_row(q.shape[2], k.shape[2], p, q, k, v, o, lse, kl, do, dq, dk, dv)
            for q, k, v, o, lse, kl, do, dq, dk, dv, p in zip(qs, ks, vs, os_, lses, kls, dos, dqs, dks, dvs, ps)]
    desc = descriptor_table(rows, qs[0].device, "grouped attention")
    (qk, sm, dr, thresh) = _scalars(scale, max(ps))  # dr, thresh: per problem from the descriptor
    has_kl, drop = key_lengths is not None, max(ps) > 0
    seed = seed if drop else None
    bm, bn, launch = _block_args("dq", D, qs[0].dtype, block_m, block_n)
    _check_tile_offsets(128, *qs, *ks, *vs, *os_, *dos, *dqs, *dks, *dvs)  # covers both kernels' blocks
    grid = (max(cdiv(q.shape[2], bm) for q in qs), B * H, G)
    if grid[0]:
        attention_bwd_dq_kernel[grid](
            qs[0], ks[0], vs[0], os_[0], lses[0], dos[0], dqs[0], kls[0], seed, desc,
            *group_stride_args("grouped attention", qs, ks, vs, os_, dos, dqs), H, 0, 0, qk[0], qk[1], sm[0], sm[1], dr[0], dr[1], thresh,
            **_constexprs(D, qs[0].dtype, bm, bn, offset_causal, has_kl, drop, True, input_precision),
            **launch)
    bm, bn, launch = _block_args("dkv", D, qs[0].dtype, block_m, block_n)
    grid = (max(cdiv(k.shape[2], bn) for k in ks), B * H, G)
    if grid[0]:
        attention_bwd_dkv_kernel[grid](
            qs[0], ks[0], vs[0], os_[0], lses[0], dos[0], dks[0], dvs[0], kls[0], seed, desc,
            *group_stride_args("grouped attention", qs, ks, vs, os_, dos, dks, dvs), H, 0, 0, qk[0], qk[1], sm[0], sm[1], dr[0], dr[1],
            thresh,
            **_constexprs(D, qs[0].dtype, bm, bn, offset_causal, has_kl, drop, True, input_precision),
            **launch)
    return dqs, dks, dvs
