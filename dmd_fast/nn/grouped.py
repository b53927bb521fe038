"""Run several independent transformer encoders layer by layer with grouped attention launches.

DMD's six cross-modal encoders (and its three self-attention and three memory encoders) are
independent; each layer's attention problems go to ``cross_modal_attention_grouped`` together
(one launch, each problem with its own dropout probability) instead of one launch per encoder. Everything
else (LayerNorms, projections, FFN) runs per encoder, as in ``TransformerEncoder.forward``,
so the result equals running the encoders one by one.
"""

from __future__ import annotations

from dmd_fast.nn.transformer import TransformerEncoder


def _check_groupable(encoders):
    first = encoders[0]
    for i, enc in enumerate(encoders):
        if not isinstance(enc, TransformerEncoder):
            raise TypeError(f"encoders[{i}]: expected a TransformerEncoder, got {type(enc).__name__}")
        mha, mha0 = enc.layers[0].self_attn, first.layers[0].self_attn
        fields = ("layers", "num_heads", "head_dim", "offset_causal", "backend")
        mine = (len(enc.layers), mha.num_heads, mha.head_dim, enc.offset_causal, mha.backend)
        ref = (len(first.layers), mha0.num_heads, mha0.head_dim, first.offset_causal, mha0.backend)
        for f, a, b in zip(fields, mine, ref):
            if a != b:
                raise ValueError(
                    f"encoders[{i}]: {f}={a!r} differs from encoders[0]'s {b!r}; only encoders of "
                    "one shape can share launches"
                )


def run_encoders_grouped(encoders, streams, last_row=False):
    """encoders: G TransformerEncoders of one shape; streams: G tuples (x_in, x_in_k, x_in_v), the
    last two None for self-attention, all sequence-first (T, B, E). Returns G outputs (Tq, B, E), or
    with ``last_row=True`` (last layer computes only the last query row) G outputs (1, B, E)."""
    from dmd_fast.ops.attention import cross_modal_attention_grouped

    if not encoders or len(encoders) != len(streams):
        raise ValueError(
            f"encoders/streams: expected a non-empty list of encoders and one stream each, got "
            f"{len(encoders)} encoders and {len(streams)} streams"
        )
    _check_groupable(encoders)
    xs, sources = [], []
    for enc, (x_in, k_in, v_in) in zip(encoders, streams):
        xs.append(enc.embed(x_in))
        sources.append(None if k_in is None else (enc.embed(k_in), enc.embed(v_in)))
    backend = encoders[0].layers[0].self_attn.backend
    offset_causal = encoders[0].offset_causal
    n_layers = len(encoders[0].layers)
    for i in range(n_layers):
        layers = [enc.layers[i] for enc in encoders]
        lr = last_row and i == n_layers - 1
        problems = [
            layer.heads(x, last_row=lr) if src is None else layer.heads(x, *src, last_row=lr)
            for layer, x, src in zip(layers, xs, sources)
        ]
        ps = [layer.self_attn.attn_dropout if layer.training else 0.0 for layer in layers]
        scale = layers[0].self_attn.attention_scale(problems[0][0].device)  # one head_dim per group
        outs = cross_modal_attention_grouped(
            problems, offset_causal=offset_causal, dropout_p=ps, scale=scale, backend=backend
        )
        for layer, problem in zip(layers, problems):
            if layer.self_attn.record_weights:  # visualisation path, as the ungrouped layer does
                layer.self_attn.head_averaged_weights(*problem, offset_causal=offset_causal)
        xs = [layer.finish(x[-1:] if lr else x, o) for layer, x, o in zip(layers, xs, outs)]
    return [enc.layer_norm(x) for enc, x in zip(encoders, xs)]
