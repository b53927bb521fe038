"""Residual and ReLU dropout of the fused post-attention block as the kernels draw it: Philox, a word per element.

Element (r, c) of stream s of problem g (r = t·B + b the problem's row, c the column; streams
``RES1`` (x1's out-projection term, (rows, E)), ``RELU`` (the hidden, (rows, 4E)), ``RES2`` (the FFN
term, (rows, E))) is kept iff word c mod 4 of Philox4x32-10 with counter (c // 4, r, s, (offset + g)
mod 2³²) and the int64 key ``seed`` is >= ``drop_threshold(p)`` (one Philox call per 4 columns) (seed and offset read from a device tensor
``[seed, offset]``: CUDA-graph safe). Kept values are scaled by 1/(1 − p). Nothing is stored: the
backward regenerates the bits, and :func:`ffn_dropout_masks` materialises them for tests.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from .host_math import cdiv

RES1, RELU, RES2 = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)  # stream ids (jit globals)


def drop_threshold(p: float) -> int:
    """A 32-bit word drops its element iff it is < round(2³² · p) (0: nothing dropped)."""
    return min(int(round(p * 2.0**32)), 2**32 - 1)


def f64_bits(x: float) -> int:
    """The float64 bit pattern of x as a signed 64-bit integer (descriptor scalar)."""
    return struct.unpack("q", struct.pack("d", x))[0]


def keep_scale(p: float) -> float:
    return 1.0 / (1.0 - p)


@triton.jit
def ffn_keep(seed, rng, STREAM: tl.constexpr, o_m, c0, BLOCK_C: tl.constexpr, thresh):
    """Keep tile (len(o_m), BLOCK_C) of stream STREAM for problem rows o_m and columns c0 .. c0 + BLOCK_C
    (c0 % 4 == 0, BLOCK_C a multiple of 4)."""
    NG: tl.constexpr = BLOCK_C // 4
    o_g = (c0 // 4 + tl.arange(0, NG)).to(tl.uint32)
    z = (o_m[:, None] * 0 + tl.arange(0, NG)[None, :] * 0).to(tl.uint32)  # (BLOCK_M, NG)
    r0, r1, r2, r3 = tl.philox(seed, z + o_g[None, :], z + o_m.to(tl.uint32)[:, None], z + STREAM,
                               z + (rng & 0xFFFFFFFF).to(tl.uint32))
    # (BLOCK_M, NG, 2, 2) -> (BLOCK_M, BLOCK_C): column 4·g + 2·i + j holds word 2·i + j of group g
    b_w = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (o_m.shape[0], BLOCK_C))
    return b_w >= thresh


@triton.jit
def ffn_drop(b_v, DROPOUT: tl.constexpr, seed, rng, STREAM: tl.constexpr, o_m, c0, BLOCK_C: tl.constexpr, thresh,
             scale):
    """b_v (len(o_m), BLOCK_C), columns c0 .., with stream STREAM's dropout applied (b_v without DROPOUT)."""
    if DROPOUT:
        b_v = tl.where(ffn_keep(seed, rng, STREAM, o_m, c0, BLOCK_C, thresh), b_v * scale, 0.)
    return b_v


@triton.jit(do_not_specialize=["N", "C", "thresh", "i_g"])
def ffn_dropout_mask_kernel(seed_ptr, keep, N, C, thresh, i_g, STREAM: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (cdiv(N, BLOCK_M), cdiv(C, BLOCK_C)). Writes stream STREAM's keep mask int8 (N, C)."""
    seed = tl.load(seed_ptr)
    rng = tl.load(seed_ptr + 1) + i_g
    o_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b_keep = ffn_keep(seed, rng, STREAM, o_m, tl.program_id(1) * BLOCK_C, BLOCK_C, thresh.to(tl.uint32))
    tl.store(keep + o_m.to(tl.int64)[:, None] * C + o_c[None, :], b_keep.to(tl.int8),
             mask=(o_m < N)[:, None] & (o_c < C)[None, :])


def ffn_dropout_masks(seed, T: int, B: int, E: int, res_p: float, relu_p: float, *, group_index: int = 0):
    """The keep masks bool (res1 (T, B, E), relu (T, B, 4E), res2 (T, B, E)) the kernels use for problem
    ``group_index`` of a group launched with ``seed`` (int64 [seed, offset]); None where p is 0."""
    out = []
    for stream, C, p in ((RES1.value, E, res_p), (RELU.value, 4 * E, relu_p), (RES2.value, E, res_p)):
        if p == 0:
            out.append(None)
            continue
        keep = torch.empty((T, B, C), dtype=torch.int8, device=seed.device)
        if keep.numel():
            grid = (cdiv(T * B, 64), cdiv(C, 128))
            ffn_dropout_mask_kernel[grid](seed, keep, T * B, C, drop_threshold(p), group_index, STREAM=stream,
                                          BLOCK_M=64, BLOCK_C=128)
        out.append(keep.view(torch.bool))
    return tuple(out)
