"""Grouped linear layers in Triton: G independent y_g = x_g W_gᵀ + b_g in one launch each way.

Per problem g: x (M, K) any strides, W (N, K) any strides, b (N,); y (M, N) contiguous; dy (M, N) with a unit
column stride and any row stride. DMD's heads
(M = the batch, K up to T'·d, N from 1 to T'·d) run one group per level of the head chains.

- Forward, one launch: ``linear_fwd_kernel``, grid (tiles, G): a program owns a (BLOCK_M, BLOCK_N) tile
  of y and loops over K in BLOCK_K chunks.
- Backward, one launch: ``linear_bwd_kernel``, grid (tiles, G, 2): role 0 tiles dx (BLOCK_M, BLOCK_K) =
  Σ_n dy W; role 1 tiles dW (BLOCK_N, BLOCK_K) = Σ_m dyᵀ x and, in the programs of the first K block,
  db = Σ_m dy. Every output element is written by one program in a fixed order: deterministic, no atomics.
fp32 dots in IEEE mode; 16-bit inputs dot in their dtype with fp32 accumulation; fp64 runs under the
interpreter. (Semantics: ``torch.nn.functional.linear`` per problem.)
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .grouped import DescriptorLayout, desc_i32, desc_problem, desc_ptr, descriptor_table
from .host_math import cdiv

LIN = DescriptorLayout(scalars=("M", "N", "K"), tensors=("x", "w", "b", "y", "dy", "dx", "dw", "db"))
C_W = LIN.constexpr("width")
C_M, C_N, C_K = (LIN.constexpr(n) for n in LIN.scalars)
C_X, C_WT, C_B, C_Y, C_DY, C_DX, C_DW, C_DB = (LIN.constexpr(n) for n in LIN.tensors)


@triton.jit
def _slot2(desc, COL: tl.constexpr, like):
    """Pointer and the two strides of the 2-D tensor at slot COL."""
    return desc_ptr(desc, COL, like), tl.load(desc + COL + 1), tl.load(desc + COL + 2)


@triton.jit
def linear_fwd_kernel(
    desc, like,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):
    """Grid (max tiles, G). y = x Wᵀ + b, one (BLOCK_M, BLOCK_N) tile per program."""
    desc = desc_problem(desc, tl.program_id(1), C_W)
    M, N, K = desc_i32(desc, C_M), desc_i32(desc, C_N), desc_i32(desc, C_K)
    n_nb = tl.cdiv(N, BLOCK_N)
    t = tl.program_id(0)
    if t >= tl.cdiv(M, BLOCK_M) * n_nb:
        return
    o_m = (t // n_nb) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = (t % n_nb) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m, m_n = o_m < M, o_n < N
    p_x, s_xm, s_xk = _slot2(desc, C_X, like)
    p_w, s_wn, s_wk = _slot2(desc, C_WT, like)
    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_x = tl.load(p_x + o_m.to(tl.int64)[:, None] * s_xm + o_k[None, :] * s_xk, mask=m_m[:, None] & m_k[None, :],
                      other=0.)
        b_wt = tl.load(p_w + o_n.to(tl.int64)[None, :] * s_wn + o_k[:, None] * s_wk, mask=m_k[:, None] & m_n[None, :],
                       other=0.)
        acc = tl.dot(b_x, b_wt, acc, input_precision=PRECISION, out_dtype=ACC)
    p_b, s_b, _ = _slot2(desc, C_B, like)
    acc += tl.load(p_b + o_n * s_b, mask=m_n, other=0.).to(ACC)[None, :]
    p_y = desc_ptr(desc, C_Y, like) + o_m.to(tl.int64)[:, None] * N + o_n[None, :]
    tl.store(p_y, acc.to(like.dtype.element_ty), mask=m_m[:, None] & m_n[None, :])


@triton.jit
def linear_bwd_kernel(
    desc, like,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):
    """Grid (max tiles, G, 2). Role 0: dx tiles; role 1: dW tiles (and db in the first K block)."""
    desc = desc_problem(desc, tl.program_id(1), C_W)
    M, N, K = desc_i32(desc, C_M), desc_i32(desc, C_N), desc_i32(desc, C_K)
    n_kb = tl.cdiv(K, BLOCK_K)
    t = tl.program_id(0)
    p_dy, s_dym, _ = _slot2(desc, C_DY, like)  # (M, N), unit column stride, any row stride (a column slice)
    if tl.program_id(2) == 0:
        if t >= tl.cdiv(M, BLOCK_M) * n_kb:
            return
        o_m = (t // n_kb) * BLOCK_M + tl.arange(0, BLOCK_M)
        o_k = (t % n_kb) * BLOCK_K + tl.arange(0, BLOCK_K)
        m_m, m_k = o_m < M, o_k < K
        p_w, s_wn, s_wk = _slot2(desc, C_WT, like)
        acc = tl.zeros((BLOCK_M, BLOCK_K), ACC)
        for n0 in range(0, N, BLOCK_N):
            o_n = n0 + tl.arange(0, BLOCK_N)
            m_n = o_n < N
            b_dy = tl.load(p_dy + o_m.to(tl.int64)[:, None] * s_dym + o_n[None, :], mask=m_m[:, None] & m_n[None, :],
                           other=0.)
            b_w = tl.load(p_w + o_n.to(tl.int64)[:, None] * s_wn + o_k[None, :] * s_wk,
                          mask=m_n[:, None] & m_k[None, :], other=0.)
            acc = tl.dot(b_dy, b_w, acc, input_precision=PRECISION, out_dtype=ACC)
        p_dx = desc_ptr(desc, C_DX, like) + o_m.to(tl.int64)[:, None] * K + o_k[None, :]
        tl.store(p_dx, acc.to(like.dtype.element_ty), mask=m_m[:, None] & m_k[None, :])
    else:
        if t >= tl.cdiv(N, BLOCK_N) * n_kb:
            return
        o_n = (t // n_kb) * BLOCK_N + tl.arange(0, BLOCK_N)
        kb = t % n_kb
        o_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        m_n, m_k = o_n < N, o_k < K
        p_x, s_xm, s_xk = _slot2(desc, C_X, like)
        acc_w = tl.zeros((BLOCK_N, BLOCK_K), ACC)
        acc_b = tl.zeros((BLOCK_N,), ACC)
        for m0 in range(0, M, BLOCK_M):
            o_m = m0 + tl.arange(0, BLOCK_M)
            m_m = o_m < M
            b_dy = tl.load(p_dy + o_m.to(tl.int64)[:, None] * s_dym + o_n[None, :], mask=m_m[:, None] & m_n[None, :],
                           other=0.)
            b_x = tl.load(p_x + o_m.to(tl.int64)[:, None] * s_xm + o_k[None, :] * s_xk,
                          mask=m_m[:, None] & m_k[None, :], other=0.)
            acc_w = tl.dot(tl.trans(b_dy), b_x, acc_w, input_precision=PRECISION, out_dtype=ACC)
            acc_b += tl.sum(b_dy.to(ACC), 0)
        p_dw = desc_ptr(desc, C_DW, like) + o_n.to(tl.int64)[:, None] * K + o_k[None, :]
        tl.store(p_dw, acc_w.to(like.dtype.element_ty), mask=m_n[:, None] & m_k[None, :])
        if kb == 0:
            tl.store(desc_ptr(desc, C_DB, like) + o_n, acc_b.to(like.dtype.element_ty), mask=m_n)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def blocks() -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) (benchmarks/compile_check_linear_grouped.py)."""
    return (16, 64, 256, 4) if _INTERPRETING else (16, 64, 64, 4)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _empty(shape, dtype, device) -> torch.Tensor:
    """Output allocation; tests patch this to poison outputs."""
    return torch.empty(shape, dtype=dtype, device=device)


def linear_fwd_grouped(xs, ws, bs):
    """One launch: G outputs (M, N) contiguous."""
    like = xs[0]
    ys = [_empty((x.shape[0], w.shape[0]), like.dtype, like.device) for x, w in zip(xs, ws)]
    BM, BN, BK, warps = blocks()
    rows = [LIN.pack((x.shape[0], w.shape[0], x.shape[1]), (x, w, b, y)) for x, w, b, y in zip(xs, ws, bs, ys)]
    tiles = max(cdiv(x.shape[0], BM) * cdiv(w.shape[0], BN) for x, w in zip(xs, ws))
    if tiles:
        desc = descriptor_table(rows, like.device, "grouped linear")
        linear_fwd_kernel[(tiles, len(xs))](
            desc, like, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, PRECISION="ieee", ACC=_acc(like.dtype), num_warps=warps)
    return ys


def linear_bwd_grouped(dys, xs, ws):
    """One launch: (dxs (M, K), dws (N, K), dbs (N,)), contiguous; dys (M, N), any row stride (copied
    when their column stride is not 1)."""
    like = xs[0]
    dys = [dy if dy.stride(1) == 1 or dy.shape[1] <= 1 else dy.contiguous() for dy in dys]
    dxs = [_empty(x.shape, like.dtype, like.device) for x in xs]
    dws = [_empty(w.shape, like.dtype, like.device) for w in ws]
    dbs = [_empty((w.shape[0],), like.dtype, like.device) for w in ws]
    BM, BN, BK, warps = blocks()
    rows = [LIN.pack((x.shape[0], w.shape[0], x.shape[1]), (x, w, None, None, dy, dx, dw, db))
            for x, w, dy, dx, dw, db in zip(xs, ws, dys, dxs, dws, dbs)]
    tiles = max(max(cdiv(x.shape[0], BM), cdiv(w.shape[0], BN)) * cdiv(x.shape[1], BK) for x, w in zip(xs, ws))
    if tiles:
        desc = descriptor_table(rows, like.device, "grouped linear backward")
        linear_bwd_kernel[(tiles, len(xs), 2)](
            desc, like, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, PRECISION="ieee", ACC=_acc(like.dtype), num_warps=warps)
    return dxs, dws, dbs
