"""Reference cross-modal attention: O = dropout(softmax(scale · Q Kᵀ + mask)) · V.

This is the oracle for the Triton kernel (``dmd_fast.kernels.attention``) and reproduces
upstream MulT/DMD ``MultiheadAttention`` (bmm, additive −inf mask, softmax in fp32, dropout,
bmm) with two extensions that upstream does not have: per-sample key lengths and a defined
output (zeros) for a query row that sees no key.
"""

from __future__ import annotations

import torch


def offset_causal_mask(len_q: int, len_k: int, device=None) -> torch.Tensor:
    """DMD's rule: query i sees key j iff j <= i + |len_k − len_q|. Returns bool (len_q, len_k)."""
    i = torch.arange(len_q, device=device).unsqueeze(1)
    j = torch.arange(len_k, device=device).unsqueeze(0)
    return j <= i + abs(len_k - len_q)


def visible_mask(
    batch: int, len_q: int, len_k: int, *, key_lengths=None, offset_causal=False, device=None
) -> torch.Tensor:
    """Bool (B, 1, Lq, Lk): True where query i may attend to key j of sample b."""
    vis = torch.ones(batch, 1, len_q, len_k, dtype=torch.bool, device=device)
    if offset_causal:
        vis = vis & offset_causal_mask(len_q, len_k, device)
    if key_lengths is not None:
        j = torch.arange(len_k, device=device).view(1, 1, 1, len_k)
        vis = vis & (j < key_lengths.to(device).view(batch, 1, 1, 1))
    return vis


def cross_modal_attention(
    q,
    k,
    v,
    *,
    key_lengths=None,
    offset_causal=False,
    dropout_p=0.0,
    scale=None,
    keep_mask=None,
    generator=None,
    return_weights=False,
):
    """Attention per (batch, head) on (B, H, L, D) tensors.

    Args:
        q: (B, H, Lq, D) queries (target modality).
        k, v: (B, H, Lk, D) keys and values (source modality).
        key_lengths: optional int (B,): keys j >= key_lengths[b] are invisible.
        offset_causal: apply DMD's mask j <= i + |Lk − Lq|.
        dropout_p: dropout on the attention weights, scaled by 1/(1−p).
        scale: score scale, default D**−0.5.
        keep_mask: optional bool (B, H, Lq, Lk) dropout keep-mask to use instead of drawing one
            (parity with the kernel's mask).
        generator: torch.Generator for the drawn mask when ``keep_mask`` is None.
        return_weights: also return the post-dropout weights P (B, H, Lq, Lk).
    Returns:
        O (B, H, Lq, D) in q's dtype (and P if asked). Rows with no visible key give O = 0.
    """
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if scale is None:
        scale = D**-0.5
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    vis = visible_mask(B, Lq, Lk, key_lengths=key_lengths, offset_causal=offset_causal, device=q.device)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    row_has_key = vis.any(dim=-1, keepdim=True)
    scores = scores.to(compute).masked_fill(~vis, float("-inf"))
    # A row with no visible key gets finite dummy scores and weight 0: O = 0, gradients 0.
    scores = torch.where(row_has_key, scores, torch.zeros_like(scores))
    probs = (torch.softmax(scores, dim=-1) * row_has_key).to(q.dtype)
    if dropout_p > 0.0:
        if keep_mask is None:
            if generator is None:  # rand_like also traces under torch.compile with dynamic shapes
                keep_mask = torch.rand_like(probs, dtype=torch.float32) >= dropout_p
            else:
                keep_mask = torch.rand(probs.shape, generator=generator, device=probs.device) >= dropout_p
        probs = probs * keep_mask.to(probs.dtype) / (1.0 - dropout_p)
    out = torch.matmul(probs, v)
    return (out, probs) if return_weights else out
