"""Attention-weight dropout as the kernels draw it: Philox bits, a byte per key, a keep threshold.

Key j of row i in problem g keeps its weight iff byte j % 4 of Philox4x32-10 output word
(j % 16) // 4 < ``keep_threshold(p)``, the counter being (j // 16, i, b·H + h, (offset + g) mod 2³²)
and the key the int64 seed (both read from a device tensor ``[seed, offset]``: CUDA-graph safe).
``attention_dropout_mask`` materialises the mask for tests and debugging; the fast kernels never do.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .host_math import cdiv


def keep_threshold(dropout_p: float) -> int:
    """Byte threshold: a key is kept iff its random byte < round(256 · (1 − p))."""
    return int(round(256.0 * (1.0 - dropout_p)))


@triton.jit
def dropout_keep(seed, rng, i_bh, o_m, n0, THRESH, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keep-mask tile (BLOCK_M, BLOCK_N) for rows o_m and keys n0 .. n0 + BLOCK_N (n0 % 16 == 0)."""
    NG: tl.constexpr = BLOCK_N // 16
    o_g = (n0 // 16 + tl.arange(0, NG)).to(tl.uint32)
    # (BLOCK_M, NG) counters
    c0 = tl.zeros((BLOCK_M, NG), dtype=tl.uint32) + o_g[None, :]
    c1 = tl.zeros((BLOCK_M, NG), dtype=tl.uint32) + o_m.to(tl.uint32)[:, None]
    c2 = tl.zeros((BLOCK_M, NG), dtype=tl.uint32) + i_bh.to(tl.uint32)
    c3 = tl.zeros((BLOCK_M, NG), dtype=tl.uint32) + (rng & 0xFFFFFFFF).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    # (BLOCK_M, NG, 2, 2) -> (BLOCK_M, BLOCK_N // 4): column 4·g + w holds word w of group g
    b_w = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK_M, BLOCK_N // 4))
    # (BLOCK_M, BLOCK_N // 4, 2, 2) -> (BLOCK_M, BLOCK_N): column 4·c + y holds byte y of word c
    b_b = tl.join(tl.join(b_w & 0xFF, (b_w >> 16) & 0xFF), tl.join((b_w >> 8) & 0xFF, b_w >> 24))
    b_b = tl.reshape(b_b, (BLOCK_M, BLOCK_N))
    return b_b < THRESH


@triton.jit(do_not_specialize=["H", "T_q", "T_k", "THRESH", "i_g"])
def attention_dropout_mask_kernel(seed_ptr, keep, H, T_q, T_k, THRESH, i_g,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (cdiv(Lq, BLOCK_M), cdiv(Lk, BLOCK_N), B·H). Writes the keep-mask int8 (B, H, Lq, Lk)."""
    i_m, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seed = tl.load(seed_ptr)
    rng = tl.load(seed_ptr + 1) + i_g
    o_i, o_j = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N)
    o_m, o_n = i_m * BLOCK_M + o_i, i_n * BLOCK_N + o_j
    # (BLOCK_M, BLOCK_N)
    b_keep = dropout_keep(seed, rng, i_bh, o_m, i_n * BLOCK_N, THRESH, BLOCK_M, BLOCK_N)
    p_keep = keep + (i_bh.to(tl.int64) * T_q + i_m * BLOCK_M) * T_k + i_n * BLOCK_N
    tl.store(p_keep + o_i[:, None] * T_k + o_j[None, :], b_keep.to(tl.int8),
             mask=(o_m < T_q)[:, None] & (o_n < T_k)[None, :])


def attention_dropout_mask(seed, batch, heads, len_q, len_k, dropout_p, *, group_index=0,
                           block_m=None, block_n=None):
    """Debug path: the keep-mask bool (B, H, Lq, Lk) the kernels use for this seed and problem."""
    keep = torch.empty((batch, heads, len_q, len_k), dtype=torch.int8, device=seed.device)
    if keep.numel() == 0:
        return keep.bool()
    bm = block_m or 64
    bn = block_n or 64
    grid = (cdiv(len_q, bm), cdiv(len_k, bn), batch * heads)
    attention_dropout_mask_kernel[grid](seed, keep, heads, len_q, len_k, keep_threshold(dropout_p),
                                        group_index, BLOCK_M=bm, BLOCK_N=bn)
    return keep.view(torch.bool)
