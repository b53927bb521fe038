"""Run several independent transformer encoders layer by layer with grouped launches.

DMD's six cross-modal encoders (and its three self-attention and three memory encoders) are
independent, so each layer of a group runs as one group of problems:

- fused (the Triton backend, E <= 128, no attention map being recorded): every stream's embedding
  prologue in one launch each way (``ops.encoder_embed``), then per layer three grouped kernels forward
  (LN0 + in-projection, attention, the post-attention block with its residual and ReLU dropout and the
  encoder's final LayerNorm on the last layer) and six backward (``ops.encoder_in_proj``,
  ``ops.attention``, ``ops.encoder_ffn``), their dropout seeds drawn at once (one kernel per run);
- otherwise: grouped attention, everything else (LayerNorms, projections, FFN) per encoder as in
  ``TransformerEncoder.forward``.

Either way the result equals running the encoders one by one (``fused_layers_apply`` says which path runs).
"""

from __future__ import annotations

import torch

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


def fused_layers_apply(encoders) -> bool:
    """True when ``run_encoders_grouped`` runs these encoders' layers as fused grouped kernels."""
    from dmd_fast.ops.backend import resolve_backend
    from dmd_fast.ops.encoder_ffn import MAX_EMBED_DIM
    from dmd_fast.ops.encoder_ffn import OP as FFN_OP

    first = encoders[0]
    if not first.layers or first.embed_dim > MAX_EMBED_DIM:
        return False
    mha = first.layers[0].self_attn
    if resolve_backend(mha.backend, mha.in_proj_weight.device, FFN_OP) != "triton":
        return False
    return not any(layer.self_attn.record_weights for enc in encoders for layer in enc.layers)


def _embedded_sources(enc, k_in, v_in):
    """None (self-attention), one embedded source (key and value streams equal: the same input and no
    embedding dropout) or the pair (embed(k_in), embed(v_in)), each with its own dropout draw."""
    if k_in is None:
        return None
    if k_in is v_in and not (enc.training and enc.dropout > 0):
        return enc.embed(k_in)
    return enc.embed(k_in), enc.embed(v_in)


def _seeds(encoders, device):
    """One draw (``ops.seed.draw_seeds``) of the dropout seeds of a fused run, (1 + 2 · layers, 2) int64: row 0
    the embedding's, rows 1 + 2i and 2 + 2i layer i's attention and post-attention block; None when no p > 0."""
    from dmd_fast.ops.seed import draw_seeds

    ps = [enc.dropout for enc in encoders if enc.training]
    for layer in (layer for enc in encoders for layer in enc.layers):
        ps += [layer.self_attn.attn_dropout] if layer.self_attn.training else []
        ps += [layer.res_dropout, layer.relu_dropout] if layer.training else []
    if max(ps, default=0.0) == 0:
        return None
    return draw_seeds(None, device, 1 + 2 * len(encoders[0].layers))


def _embed_group(encoders, streams, backend, seed):
    """Every stream's embedding prologue in one grouped launch (``ops.encoder_embed``): the query streams
    xs and the sources (None, one tensor, or a (key, value) pair); ``seed``: its dropout seed or None.
    Inputs in another dtype than the positional table (autocast) take the eager
    ``TransformerEncoder.embed``, whose output type follows torch's promotion."""
    from dmd_fast.ops.encoder_embed import encoder_embedding_grouped

    pe = encoders[0].embed_positions
    if any(x.dtype != pe._float_tensor.dtype for stream in streams for x in stream if x is not None):
        xs = [enc.embed(x_in) for enc, (x_in, _, _) in zip(encoders, streams)]
        return xs, [_embedded_sources(enc, k_in, v_in) for enc, (_, k_in, v_in) in zip(encoders, streams)]
    inputs, ps, layout = [], [], []
    for enc, (x_in, k_in, v_in) in zip(encoders, streams):
        p = enc.dropout if enc.training else 0.0
        shared = k_in is v_in and p == 0
        group = [x_in] if k_in is None else [x_in, k_in] if shared else [x_in, k_in, v_in]
        layout.append(len(group))
        inputs += group
        ps += [p] * len(group)
    T_max = max(x.shape[0] for x in inputs)
    table = pe._table(T_max + 1, inputs[0].device)
    embedded = encoder_embedding_grouped(
        inputs, table, scale=encoders[0].embed_scale, dropout_p=ps, seed=seed, backend=backend
    )
    outs = iter(embedded)
    xs, sources = [], []
    for n in layout:
        xs.append(next(outs))
        sources.append(None if n == 1 else next(outs) if n == 2 else (next(outs), next(outs)))
    return xs, sources


def _run_fused(encoders, streams, last_row, pair_outputs):
    """The fused path of :func:`run_encoders_grouped` (see the module doc)."""
    from dmd_fast.ops.attention import cross_modal_attention_grouped
    from dmd_fast.ops.encoder_ffn import encoder_ffn_block_grouped
    from dmd_fast.ops.encoder_in_proj import encoder_in_projection_grouped

    backend = encoders[0].layers[0].self_attn.backend
    n_layers = len(encoders[0].layers)
    seeds = _seeds(encoders, streams[0][0].device)
    seed = [None if seeds is None else seeds[k] for k in range(1 + 2 * n_layers)]  # row views: no kernel
    xs, sources = _embed_group(encoders, streams, backend, seed[0])
    for i in range(n_layers):
        layers = [enc.layers[i] for enc in encoders]
        last = i == n_layers - 1
        lr = last_row and last
        # last_row: q of the last row only; k, v still from every row (a self-attention source is x itself)
        q_in = [x[-1:] if lr else x for x in xs]
        srcs = [x if lr and src is None else src for x, src in zip(xs, sources)]
        # with autograd on, the residual inputs and the next layer's sources come back from the
        # in-projection as copies: each tensor has one consumer, so its gradient is added inside a
        # kernel, not by autograd
        copies = torch.is_grad_enabled()
        res = encoder_in_projection_grouped(
            q_in,
            srcs,
            [layer.layer_norms[0].weight for layer in layers],
            [layer.layer_norms[0].bias for layer in layers],
            [layer.self_attn.in_proj_weight for layer in layers],
            [layer.self_attn.in_proj_bias for layer in layers],
            eps=layers[0].layer_norms[0].eps,
            return_x=copies,
            return_sources=copies and not last,
            backend=backend,
        )
        qkv = res[0] if copies else res
        if copies:
            q_in = res[1]
            if not last:
                sources = [None if src is None else nxt for src, nxt in zip(sources, res[2])]
        mhas = [layer.self_attn for layer in layers]
        problems = [tuple(mha._heads(t) for t in p) for mha, p in zip(mhas, qkv)]
        outs = cross_modal_attention_grouped(
            problems,
            offset_causal=encoders[0].offset_causal,
            dropout_p=[mha.attn_dropout if mha.training else 0.0 for mha in mhas],
            scale=mhas[0].scaling,  # the kernel applies head_dim^-0.5 (q is not pre-scaled here)
            seed=seed[1 + 2 * i],
            backend=backend,
        )
        merged = [o.permute(2, 0, 1, 3).reshape(o.shape[2], o.shape[0], -1) for o in outs]
        xs = encoder_ffn_block_grouped(
            q_in,
            merged,
            [mha.out_proj.weight for mha in mhas],
            [mha.out_proj.bias for mha in mhas],
            [layer.layer_norms[1].weight for layer in layers],
            [layer.layer_norms[1].bias for layer in layers],
            [layer.fc1.weight for layer in layers],
            [layer.fc1.bias for layer in layers],
            [layer.fc2.weight for layer in layers],
            [layer.fc2.bias for layer in layers],
            [enc.layer_norm.weight for enc in encoders] if last else None,
            [enc.layer_norm.bias for enc in encoders] if last else None,
            res_dropout=[layer.res_dropout if layer.training else 0.0 for layer in layers],
            relu_dropout=[layer.relu_dropout if layer.training else 0.0 for layer in layers],
            eps=layers[0].layer_norms[1].eps,
            seed=seed[2 + 2 * i],
            pair_outputs=pair_outputs and last,  # the last layer writes each pair side by side
            backend=backend,
        )
    return xs


def run_encoders_grouped(encoders, streams, last_row=False, pair_outputs=False):
    """encoders: G TransformerEncoders of one shape; streams: G tuples (x_in, x_in_k, x_in_v), the
    last two None for self-attention, all sequence-first (T, B, E). Returns G outputs (Tq, B, E), or
    with ``last_row=True`` (last layer computes only the last query row) G outputs (1, B, E); with
    ``pair_outputs`` (G even) G / 2 outputs, encoders 2i and 2i + 1 side by side along E (the fused
    path's last kernel writes them so, the other path concatenates)."""
    from dmd_fast.ops.attention import cross_modal_attention_grouped

    if not encoders or len(encoders) != len(streams):
        raise ValueError(
            f"encoders/streams: expected a non-empty list of encoders and one stream each, got "
            f"{len(encoders)} encoders and {len(streams)} streams"
        )
    _check_groupable(encoders)
    if pair_outputs and len(encoders) % 2:
        raise ValueError(f"pair_outputs: expected an even number of encoders, got {len(encoders)}")
    if fused_layers_apply(encoders):
        return _run_fused(encoders, streams, last_row, pair_outputs)
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
    outs = [enc.layer_norm(x) for enc, x in zip(encoders, xs)]
    return [torch.cat(outs[i : i + 2], dim=2) for i in range(0, len(outs), 2)] if pair_outputs else outs
