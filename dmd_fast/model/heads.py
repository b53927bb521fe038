"""DMD's heads run level by level with grouped linear launches (the grouped, non-reference path).

The same layers and the same math as ``DMD.forward``'s head code (upstream order), regrouped: every
head chain's first linear in one ``ops.linear_grouped`` call (homogeneous, c, heterogeneous heads,
the four gates, ``proj_cosine`` and ``align_c``: 17 linears), the second level (8), the third (8), then
the fusion head's ``out_layer``. The dropout masks are drawn in another order than upstream's, so
with dropout on the draws differ from the reference backend's (the distribution does not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmd_fast.ops.linear_grouped import linear_grouped

MODALITIES = ("l", "v", "a")


def grouped_heads_apply(x) -> bool:
    """Whether the grouped path runs the heads here: not under autocast (the eager heads follow
    autocast's casts; the grouped op takes one dtype)."""
    return not torch.is_autocast_enabled(x.device.type)


def grouped_heads(dmd, c_seq: dict, s_seq: dict, c_feat: dict, c_fusion, last_h: dict) -> dict:
    """The head outputs of ``DMD.forward``: logits/repr of the homogeneous and heterogeneous heads,
    ``logits_c``, ``output_logit``, and the ``proj_s_*`` / ``c_*_sim`` projections."""
    p = dmd.config.output_dropout

    def drop(t):
        return F.dropout(t, p=p, training=dmd.training)

    def run(names, xs):
        mods = [getattr(dmd, n) for n in names]
        return linear_grouped(xs, [m.weight for m in mods], [m.bias for m in mods], backend=dmd.backend)

    M = MODALITIES
    h_low = [dmd.flatten_time_major(c_seq[m]) for m in M]
    hs = [last_h[m] for m in M]
    a = run(
        [f"proj1_{m}_low" for m in M] + ["proj1_c"] + [f"proj1_{m}_high" for m in M] + [f"weight_{m}" for m in M]
        + ["weight_c"] + [f"proj_cosine_{m}" for m in M] + [f"align_c_{m}" for m in M],
        h_low + [c_fusion] + hs + hs + [c_fusion] + [dmd.flatten_time_major(s_seq[m]) for m in M]
        + [dmd.flatten_channel_major(c_feat[m]) for m in M],
    )  # fmt: skip
    repr_low = [F.relu(t) for t in a[0:3]]
    z = torch.sigmoid(torch.cat(a[7:11], dim=1))  # (B, 9d): the gates l, v, a, c (one sigmoid: same values)
    b = run(
        [f"proj2_{m}_low" for m in M] + ["proj2_c"] + [f"proj2_{m}_high" for m in M] + ["proj1"],
        [drop(t) for t in repr_low] + [drop(F.relu(a[3]))] + [drop(F.relu(t)) for t in a[4:7]] + [z],
    )
    hp = [t + h for t, h in zip(b[4:7], hs)]
    c_out = run(
        [f"out_layer_{m}_low" for m in M] + ["out_layer_c"] + [f"out_layer_{m}_high" for m in M] + ["proj2"],
        [t + h for t, h in zip(b[0:3], h_low)] + [b[3] + c_fusion] + hp + [drop(F.relu(b[7]))],
    )
    out = {"logits_c": c_out[3], "output_logit": dmd.out_layer(c_out[7] + z)}
    for i, m in enumerate(M):
        out[f"logits_{m}_homo"], out[f"repr_{m}_homo"] = c_out[i], repr_low[i]
        out[f"logits_{m}_hetero"], out[f"repr_{m}_hetero"] = c_out[4 + i], hp[i]
        out[f"proj_s_{m}"], out[f"c_{m}_sim"] = a[11 + i], a[14 + i]
    return out
