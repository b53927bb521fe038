"""Building blocks of the attention kernels: the grouped-problem layout and prologue, the online
softmax loop of the forward, and the key ranges that the masks leave visible.

Semantics and conventions: ``dmd_fast.kernels.attention``.
"""
from __future__ import annotations

import inspect

import triton
import triton.language as tl

from .attention_dropout import dropout_keep
from .grouped import DescriptorLayout, desc_f32, desc_i32, desc_problem, desc_ptr, desc_strided

# Descriptor row of a grouped problem (kernels/grouped.py): lengths, the problem's own dropout (byte
# threshold and the fp32 bits of its 1/(1-p) hi/lo pair), then a slot per tensor.
LAYOUT = DescriptorLayout(scalars=("T_q", "T_k", "thresh", "dr_hi", "dr_lo"),
                          tensors=("q", "k", "v", "o", "lse", "key_len", "do", "dq", "dk", "dv"))
C_W, C_T_Q, C_T_K, C_THRESH, C_DR_HI, C_DR_LO = (LAYOUT.constexpr(n) for n in ("width", "T_q", "T_k", "thresh", "dr_hi",
                                                                          "dr_lo"))
C_Q, C_K, C_V, C_O, C_LSE, C_KEY_LEN, C_DO, C_DQ, C_DK, C_DV = (LAYOUT.constexpr(n) for n in LAYOUT.tensors)
STRIDED = ("q", "k", "v", "o", "do", "dq", "dk", "dv")  # (B, H, T, D) tensors: b, h, t strides per problem

_STRIDE_ARGS = [f"s_{t}{a}" for t in STRIDED for a in "bht"]
_DNS = ["H", "T_q", "T_k", "THRESH", "i_g"] + _STRIDE_ARGS  # never specialised: no recompiles per length


def jit_unspecialised(fn):
    """triton.jit with lengths, heads, threshold and the length-dependent strides unspecialised."""
    names = inspect.signature(fn).parameters
    return triton.jit(fn, do_not_specialize=[n for n in _DNS if n in names])


@triton.jit
def hilo(hi, lo, ACC: tl.constexpr):
    """A float scalar passed as fp32 hi + lo parts, rebuilt in ACC (keeps fp64 scales exact)."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def grouped_problem(desc, rng, THRESH, dr_hi, dr_lo, DROPOUT: tl.constexpr):
    """This program's grouped problem (grid axis 2): its descriptor row, lengths, Philox offset and dropout."""
    i_g = tl.program_id(2)
    desc = desc_problem(desc, i_g, C_W)
    if DROPOUT:
        THRESH, dr_hi, dr_lo = desc_i32(desc, C_THRESH), desc_f32(desc, C_DR_HI), desc_f32(desc, C_DR_LO)
    return desc, desc_i32(desc, C_T_Q), desc_i32(desc, C_T_K), rng + i_g, THRESH, dr_hi, dr_lo


@triton.jit
def grouped_inputs(desc, q, k, v, o, lse):
    """The forward's tensors of a grouped problem: q, k, v, o with their (b, h, t) strides, and lse."""
    q, s_qb, s_qh, s_qt = desc_strided(desc, C_Q, q)
    k, s_kb, s_kh, s_kt = desc_strided(desc, C_K, k)
    v, s_vb, s_vh, s_vt = desc_strided(desc, C_V, v)
    o, s_ob, s_oh, s_ot = desc_strided(desc, C_O, o)
    return (q, k, v, o, desc_ptr(desc, C_LSE, lse),
            s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot)


@triton.jit
def problem_prologue(seed_ptr, desc, q, k, v, o, lse, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt,
                     s_ob, s_oh, s_ot, T_q, T_k, THRESH, dr_hi, dr_lo,
                     GROUPED: tl.constexpr, DROPOUT: tl.constexpr):
    """Every attention kernel's start: the Philox seed and offset, and with GROUPED this program's
    problem from its descriptor row (lengths, dropout, q, k, v, o with their strides, lse); otherwise
    the arguments as given. (Optional tensors — key_len, the row itself — stay with the caller: a jit
    function cannot return None.)"""
    seed, rng = 0, 0
    if DROPOUT:
        seed, rng = tl.load(seed_ptr), tl.load(seed_ptr + 1)
    if GROUPED:
        desc, T_q, T_k, rng, THRESH, dr_hi, dr_lo = grouped_problem(desc, rng, THRESH, dr_hi, dr_lo, DROPOUT)
        (q, k, v, o, lse, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh,
         s_ot) = grouped_inputs(desc, q, k, v, o, lse)
    return (seed, rng, T_q, T_k, THRESH, dr_hi, dr_lo, q, k, v, o, lse,
            s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot)


@triton.jit
def fwd_key_loop(b_acc, b_m, b_l, b_q, p_k, p_v, s_kt, s_vt, o_kT, o_v, o_m, m_d, lo, hi, n_vis, off,
              seed, rng, i_bh, THRESH,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              DROPOUT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """Online softmax over key blocks [lo, hi); MASKED blocks apply the visibility mask."""
    for n0 in range(lo, hi, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < n_vis
        if MASKED:
            m_kT = m_d[:, None] & m_n[None, :]
            m_v = m_n[:, None] & m_d[None, :]
        else:
            m_kT = m_d[:, None]
            m_v = m_d[None, :]
        n0l = tl.cast(n0, tl.int64)
        # (D_PAD, BLOCK_N), (BLOCK_N, D_PAD)
        b_kT = tl.load(p_k + n0l * s_kt + o_kT, mask=m_kT, other=0.)
        b_v = tl.load(p_v + n0l * s_vt + o_v, mask=m_v, other=0.)
        # (BLOCK_M, BLOCK_N) scores, log2 domain
        b_s = tl.dot(b_q, b_kT, input_precision=PRECISION, out_dtype=ACC)
        if MASKED:
            m_s = m_n[None, :]
            if CAUSAL:
                m_s = m_s & (o_n[None, :] <= o_m[:, None] + off)
            b_s = tl.where(m_s, b_s, float("-inf"))
        # (BLOCK_M,)
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        if MASKED:
            b_mn = tl.where(b_mn == float("-inf"), 0., b_mn)  # finite pivot for empty rows
        b_p = tl.math.exp2(b_s - b_mn[:, None])
        b_alpha = tl.math.exp2(b_m - b_mn)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        if DROPOUT:
            b_p = tl.where(dropout_keep(seed, rng, i_bh, o_m, n0, THRESH, BLOCK_M, BLOCK_N), b_p, 0.)
        # (BLOCK_M, D_PAD)
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None],
                       input_precision=PRECISION, out_dtype=ACC)
        b_m = b_mn
    return b_acc, b_m, b_l


@triton.jit
def visible_end(key_len, i_b, T_k, KEY_LEN: tl.constexpr):
    """Number of keys sample i_b may see before the causal rule: min(T_k, key_len[b]) >= 0."""
    n_vis = T_k
    if KEY_LEN:
        n_vis = tl.maximum(tl.minimum(tl.load(key_len + i_b), T_k), 0)
    return n_vis


@triton.jit
def key_range(key_len, i_b, i_m, T_q, T_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, KEY_LEN: tl.constexpr):
    """Keys of query block i_m: visible count n_vis, blocks [0, n_full) unmasked, [n_full, n_end) masked."""
    n_vis = visible_end(key_len, i_b, T_k, KEY_LEN)
    off = tl.abs(T_k - T_q)
    n_end = n_vis
    n_full = n_vis
    if CAUSAL:
        n_end = tl.minimum(n_vis, tl.minimum(i_m * BLOCK_M + BLOCK_M, T_q) + off)
        n_full = tl.minimum(n_vis, i_m * BLOCK_M + off + 1)
    return n_vis, off, n_full // BLOCK_N * BLOCK_N, n_end
