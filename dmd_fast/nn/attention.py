"""MulT/DMD-compatible multi-head attention whose core runs the fused kernel or the reference.

Parameter names match upstream (``in_proj_weight`` (3E, E), ``in_proj_bias`` (3E,),
``out_proj``), so upstream checkpoints load strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Parameter

from dmd_fast import validation as check
from dmd_fast.nn.packed_projection import packed_in_projection
from dmd_fast.ops.backend import check_backend_name, resolve_backend


class MultiheadAttention(nn.Module):
    """Sequence-first (T, B, E) multi-head attention, as upstream MulT/DMD.

    Args:
        embed_dim: E. num_heads: H (E must be divisible by H).
        attn_dropout: dropout on the attention weights.
        backend: "auto" | "triton" | "reference" for the attention core.
    forward(query (Tq, B, E), key (Tk, B, E), value (Tk, B, E), attn_mask=None, *,
            offset_causal=False, key_lengths=None, need_weights=False)
        attn_mask: optional additive float mask (Tq, Tk) as upstream passes (0 visible, -inf masked);
            a dense mask always runs the reference core; a row masked everywhere gives output 0.
            ``offset_causal=True`` expresses DMD's mask without a tensor and runs the kernel.
        Returns (out (Tq, B, E), weights (B, Tq, Tk) head-averaged or None).
    """

    def __init__(self, embed_dim, num_heads, attn_dropout=0.0, bias=True, backend="auto"):
        super().__init__()
        embed_dim, num_heads = check.dim(embed_dim, "embed_dim"), check.dim(num_heads, "num_heads")
        check.divisible(embed_dim, num_heads)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.attn_dropout = check.probability(attn_dropout, "attn_dropout")
        check.boolean(bias, "bias")
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.backend = check_backend_name(backend)
        self.record_weights = False  # when True, keep head-averaged weights in ``last_weights``
        self.last_weights = None
        self.in_proj_weight = Parameter(torch.empty(3 * embed_dim, embed_dim))
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * embed_dim))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)

    def _in_proj_all(self, x):
        """x @ in_proj_weightᵀ + in_proj_bias (the whole packed weight: no slice, so no slice backward)."""
        return F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def folds_scale(self, device) -> bool:
        """True when the core runs the kernel, which applies head_dim^-0.5 to q·kᵀ itself (no separate
        q * scaling kernel forward and backward); the reference keeps upstream's q * scaling."""
        from dmd_fast.ops.attention import OP

        return resolve_backend(self.backend, device, OP) == "triton"

    def attention_scale(self, device) -> float:
        """The ``scale`` the core gets for this module's ``project`` output."""
        return self.scaling if self.folds_scale(device) else 1.0

    def project(self, query, key, value):
        """Upstream projections: one fused GEMM when q, k, v are one tensor, else three (whose packed
        weight gradient is written in place, see ``packed_in_projection``). q is multiplied by
        ``scaling`` unless the kernel applies it (``attention_scale``). One tensor: the same object, or
        (eagerly) the same memory and shape; torch.compile cannot compare data pointers without a graph break."""
        one = query is key is value or (
            not torch.compiler.is_compiling()
            and query.shape == key.shape == value.shape
            and query.data_ptr() == key.data_ptr() == value.data_ptr()
        )
        if one:
            q, k, v = self._in_proj_all(query).chunk(3, dim=-1)
        else:
            q, k, v = packed_in_projection(query, key, value, self.in_proj_weight, self.in_proj_bias)
        return (q if self.folds_scale(q.device) else q * self.scaling), k, v

    def _heads(self, x):
        """(T, B, E) → (B, H, T, D) view without a copy."""
        T, B, _ = x.shape
        return x.reshape(T, B, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def attend(self, qh, kh, vh, *, offset_causal=False, key_lengths=None):
        """Attention core on (B, H, L, D) heads from ``project``, with this module's dropout and backend."""
        p = self.attn_dropout if self.training else 0.0
        from dmd_fast.ops.attention import cross_modal_attention

        return cross_modal_attention(
            qh,
            kh,
            vh,
            key_lengths=key_lengths,
            offset_causal=offset_causal,
            dropout_p=p,
            scale=self.attention_scale(qh.device),
            backend=self.backend,
        )

    def merge(self, o):
        """(B, H, Tq, D) heads → out_proj of (Tq, B, E)."""
        B, H, Tq, D = o.shape
        return self.out_proj(o.permute(2, 0, 1, 3).reshape(Tq, B, H * D))

    def check_inputs(self, query, key, value):
        """(T, B, E) floating tensors: E = embed_dim, one batch size, key and value alike, module dtype."""
        E = self.embed_dim
        for name, t in (("query", query), ("key", key), ("value", value)):
            check.tensor(t, name, ndim=3, layout=f"(T, B, E={E})", floating=True)
            if t.shape[2] != E or t.shape[1] != query.shape[1]:
                raise ValueError(f"{name}: expected shape (T, B={query.shape[1]}, E={E}), got {tuple(t.shape)}")
            check.module_dtype(t, name, self.in_proj_weight)
        if key.shape != value.shape:
            raise ValueError(f"key/value: expected equal shapes, got {tuple(key.shape)} and {tuple(value.shape)}")

    def forward(self, query, key, value, attn_mask=None, *, offset_causal=False, key_lengths=None, need_weights=False):
        self.check_inputs(query, key, value)
        if attn_mask is not None:
            check.dense_mask(attn_mask, "attn_mask", query.shape[0], key.shape[0], query.device)
        q, k, v = self.project(query, key, value)
        qh, kh, vh = self._heads(q), self._heads(k), self._heads(v)
        if attn_mask is not None and (offset_causal or key_lengths is not None or need_weights or self.record_weights):
            raise ValueError(
                "attn_mask: a dense mask cannot be combined with offset_causal, key_lengths or "
                "attention-weight output; pass offset_causal/key_lengths instead of a dense mask"
            )
        if attn_mask is not None:
            p = self.attn_dropout if self.training else 0.0
            qs = qh * self.scaling if self.folds_scale(qh.device) else qh  # the dense path is the reference math
            o = _dense_mask_attention(qs, kh, vh, attn_mask, p)
        else:
            o = self.attend(qh, kh, vh, offset_causal=offset_causal, key_lengths=key_lengths)
        weights = None
        if need_weights or self.record_weights:
            weights = self.head_averaged_weights(qh, kh, vh, offset_causal=offset_causal, key_lengths=key_lengths)
        return self.merge(o), weights

    @torch.no_grad()
    def head_averaged_weights(self, qh, kh, vh, *, offset_causal=False, key_lengths=None):
        """Visualisation path: softmax weights (B, Tq, Tk) averaged over heads, without dropout, by the
        reference (the fast path never materialises them); kept in ``last_weights`` when recording."""
        from dmd_fast.ops.attention import attention_weights

        probs = attention_weights(
            qh, kh, vh, key_lengths=key_lengths, offset_causal=offset_causal, scale=self.attention_scale(qh.device)
        )
        weights = probs.mean(dim=1)
        if self.record_weights:
            self.last_weights = weights
        return weights


def _dense_mask_attention(q, k, v, attn_mask, dropout_p):
    """Upstream math with an additive (Lq, Lk) mask: bmm, + mask, softmax(float), dropout, bmm.

    A row whose mask is -inf everywhere (no visible key) gives output 0 and zero gradients (upstream:
    NaN), as the kernel and the reference do for offset_causal / key_lengths."""
    row_has_key = (attn_mask != float("-inf")).any(-1, keepdim=True)  # (Lq, 1), no host sync
    scores = torch.matmul(q, k.transpose(-1, -2)) + attn_mask.to(q.dtype)
    scores = torch.where(row_has_key, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
    probs = (F.softmax(scores.float(), dim=-1) * row_has_key).type_as(scores)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return torch.matmul(probs, v)
