"""MulT/DMD transformer encoder (pre-LN), upstream-compatible names and buffers.

Self-attention: ``TransformerEncoder(x)``; cross-modal: ``TransformerEncoder(x, x_k, x_v)``
where the query stream x is updated per layer and the embedded source x_k, x_v is fixed and
re-normalised by each layer's own LN0 (the same LayerNorm as the query).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dmd_fast import validation as check
from dmd_fast.nn.attention import MultiheadAttention
from dmd_fast.nn.positional import SinusoidalPositionalEmbedding


def xavier_linear(in_features, out_features, bias=True) -> nn.Linear:
    """Linear with xavier-uniform weight and zero bias (upstream's ``Linear``)."""
    m = nn.Linear(in_features, out_features, bias)
    nn.init.xavier_uniform_(m.weight)
    if bias:
        nn.init.constant_(m.bias, 0.0)
    return m


def resolve_offset_causal(offset_causal, attn_mask) -> bool:
    """The offset-causal flag; ``attn_mask`` is upstream MulT's name for it (a keyword alias)."""
    if attn_mask is None:
        return check.boolean(offset_causal, "offset_causal")
    attn_mask = check.boolean(attn_mask, "attn_mask")
    if check.boolean(offset_causal, "offset_causal") and not attn_mask:
        raise ValueError("attn_mask: upstream's name for offset_causal; got offset_causal=True and attn_mask=False")
    return attn_mask


class TransformerEncoderLayer(nn.Module):
    """x (Tq, B, E) [, x_k, x_v (Tk, B, E)] → (Tq, B, E): pre-LN MHA block then pre-LN FFN (4E)."""

    def __init__(
        self,
        embed_dim,
        num_heads=4,
        attn_dropout=0.1,
        relu_dropout=0.1,
        res_dropout=0.1,
        offset_causal=False,
        backend="auto",
        *,
        attn_mask=None,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.self_attn = MultiheadAttention(embed_dim, num_heads, attn_dropout=attn_dropout, backend=backend)
        self.offset_causal = resolve_offset_causal(offset_causal, attn_mask)
        self.relu_dropout = check.probability(relu_dropout, "relu_dropout")
        self.res_dropout = check.probability(res_dropout, "res_dropout")
        self.fc1 = xavier_linear(embed_dim, 4 * embed_dim)
        self.fc2 = xavier_linear(4 * embed_dim, embed_dim)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(embed_dim) for _ in range(2)])

    def heads(self, x, x_k=None, x_v=None, last_row=False):
        """LN0 then the attention projections: (q, k, v) as (B, H, L, D) views; q is pre-scaled unless the
        kernel applies the scale (``self_attn.attention_scale``). ``last_row``: q of the last query row
        only, (B, H, 1, D) (keys and values still come from every row)."""
        mha = self.self_attn
        if (x_k is None) != (x_v is None):
            raise ValueError(
                f"{'x_v' if x_v is None else 'x_k'}: is None while the other is given; pass both "
                "(cross-modal attention) or neither (self-attention)"
            )
        h = self.layer_norms[0](x)
        h_q = h[-1:] if last_row else h
        if x_k is None and x_v is None:
            q, k, v = mha.project(h_q, h, h)
        else:
            q, k, v = mha.project(h_q, self.layer_norms[0](x_k), self.layer_norms[0](x_v))
        return mha._heads(q), mha._heads(k), mha._heads(v)

    def finish(self, x, o):
        """Residual MHA output (heads o (B, H, Tq, D)) then the residual pre-LN FFN."""
        x = x + F.dropout(self.self_attn.merge(o), p=self.res_dropout, training=self.training)
        h = F.relu(self.fc1(self.layer_norms[1](x)))
        h = F.dropout(h, p=self.relu_dropout, training=self.training)
        return x + F.dropout(self.fc2(h), p=self.res_dropout, training=self.training)

    def forward(self, x, x_k=None, x_v=None, key_lengths=None, last_row=False):
        """``last_row=True``: only the last query row, (1, B, E), equal to ``forward(...)[-1:]`` (the
        last row sees every key under the offset-causal rule, as does a single query row)."""
        qh, kh, vh = self.heads(x, x_k, x_v, last_row=last_row)
        o = self.self_attn.attend(qh, kh, vh, offset_causal=self.offset_causal, key_lengths=key_lengths)
        if self.self_attn.record_weights:
            self.self_attn.head_averaged_weights(qh, kh, vh, offset_causal=self.offset_causal, key_lengths=key_lengths)
        return self.finish(x[-1:] if last_row else x, o)


class TransformerEncoder(nn.Module):
    """Embedding prologue (√E·x + PE, dropout), ``layers`` pre-LN layers, final LayerNorm.

    Inputs are sequence-first (T, B, E). Carries upstream's ``version`` and
    ``embed_positions._float_tensor`` buffers so upstream checkpoints load strictly.
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        layers,
        attn_dropout=0.0,
        relu_dropout=0.0,
        res_dropout=0.0,
        embed_dropout=0.0,
        offset_causal=False,
        backend="auto",
        *,
        attn_mask=None,
    ):
        super().__init__()
        check.dim(embed_dim, "embed_dim")
        check.integer(layers, "layers", low=0)
        self.dropout = check.probability(embed_dropout, "embed_dropout")
        self.attn_dropout = attn_dropout
        self.embed_dim = embed_dim
        self.embed_scale = math.sqrt(embed_dim)
        self.embed_positions = SinusoidalPositionalEmbedding(embed_dim)
        self.offset_causal = resolve_offset_causal(offset_causal, attn_mask)
        self.layers = nn.ModuleList(
            [
                TransformerEncoderLayer(
                    embed_dim,
                    num_heads=num_heads,
                    attn_dropout=attn_dropout,
                    relu_dropout=relu_dropout,
                    res_dropout=res_dropout,
                    offset_causal=self.offset_causal,
                    backend=backend,
                )
                for _ in range(layers)
            ]
        )
        self.register_buffer("version", torch.tensor([2.0]))
        self.layer_norm = nn.LayerNorm(embed_dim)

    def embed(self, x_in):
        """√E·x + PE(x), then embedding dropout. (T, B, E) → (T, B, E)."""
        x = self.embed_scale * x_in + self.embed_positions(x_in)
        return F.dropout(x, p=self.dropout, training=self.training)

    def check_inputs(self, x_in, x_in_k=None, x_in_v=None):
        """x_in (Tq, B, E) and, for cross-modal attention, both x_in_k and x_in_v (Tk, B, E); T, B >= 1."""
        E = self.embed_dim
        if (x_in_k is None) != (x_in_v is None):
            given, missing = ("x_in_k", "x_in_v") if x_in_v is None else ("x_in_v", "x_in_k")
            raise ValueError(
                f"{missing}: is None while {given} is given; pass both (cross-modal attention) or "
                "neither (self-attention)"
            )
        params = self.layer_norm.weight
        for name, t in (("x_in", x_in), ("x_in_k", x_in_k), ("x_in_v", x_in_v)):
            if t is None:
                continue
            check.tensor(t, name, ndim=3, layout=f"(T, B, E={E})", floating=True)
            if t.shape[2] != E or t.shape[1] != x_in.shape[1]:
                raise ValueError(f"{name}: expected shape (T, B={x_in.shape[1]}, E={E}), got {tuple(t.shape)}")
            check.non_empty(t, name, (0, 1), "(T, B, E)")
            check.module_dtype(t, name, params, "the encoder")
        if x_in_k is not None and x_in_k.shape != x_in_v.shape:
            raise ValueError(f"x_in_v: expected the shape of x_in_k {tuple(x_in_k.shape)}, got {tuple(x_in_v.shape)}")

    def forward(self, x_in, x_in_k=None, x_in_v=None, key_lengths=None, last_row=False):
        """(Tq, B, E) out; ``last_row=True`` computes only the last query row in the last layer and
        returns (1, B, E), equal to the full output's ``[-1:]`` (inference: DMD reads ``h[-1]`` only)."""
        self.check_inputs(x_in, x_in_k, x_in_v)
        x = self.embed(x_in)
        cross = x_in_k is not None
        if cross:
            x_k, x_v = self.embed(x_in_k), self.embed(x_in_v)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            lr = last_row and i == last
            x = (
                layer(x, x_k, x_v, key_lengths=key_lengths, last_row=lr)
                if cross
                else layer(x, key_lengths=key_lengths, last_row=lr)
            )
        return self.layer_norm(x)
