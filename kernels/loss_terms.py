"""Fused mean-reduced loss terms in Triton: every term, its group sums and the weighted total, grouped.

Per term t, inputs a and b viewed as (D0, D1, D2) with any strides:
    l1:      v_t = mean |a − b|                      mse: v_t = mean (a − b)²
    cosine:  cos[i, k] = Σ_j a·b / √((Σ_j a² + eps)(Σ_j b² + eps)) over the middle axis j,
             v_t = mean over (i, k) of max(cos, 0)   (CosineEmbeddingLoss with target −1)
    value:   v_t = a, a one-element loss computed elsewhere (a GD unit's total, the margin loss)
Outputs: values (n + G,) = the n term values, then the sum of each of G groups; total = Σ_t w_t · v_t.
(``dmd_fast.reference.loss_terms``.)

- Forward, two launches: ``loss_terms_partial_kernel``, grid (blocks, n): one partial sum per block of a
  term (elements, or columns (i, k) of a cosine term); ``loss_terms_reduce_kernel``, one program: the
  partials in a fixed order (deterministic, no atomics), the means, group sums and the total.
- Backward, one launch: ``loss_terms_bwd_kernel``, the partial kernel's grid: with the coefficient
  c_t = w_t·g_total + g_values[t] + g_values[n + group_t], da and db of every term, written contiguous
  (D0, D1, D2) into the slots the host gives (one flat buffer; a zero address: not needed).
"""
from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl

from .grouped import DescriptorLayout, desc_i32, desc_problem, desc_ptr, descriptor_table
from .host_math import cdiv, next_pow2

KINDS = ("l1", "mse", "cosine", "value")
K_L1, K_MSE, K_COS, K_VALUE = (tl.constexpr(i) for i in range(4))

TERM = DescriptorLayout(
    scalars=("kind", "D0", "D1", "D2", "count", "blocks", "group", "w_f64_bits", "has_da", "has_db"),
    tensors=("a", "b", "da", "db"),
)
C_W = TERM.constexpr("width")
C_KIND, C_D0, C_D1, C_D2, C_COUNT, C_BLOCKS, C_GROUP, C_WEIGHT, C_HAS_DA, C_HAS_DB = (
    TERM.constexpr(n) for n in TERM.scalars)
C_A, C_B, C_DA, C_DB = (TERM.constexpr(n) for n in TERM.tensors)


@triton.jit
def _elements(desc, COL: tl.constexpr, o, D1, D2):
    """Offsets of the linear (i0, i1, i2) indices o (i2 fastest) in the strided tensor at slot COL."""
    i2 = o % D2
    r = o // D2
    i1, i0 = r % D1, r // D1
    return (i0.to(tl.int64) * tl.load(desc + COL + 1) + i1.to(tl.int64) * tl.load(desc + COL + 2)
            + i2.to(tl.int64) * tl.load(desc + COL + 3))


@triton.jit
def _columns(desc, COL: tl.constexpr, c, D0):
    """Offsets of the columns c = (i, k) of a cosine term (i fastest) at j = 0, and the j stride."""
    i, k = c % D0, c // D0
    return (i.to(tl.int64) * tl.load(desc + COL + 1) + k.to(tl.int64) * tl.load(desc + COL + 3),
            tl.load(desc + COL + 2))


@triton.jit
def _cosine_sums(desc, like, c, m_c, D0, D1, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """(Σ_j a·b, Σ_j a², Σ_j b²) per column c (BLOCK_C,) of a cosine term."""
    col_a, s_a = _columns(desc, C_A, c, D0)
    col_b, s_b = _columns(desc, C_B, c, D0)
    p_a, p_b = desc_ptr(desc, C_A, like), desc_ptr(desc, C_B, like)
    ab = tl.zeros((BLOCK_C,), ACC)
    aa = tl.zeros((BLOCK_C,), ACC)
    bb = tl.zeros((BLOCK_C,), ACC)
    for j0 in range(0, D1, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        m = (j < D1)[:, None] & m_c[None, :]
        jj = j.to(tl.int64)[:, None]
        b_a = tl.load(p_a + jj * s_a + col_a[None, :], mask=m, other=0.).to(ACC)
        b_b = tl.load(p_b + jj * s_b + col_b[None, :], mask=m, other=0.).to(ACC)
        ab += tl.sum(b_a * b_b, 0)
        aa += tl.sum(b_a * b_a, 0)
        bb += tl.sum(b_b * b_b, 0)
    return ab, aa, bb


@triton.jit
def loss_terms_partial_kernel(
    desc, like, partial, n_blocks, eps,
    BLOCK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (max blocks, n). partial[t, i]: the sum over block i of term t (values, or clamped cosines)."""
    t, i = tl.program_id(1), tl.program_id(0)
    desc = desc_problem(desc, t, C_W)
    if i >= desc_i32(desc, C_BLOCKS):
        return
    kind = desc_i32(desc, C_KIND)
    D0, D1, D2 = desc_i32(desc, C_D0), desc_i32(desc, C_D1), desc_i32(desc, C_D2)
    if kind == K_COS:
        c = i * BLOCK_C + tl.arange(0, BLOCK_C)
        m_c = c < D0 * D2
        ab, aa, bb = _cosine_sums(desc, like, c, m_c, D0, D1, BLOCK_R, BLOCK_C, ACC)
        cos = ab / tl.sqrt((aa + eps) * (bb + eps))
        part = tl.sum(tl.where(m_c, tl.maximum(cos, 0.), 0.), 0)
    elif kind == K_VALUE:
        part = tl.load(desc_ptr(desc, C_A, like)).to(ACC)
    else:
        o = i * BLOCK + tl.arange(0, BLOCK)
        m = o < D0 * D1 * D2
        b_a = tl.load(desc_ptr(desc, C_A, like) + _elements(desc, C_A, o, D1, D2), mask=m, other=0.).to(ACC)
        b_b = tl.load(desc_ptr(desc, C_B, like) + _elements(desc, C_B, o, D1, D2), mask=m, other=0.).to(ACC)
        d = b_a - b_b
        part = tl.sum(tl.where(kind == K_L1, tl.abs(d), d * d), 0)
    tl.store(partial + t.to(tl.int64) * n_blocks + i, part)


@triton.jit
def loss_terms_reduce_kernel(
    desc, partial, values, total, n_terms, n_groups, n_blocks,
    T_PAD: tl.constexpr, G_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """One program: values[t] = Σ_i partial[t, i] / count_t, values[n + g] = Σ_{group_t = g} values[t],
    total = Σ_t w_t values[t] (the term order, then the block order: deterministic)."""
    o_t = tl.arange(0, T_PAD)
    m_t = o_t < n_terms
    rows = desc + o_t.to(tl.int64) * C_W
    blocks = tl.load(rows + C_BLOCKS, mask=m_t, other=0).to(tl.int32)
    acc = tl.zeros((T_PAD,), partial.dtype.element_ty)
    for b0 in range(0, n_blocks, BLOCK_B):
        o_b = b0 + tl.arange(0, BLOCK_B)
        m = m_t[:, None] & (o_b[None, :] < blocks[:, None])
        acc += tl.sum(tl.load(partial + o_t.to(tl.int64)[:, None] * n_blocks + o_b[None, :], mask=m, other=0.), 1)
    count = tl.load(rows + C_COUNT, mask=m_t, other=1).to(acc.dtype)
    v = acc / count
    tl.store(values + o_t, v, mask=m_t)
    group = tl.load(rows + C_GROUP, mask=m_t, other=-1).to(tl.int32)
    o_g = tl.arange(0, G_PAD)
    sums = tl.sum(tl.where(group[None, :] == o_g[:, None], v[None, :], 0.), 1)
    tl.store(values + n_terms + o_g, sums, mask=o_g < n_groups)
    w = tl.load(rows + C_WEIGHT, mask=m_t, other=0).to(tl.float64, bitcast=True).to(acc.dtype)
    tl.store(total, tl.sum(w * v, 0))


@triton.jit
def loss_terms_bwd_kernel(
    desc, like, g_values, g_total, n_terms, eps,
    HAS_GV: tl.constexpr, HAS_GT: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (max blocks, n): da, db of term t's block i, scaled by c_t / count_t."""
    t, i = tl.program_id(1), tl.program_id(0)
    desc = desc_problem(desc, t, C_W)
    if i >= desc_i32(desc, C_BLOCKS):
        return
    kind = desc_i32(desc, C_KIND)
    coef = tl.load(desc + C_WEIGHT).to(tl.float64, bitcast=True).to(ACC)
    if HAS_GT:
        coef = coef * tl.load(g_total).to(ACC)
    else:
        coef = coef * 0.
    if HAS_GV:
        group = desc_i32(desc, C_GROUP)
        g_group = tl.load(g_values + n_terms + tl.maximum(group, 0)).to(ACC)
        coef = coef + tl.load(g_values + t).to(ACC) + tl.where(group >= 0, g_group, 0.)
    coef = coef / tl.load(desc + C_COUNT).to(ACC)
    has_da, has_db = desc_i32(desc, C_HAS_DA) != 0, desc_i32(desc, C_HAS_DB) != 0
    D0, D1, D2 = desc_i32(desc, C_D0), desc_i32(desc, C_D1), desc_i32(desc, C_D2)
    if kind == K_COS:
        c = i * BLOCK_C + tl.arange(0, BLOCK_C)
        m_c = c < D0 * D2
        ab, aa, bb = _cosine_sums(desc, like, c, m_c, D0, D1, BLOCK_R, BLOCK_C, ACC)
        na, nb = aa + eps, bb + eps
        inv = 1. / tl.sqrt(na * nb)
        cos = ab * inv
        gate = tl.where(m_c & (cos >= 0.), coef, 0.)  # clamp_min's gradient passes where cos >= 0
        col_a, s_a = _columns(desc, C_A, c, D0)
        col_b, s_b = _columns(desc, C_B, c, D0)
        p_a, p_b = desc_ptr(desc, C_A, like), desc_ptr(desc, C_B, like)
        out_col = (c % D0).to(tl.int64) * D1 * D2 + (c // D0)  # contiguous (i, j, k) at j = 0
        for j0 in range(0, D1, BLOCK_R):
            j = j0 + tl.arange(0, BLOCK_R)
            m = (j < D1)[:, None] & m_c[None, :]
            jj = j.to(tl.int64)[:, None]
            b_a = tl.load(p_a + jj * s_a + col_a[None, :], mask=m, other=0.).to(ACC)
            b_b = tl.load(p_b + jj * s_b + col_b[None, :], mask=m, other=0.).to(ACC)
            o_out = jj * D2 + out_col[None, :]
            if has_da:
                g_a = gate[None, :] * (b_b * inv[None, :] - cos[None, :] * b_a / na[None, :])
                tl.store(desc_ptr(desc, C_DA, like) + o_out, g_a.to(like.dtype.element_ty), mask=m)
            if has_db:
                g_b = gate[None, :] * (b_a * inv[None, :] - cos[None, :] * b_b / nb[None, :])
                tl.store(desc_ptr(desc, C_DB, like) + o_out, g_b.to(like.dtype.element_ty), mask=m)
    elif kind == K_VALUE:
        if has_da:
            tl.store(desc_ptr(desc, C_DA, like), coef.to(like.dtype.element_ty))
    else:
        o = i * BLOCK + tl.arange(0, BLOCK)
        m = o < D0 * D1 * D2
        b_a = tl.load(desc_ptr(desc, C_A, like) + _elements(desc, C_A, o, D1, D2), mask=m, other=0.).to(ACC)
        b_b = tl.load(desc_ptr(desc, C_B, like) + _elements(desc, C_B, o, D1, D2), mask=m, other=0.).to(ACC)
        d = b_a - b_b
        if kind == K_L1:
            g = tl.where(d > 0., coef, tl.where(d < 0., -coef, 0.))
        else:
            g = 2. * d * coef
        if has_da:
            tl.store(desc_ptr(desc, C_DA, like) + o, g.to(like.dtype.element_ty), mask=m)
        if has_db:
            tl.store(desc_ptr(desc, C_DB, like) + o, (-g).to(like.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def blocks() -> tuple[int, int, int, int]:
    """(BLOCK elements, BLOCK_R, BLOCK_C columns, num_warps) (compile_check_loss_terms.py)."""
    return (4096, 16, 256, 4) if _INTERPRETING else (1024, 8, 128, 8)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _term_blocks(kind: int, shape) -> tuple[int, int]:
    """(count the mean divides by, blocks of the partial and backward grids) of a term."""
    BLOCK, _, BLOCK_C, _ = blocks()
    if kind == KINDS.index("value"):
        return 1, 1
    D0, D1, D2 = shape
    if kind == KINDS.index("cosine"):
        return D0 * D2, cdiv(D0 * D2, BLOCK_C)
    return D0 * D1 * D2, cdiv(D0 * D1 * D2, BLOCK)


def _f64_bits(x: float) -> int:
    """The fp64 bit pattern of x as a signed 64-bit integer (a weight column; the kernels bitcast it)."""
    return struct.unpack("q", struct.pack("d", x))[0]


def _rows(kinds, a_s, b_s, groups, weights, grads=None):
    rows = []
    for t, (kind, a, b) in enumerate(zip(kinds, a_s, b_s)):
        count, n_blk = _term_blocks(kind, a.shape)
        da, db = grads[t] if grads is not None else (None, None)
        scalars = (kind, *a.shape, count, n_blk, groups[t], _f64_bits(weights[t]),
                   int(da is not None), int(db is not None))
        rows.append(TERM.pack(scalars, (a, b, da, db)))
    return rows


def loss_terms_fwd(kinds, a_s, b_s, groups, weights, n_groups: int, eps: float):
    """kinds (n,) indices into KINDS; a_s (n,) tensors (D0, D1, D2) ((1, 1, 1) for "value");
    b_s: the b of each term (a's shape), None for "value". → (values (n + G,), total ()), in fp32 (fp64
    for fp64 inputs). Two launches."""
    like = a_s[0]
    n = len(kinds)
    acc = acc_dtype(like.dtype)
    values = torch.empty(n + n_groups, dtype=acc, device=like.device)
    total = torch.empty((), dtype=acc, device=like.device)
    rows = _rows(kinds, a_s, b_s, groups, weights)
    desc = descriptor_table(rows, like.device, "fused loss terms")
    n_blocks = max(r[TERM.col("blocks")] for r in rows)
    partial = torch.empty((n, n_blocks), dtype=acc, device=like.device)
    BLOCK, BLOCK_R, BLOCK_C, warps = blocks()
    loss_terms_partial_kernel[(n_blocks, n)](
        desc, like, partial, n_blocks, eps,
        BLOCK=BLOCK, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, ACC=_acc(like.dtype), num_warps=warps)
    loss_terms_reduce_kernel[(1,)](
        desc, partial, values, total, n, n_groups, n_blocks,
        T_PAD=max(16, next_pow2(n)), G_PAD=max(16, next_pow2(n_groups)), BLOCK_B=64, num_warps=warps)
    return values, total


def loss_terms_bwd(kinds, a_s, b_s, groups, weights, needs, g_values, g_total, eps: float):
    """One launch: [(da or None, db or None)] per term, contiguous in a's shape, from the gradients of
    values (n + G,) and total (either may be None); ``needs`` [(bool, bool)] says which to write."""
    like = a_s[0]
    sizes = [(a.numel() if na else 0, b.numel() if b is not None and nb else 0) for a, b, (na, nb) in
             zip(a_s, b_s, needs)]
    flat = torch.empty(sum(x + y for x, y in sizes), dtype=like.dtype, device=like.device)
    grads, o = [], 0
    for a, (sa, sb) in zip(a_s, sizes):
        da = flat[o:o + sa].view(a.shape) if sa else None
        db = flat[o + sa:o + sa + sb].view(a.shape) if sb else None
        grads.append((da, db))
        o += sa + sb
    if g_values is None and g_total is None:
        return [(None if da is None else da.zero_(), None if db is None else db.zero_()) for da, db in grads]
    rows = _rows(kinds, a_s, b_s, groups, weights, grads)
    desc = descriptor_table(rows, like.device, "fused loss terms backward")
    n_blocks = max(r[TERM.col("blocks")] for r in rows)
    BLOCK, BLOCK_R, BLOCK_C, warps = blocks()
    loss_terms_bwd_kernel[(n_blocks, len(kinds))](
        desc, like, g_values if g_values is not None else flat, g_total if g_total is not None else flat,
        len(kinds), eps, HAS_GV=g_values is not None, HAS_GT=g_total is not None,
        BLOCK=BLOCK, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, ACC=_acc(like.dtype), num_warps=warps)
    return grads
