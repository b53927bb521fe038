"""Fused embedding prologue of MulT encoders in Triton, grouped: √E·x + PE(x), then dropout.

Per problem g (one input stream of an encoder, (T, B, E), rows r = (t, b)):
    y = scale · x + [x[t, b, 0] ≠ 0] · table[t + 1];  out = y · keep / (1 − p)   (keep ~ Bernoulli(1 − p))
(``dmd_fast.reference.encoder_embed``; the zero-frame rule of ``nn.positional``). ``table`` is the
sinusoidal table of the group's width, fp32 (row 0 zero). Dropout bits come from Philox
(``tl.rand``) keyed by an int64 [seed, offset] device tensor and the element's index in the group
(problem g's elements follow problem g − 1's), so the backward regenerates the mask.

Streams read U distinct inputs (a tensor may feed several streams: DMD's private features are the query
of two cross-modal encoders and the source of two others), each with its own T, B and E strides (no copy).

- Forward, one launch per group: ``encoder_embed_fwd_kernel``, grid (row blocks, streams).
- Backward, one launch per group: ``encoder_embed_bwd_kernel``, grid (row blocks, distinct inputs): the
  input's gradient is the sum over the streams that read it of dout · keep / (1 − p) · scale, in stream
  order (the positions are not differentiable; no atomics).
"""
from __future__ import annotations

import functools
import os
import struct

import torch
import triton
import triton.language as tl

from .grouped import DescriptorLayout, desc_f32, desc_i32, desc_problem, desc_ptr, descriptor_table, f32_bits
from .host_math import cdiv, next_pow2

# one row per stream (slot x: its input in the forward, its dout in the backward)
EMB = DescriptorLayout(scalars=("N", "B", "base", "thresh_bits", "inv_bits"), tensors=("x", "out"))
# backward: one row per distinct input first (its streams' rows follow, from row `first`), padded to EMB's width
EMB_IN = DescriptorLayout(scalars=("N", "B", "first", "count"), tensors=("dx",))
_IN_PAD = [0] * (EMB.width - EMB_IN.width)
C_W, C_N, C_B, C_BASE, C_P, C_INV = (EMB.constexpr(n) for n in ("width", "N", "B", "base", "thresh_bits", "inv_bits"))
C_X, C_OUT = (EMB.constexpr(n) for n in EMB.tensors)
C_IN_N, C_IN_B, C_FIRST, C_COUNT, C_DX = (EMB_IN.constexpr(n) for n in ("N", "B", "first", "count", "dx"))


@triton.jit
def _rows(desc, COL: tl.constexpr, o_t, o_b):
    """Offsets (BLOCK_M,) of rows (o_t, o_b) of the (T, B, E) tensor at slot COL (its t and b strides)."""
    return o_t.to(tl.int64) * tl.load(desc + COL + 1) + o_b.to(tl.int64) * tl.load(desc + COL + 2)


@triton.jit
def _cols(desc, COL: tl.constexpr, o_e):
    """Offsets (E_PAD,) of channels o_e of the tensor at slot COL (its e stride)."""
    return o_e.to(tl.int64) * tl.load(desc + COL + 3)


@triton.jit
def _keep(seed_ptr, desc, o_m, o_e, E: tl.constexpr):
    """Philox keep mask (BLOCK_M, E_PAD) of the problem's rows o_m (element index in the group as offset)."""
    seed = tl.load(seed_ptr)
    base = tl.load(seed_ptr + 1).to(tl.int32) + desc_i32(desc, C_BASE)
    offs = base + o_m[:, None] * E + o_e[None, :]
    return tl.rand(seed, offs) >= desc_f32(desc, C_P)


@triton.jit
def encoder_embed_fwd_kernel(
    desc, like, table, seed_ptr, scale_hi, scale_lo,
    E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(max N, BLOCK_M), G). Slot x: the stream's input (any strides); writes out (contiguous (T, B, E))."""
    desc = desc_problem(desc, tl.program_id(1), C_W)
    N = desc_i32(desc, C_N)
    m0 = tl.program_id(0) * BLOCK_M
    if m0 >= N:
        return
    B = desc_i32(desc, C_B)
    o_m, o_e = m0 + tl.arange(0, BLOCK_M), tl.arange(0, E_PAD)
    m_m, m_e = o_m < N, o_e < E
    m_me = m_m[:, None] & m_e[None, :]
    p_x = desc_ptr(desc, C_X, like) + _rows(desc, C_X, o_m // B, o_m % B)  # (BLOCK_M,) row starts
    b_x = tl.load(p_x[:, None] + _cols(desc, C_X, o_e)[None, :], mask=m_me, other=0.)  # (BLOCK_M, E_PAD)
    b_first = tl.load(p_x, mask=m_m, other=0.)  # (BLOCK_M,) channel 0
    # zero-frame rule: position t + 1 where channel 0 is non-zero, else row 0 (zero)
    b_pos = tl.where(b_first != 0., o_m // B + 1, 0)
    b_pe = tl.load(table + b_pos[:, None].to(tl.int64) * E + o_e[None, :], mask=m_me, other=0.)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    b_y = (scale * b_x.to(ACC)).to(like.dtype.element_ty).to(ACC) + b_pe.to(ACC)
    if DROPOUT:
        b_y = tl.where(_keep(seed_ptr, desc, o_m, o_e, E), b_y * desc_f32(desc, C_INV).to(ACC), 0.)
    p_out = desc_ptr(desc, C_OUT, like) + o_m.to(tl.int64)[:, None] * E + o_e[None, :]
    tl.store(p_out, b_y.to(like.dtype.element_ty), mask=m_me)


@triton.jit
def encoder_embed_bwd_kernel(
    desc, like, seed_ptr, scale_hi, scale_lo,
    E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (cdiv(max N, BLOCK_M), U). Program (i, u): rows block i of distinct input u's dx (contiguous), the
    sum over u's `count` stream rows (from row `first`; slot x: that stream's dout, any strides)."""
    d_in = desc_problem(desc, tl.program_id(1), C_W)
    N = desc_i32(d_in, C_IN_N)
    m0 = tl.program_id(0) * BLOCK_M
    if m0 >= N:
        return
    B = desc_i32(d_in, C_IN_B)
    first, count = desc_i32(d_in, C_FIRST), desc_i32(d_in, C_COUNT)
    o_m, o_e = m0 + tl.arange(0, BLOCK_M), tl.arange(0, E_PAD)
    m_m, m_e = o_m < N, o_e < E
    m_me = m_m[:, None] & m_e[None, :]
    o_t, o_b = o_m // B, o_m % B  # every stream of the input has its (T, B)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    b_dx = tl.zeros((BLOCK_M, E_PAD), dtype=ACC)  # (BLOCK_M, E_PAD)
    for k in range(count):
        d_s = desc_problem(desc, first + k, C_W)
        p_d = desc_ptr(d_s, C_X, like) + _rows(d_s, C_X, o_t, o_b)[:, None] + _cols(d_s, C_X, o_e)[None, :]
        b_d = tl.load(p_d, mask=m_me, other=0.).to(ACC)  # (BLOCK_M, E_PAD)
        if DROPOUT:
            b_d = tl.where(_keep(seed_ptr, d_s, o_m, o_e, E), b_d * desc_f32(d_s, C_INV).to(ACC), 0.)
        b_dx += b_d * scale
    p_dx = desc_ptr(d_in, C_DX, like) + o_m.to(tl.int64)[:, None] * E + o_e[None, :]
    tl.store(p_dx, b_dx.to(like.dtype.element_ty), mask=m_me)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

def _empty(shape, dtype, device) -> torch.Tensor:
    """Output allocation; tests patch this to poison outputs."""
    return torch.empty(shape, dtype=dtype, device=device)


_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def e_pad(E: int) -> int:
    return max(16, next_pow2(E))


def block_m(E: int, backward: bool = False) -> tuple[int, int]:
    """(BLOCK_M, num_warps): about 4096 elements per forward program, 2048 per backward program (whose
    loop over an input's streams carries an accumulator): no spills (compile_check_encoder_embed.py)."""
    return (64, 4) if _INTERPRETING else (max(16, (2048 if backward else 4096) // e_pad(E)), 4)


@functools.lru_cache(maxsize=64)
def _columns(dropout_p: float) -> tuple[int, int]:
    """(p as fp32 bits, 1 / (1 − p) as fp32 bits) of a problem's row."""
    return f32_bits(dropout_p), f32_bits(1.0 / (1.0 - dropout_p))


def _stream_rows(slot_x, outs, ps):
    """EMB rows of the G streams in stream order: slot x = slot_x[g] (its input, or its dout), slot out =
    outs[g] (or None); ``base``: the stream's first element index in the group (the Philox offset)."""
    rows, base = [], 0
    for x, out, p in zip(slot_x, outs, ps):
        N = x.shape[0] * x.shape[1]
        rows.append(EMB.pack((N, x.shape[1], base, *_columns(p)), (x, out)))
        base += N * x.shape[2]
    return rows


def embed_fwd_grouped(xs, index, table, seed, *, scale: float, dropout_p):
    """One launch: G streams, stream g reading xs[index[g]] (xs: distinct (T, B, E) inputs of one E, any
    strides) → G contiguous outputs. ``table`` (≥ max T + 1, E) fp32; ``seed`` int64 [seed, offset] on the
    device, or None when no p > 0."""
    streams = [xs[u] for u in index]
    E = xs[0].shape[2]
    outs = [_empty(x.shape, x.dtype, x.device) for x in streams]
    max_n = max(x.shape[0] * x.shape[1] for x in streams)
    if max_n == 0:
        return outs
    desc = descriptor_table(_stream_rows(streams, outs, dropout_p), xs[0].device, "grouped encoder embedding")
    bm, warps = block_m(E)
    drop = seed is not None
    encoder_embed_fwd_kernel[(cdiv(max_n, bm), len(streams))](
        desc, xs[0], table, seed if drop else table, *_hilo(scale),
        E=E, E_PAD=e_pad(E), BLOCK_M=bm, DROPOUT=drop, ACC=_acc(xs[0].dtype), num_warps=warps)
    return outs


def embed_bwd_grouped(douts, index, seed, *, scale: float, dropout_p):
    """One launch: dx of each distinct input u (max(index) + 1 of them, each read by some stream; contiguous)
    = the sum over the streams g with index[g] = u, in stream order, of dout_g · keep_g / (1 − p_g) · scale."""
    U = max(index) + 1
    order = sorted(range(len(douts)), key=lambda g: index[g])  # stable: stream order within an input
    like = [douts[index.index(u)] for u in range(U)]  # dx has its input's shape: any stream's dout
    E = douts[0].shape[2]
    dxs = [_empty(d.shape, d.dtype, d.device) for d in like]
    max_n = max(d.shape[0] * d.shape[1] for d in like)
    if max_n == 0:
        return dxs
    streams = _stream_rows(douts, [None] * len(douts), dropout_p)
    rows, first = [], U
    for u, dx in enumerate(dxs):
        count = index.count(u)
        rows.append(EMB_IN.pack((dx.shape[0] * dx.shape[1], dx.shape[1], first, count), (dx,)) + _IN_PAD)
        first += count
    rows += [streams[g] for g in order]
    desc = descriptor_table(rows, douts[0].device, "grouped encoder embedding backward")
    bm, warps = block_m(E, backward=True)
    drop = seed is not None
    encoder_embed_bwd_kernel[(cdiv(max_n, bm), U)](
        desc, douts[0], seed if drop else douts[0], *_hilo(scale),
        E=E, E_PAD=e_pad(E), BLOCK_M=bm, DROPOUT=drop, ACC=_acc(douts[0].dtype), num_warps=warps)
    return dxs


def _hilo(x: float) -> tuple[float, float]:
    """x as fp32 hi + lo (the scale stays exact in fp64)."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, float(x - hi)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32
