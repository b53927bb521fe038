"""Every DMD loss term with upstream weights (``trains/singleTask/DMD.py``, docs/upstream-semantics.md, "Loss terms").

No host synchronisation and no Python loop over samples: the margin loss is vectorised
(equal to ``dmd_fast.reference.margin.margin_loss_loop``).

Margin loss on a batch where no anchor has both a positive and a negative (all labels equal):
upstream's HingeLoss returns the Python float 0.0, so ``align_c_{l,v,a}`` get no gradient at all
(``grad`` stays None; Adam then skips them). Knowing that needs the labels' values on the host,
a sync on CUDA, so it is an option, ``margin_no_anchor``:
- ``"zero"`` (default, no host sync): the loss is a 0 that still depends on the features, so
  ``align_c_*`` get a zero gradient (Adam still steps them with its running moments);
- ``"upstream"``: the labels are read on the host (free for CPU labels, a sync on CUDA) and such a
  batch returns a constant 0 with no graph, as upstream (``dmd-fast parity`` uses this).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from dmd_fast import validation as check
from dmd_fast.common.cosine import pairwise_cosine
from dmd_fast.ops.backend import resolve_backend
from dmd_fast.ops.loss_terms import OP as LOSS_OP
from dmd_fast.ops.loss_terms import loss_terms
from dmd_fast.ops.margin_loss import MAX_ROWS as MARGIN_MAX_ROWS
from dmd_fast.ops.margin_loss import margin_loss as fused_margin_loss

ORT_SEMANTICS = ("torch19", "per_sample")
MARGIN_NO_ANCHOR = ("zero", "upstream")
_COS_EPS = 1e-12


def has_margin_anchor(ids: torch.Tensor) -> bool:
    """Whether some anchor has a positive (another row with its exact label) and a negative (a row with
    another label). Reads ``ids`` on the host: a sync when it lives on a GPU."""
    counts = Counter(ids.reshape(-1).tolist())
    return len(counts) >= 2 and max(counts.values()) >= 2


def margin_loss(ids: torch.Tensor, feats: torch.Tensor, no_anchor: str = "zero", fused: bool = False) -> torch.Tensor:
    """ids (N, 1), feats (N, d) → 0-d HingeLoss value, all anchors at once.

    no_anchor: what a batch without a valid anchor gives (see the module doc): "zero" a 0 connected to
    ``feats`` (zero gradient, no host sync) or "upstream" a constant 0 (no gradient; reads ``ids``).
    fused: the Triton op (``ops.margin_loss``: one launch each way) for N <= 64 rows (batch <= 21);
    larger batches, and ``fused=False``, run the vectorised PyTorch below."""
    check.choice(no_anchor, "no_anchor", MARGIN_NO_ANCHOR)
    if no_anchor == "upstream" and not has_margin_anchor(ids):
        return feats.new_zeros(())
    if fused and feats.shape[0] <= MARGIN_MAX_ROWS:
        return fused_margin_loss(ids, feats, backend="triton")
    N = feats.shape[0]
    cos = pairwise_cosine(feats)  # (N, N)
    y = ids.reshape(N)
    eye = torch.eye(N, dtype=torch.bool, device=feats.device)
    pos = (y.unsqueeze(1) == y.unsqueeze(0)) & ~eye  # (N, N)
    neg = y.unsqueeze(1) != y.unsqueeze(0)
    margin = 0.15 * (y.unsqueeze(1) - y.unsqueeze(0)).abs()  # (N, N)
    # hinge[p, a, b] for positive a and negative b of anchor p
    hinge = torch.clamp_min(margin.unsqueeze(1) - cos.unsqueeze(2) + cos.unsqueeze(1), 0.0)
    pair = (pos.unsqueeze(2) & neg.unsqueeze(1)).to(feats.dtype)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    valid = (n_pos > 0) & (n_neg > 0)
    per_anchor = (hinge * pair).sum((1, 2)) / (n_pos * n_neg).clamp_min(1).to(feats.dtype)
    return (per_anchor * valid).sum() / valid.sum().clamp_min(1).to(feats.dtype)


def orthogonality_loss(s: torch.Tensor, c: torch.Tensor, semantics: str = "torch19") -> torch.Tensor:
    """s, c (T', B, d) → mean of clamp(cos, 0) (CosineEmbeddingLoss with target −1).

    'torch19' (upstream, what produced the paper's numbers): cosine over the batch axis, one per
    (t, k). 'per_sample': one cosine per sample over its flattened (T'·d) features.
    """
    if semantics == "torch19":
        prod = (s * c).sum(1)
        denom = ((s * s).sum(1) + _COS_EPS) * ((c * c).sum(1) + _COS_EPS)
    elif semantics == "per_sample":
        sb = s.permute(1, 0, 2).reshape(s.shape[1], -1)
        cb = c.permute(1, 0, 2).reshape(c.shape[1], -1)
        prod = (sb * cb).sum(1)
        denom = ((sb * sb).sum(1) + _COS_EPS) * ((cb * cb).sum(1) + _COS_EPS)
    else:
        raise ValueError(f"ort_semantics: expected one of {ORT_SEMANTICS}, got {semantics!r}")
    return (prod / denom.sqrt()).clamp_min(0.0).mean()


def hinge_inputs(outputs: dict, labels: torch.Tensor):
    """Per-sample interleaved [c_l_sim, c_v_sim, c_a_sim] rows (3B, d) and labels (3B, 1)."""
    feats = torch.stack([outputs["c_l_sim"], outputs["c_v_sim"], outputs["c_a_sim"]], dim=1)
    B = feats.shape[0]
    return labels.reshape(B, 1, 1).expand(B, 3, 1).reshape(3 * B, 1), feats.reshape(3 * B, -1)


def gd_inputs(outputs: dict, kind: str):
    """Stacked GD inputs in modality order [l, v, a]: logits (3, B, 1), reprs (3, B, h)."""
    logits = torch.stack([outputs[f"logits_{m}_{kind}"] for m in "lva"])
    reprs = torch.stack([outputs[f"repr_{m}_{kind}"] for m in "lva"])
    return logits, reprs


TASK_TERMS = ("all", "l_homo", "v_homo", "a_homo", "l_hetero", "v_hetero", "a_hetero", "c")
_TASK_KEYS = {"all": "output_logit", "c": "logits_c"}


def dmd_losses(
    outputs: dict,
    labels: torch.Tensor,
    gd_homo,
    gd_hetero,
    ort_semantics="torch19",
    margin_no_anchor="zero",
    backend: str = "reference",
) -> dict:
    """All loss terms under upstream's trainer variable names, plus ``total``.

    gd_homo / gd_hetero: callables (logits (3,B,1), reprs (3,B,h)) → GraphDistillResult.
    total = task + 0.05·(logit+reg)_homo + 0.05·(logit+repr+reg)_hetero
            + 0.1·(cycle + recon + 0.1·(margin + ort)).
    Under autocast the losses still run in fp32 (bf16/fp16 outputs are upcast; fp16 squared norms
    overflow in the orthogonality cosine); a float64 model's losses run in float64.
    labels: (B,) or (B, 1) for the outputs' batch of B.
    margin_no_anchor: "zero" | "upstream", see the module doc.
    backend: "reference" computes every term as upstream writes it (the oracle); "triton" / "auto"
    (Triton where it can run, ``dmd_fast.ops.backend``) fuses the task, reconstruction, orthogonality
    terms and the total into one ``ops.loss_terms`` call (3 launches) and runs the margin loss as
    ``ops.margin_loss`` (2 launches; batch <= 21, else the vectorised margin loss), the same values up
    to the order of fp32 sums.
    """
    check_labels(labels, outputs["output_logit"])
    check.choice(margin_no_anchor, "margin_no_anchor", MARGIN_NO_ANCHOR)
    dtype = torch.float64 if outputs["output_logit"].dtype == torch.float64 else torch.float32
    outputs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.items()}
    fused = resolve_backend(backend, labels.device, LOSS_OP) == "triton"
    with torch.autocast(labels.device.type, enabled=False):
        run = _dmd_losses_fused if fused else _dmd_losses
        return run(outputs, labels.to(dtype), gd_homo, gd_hetero, ort_semantics, margin_no_anchor)


def check_labels(labels, like: torch.Tensor) -> None:
    """Regression labels (B,) or (B, 1), floating, on ``like``'s device, B = like.shape[0]."""
    B = like.shape[0]
    check.tensor(labels, "labels", layout=f"(B={B},) or (B, 1)", floating=True)
    if tuple(labels.shape) not in ((B,), (B, 1)):
        raise ValueError(
            f"labels: expected shape ({B},) or ({B}, 1) (one regression label per sample), got {tuple(labels.shape)}"
        )
    check.same_device(labels, "labels", like.device, "the model outputs")


def _dmd_losses(outputs: dict, labels: torch.Tensor, gd_homo, gd_hetero, ort_semantics, margin_no_anchor) -> dict:
    labels = labels.reshape(-1, 1)
    L = {}
    for t in TASK_TERMS:
        L[f"loss_task_{t}"] = F.l1_loss(outputs[_TASK_KEYS.get(t, f"logits_{t}")], labels)
    L["loss_task"] = sum(L[f"loss_task_{t}"] for t in TASK_TERMS)
    for m in "lva":
        L[f"loss_recon_{m}"] = F.mse_loss(outputs[f"recon_{m}"], outputs[f"origin_{m}"])
    L["loss_recon"] = L["loss_recon_l"] + L["loss_recon_v"] + L["loss_recon_a"]
    for m, name in (("l", "loss_sl_slr"), ("v", "loss_sv_slv"), ("a", "loss_sa_sla")):
        L[name] = F.mse_loss(outputs[f"s_{m}"].permute(1, 2, 0), outputs[f"s_{m}_r"])
    L["loss_s_sr"] = L["loss_sl_slr"] + L["loss_sv_slv"] + L["loss_sa_sla"]
    for m in "lva":
        L[f"loss_ort_{m}"] = orthogonality_loss(outputs[f"s_{m}"], outputs[f"c_{m}"], ort_semantics)
    L["loss_ort"] = L["loss_ort_l"] + L["loss_ort_v"] + L["loss_ort_a"]
    L["loss_sim"] = margin_loss(*hinge_inputs(outputs, labels), no_anchor=margin_no_anchor)
    homo = gd_homo(*gd_inputs(outputs, "homo"))
    hetero = gd_hetero(*gd_inputs(outputs, "hetero"))
    L["loss_reg_homo"], L["loss_logit_homo"], L["loss_repr_homo"] = homo.loss_reg, homo.loss_logit, homo.loss_repr
    L["graph_distill_loss_homo"] = 0.05 * homo.loss_total  # logit + reg (the unit's total_weights)
    L["loss_reg_hetero"], L["loss_logit_hetero"], L["loss_repr_hetero"] = (
        hetero.loss_reg,
        hetero.loss_logit,
        hetero.loss_repr,
    )
    L["graph_distill_loss_hetero"] = 0.05 * hetero.loss_total  # logit + repr + reg
    L["total"] = (
        L["loss_task"]
        + L["graph_distill_loss_homo"]
        + L["graph_distill_loss_hetero"]
        + (L["loss_s_sr"] + L["loss_recon"] + (L["loss_sim"] + L["loss_ort"]) * 0.1) * 0.1
    )
    L["edges_homo"], L["edges_hetero"] = homo.edges, hetero.edges
    L["edge_means_homo"], L["edge_means_hetero"] = homo.edge_means, hetero.edge_means  # (E,), detached
    return L


# the total's weights (upstream: task + 0.05·GD_homo + 0.05·GD_hetero + 0.1·(s_sr + recon + 0.1·(sim + ort)))
_GROUPS = ("loss_task", "loss_recon", "loss_s_sr", "loss_ort")
_W_TASK, _W_RECON, _W_ORT, _W_GD = 1.0, 0.1, 0.01, 0.05


def _dmd_losses_fused(outputs, labels, gd_homo, gd_hetero, ort_semantics, margin_no_anchor) -> dict:
    """``_dmd_losses`` with the task, reconstruction and orthogonality terms, the group sums and the
    total in one fused ``loss_terms`` call (the margin loss and the GD units' totals enter it as values)."""
    labels = labels.reshape(-1, 1)
    terms, names, weights, groups = [], [], [], []

    def add(name, kind, a, b, group, weight):
        terms.append((kind, a, b))
        names.append(name)
        groups.append(group)
        weights.append(weight)

    for t in TASK_TERMS:
        add(f"loss_task_{t}", "l1", outputs[_TASK_KEYS.get(t, f"logits_{t}")], labels, 0, _W_TASK)
    for m in "lva":
        add(f"loss_recon_{m}", "mse", outputs[f"recon_{m}"], outputs[f"origin_{m}"], 1, _W_RECON)
    for m, name in (("l", "loss_sl_slr"), ("v", "loss_sv_slv"), ("a", "loss_sa_sla")):
        add(name, "mse", outputs[f"s_{m}"].permute(1, 2, 0), outputs[f"s_{m}_r"], 2, _W_RECON)
    for m in "lva":
        s, c = outputs[f"s_{m}"], outputs[f"c_{m}"]
        if ort_semantics == "per_sample":  # one cosine per sample over its (T'·d) features: (B, T'·d, 1)
            s, c = (t.permute(1, 0, 2).reshape(t.shape[1], -1, 1) for t in (s, c))
        elif ort_semantics != "torch19":
            raise ValueError(f"ort_semantics: expected one of {ORT_SEMANTICS}, got {ort_semantics!r}")
        add(f"loss_ort_{m}", "cosine", s, c, 3, _W_ORT)
    L = {"loss_sim": margin_loss(*hinge_inputs(outputs, labels), no_anchor=margin_no_anchor, fused=True)}
    homo = gd_homo(*gd_inputs(outputs, "homo"))
    hetero = gd_hetero(*gd_inputs(outputs, "hetero"))
    add("loss_sim", "value", L["loss_sim"], None, -1, _W_ORT)
    add("gd_total_homo", "value", homo.loss_total, None, -1, _W_GD)
    add("gd_total_hetero", "value", hetero.loss_total, None, -1, _W_GD)
    values, total = loss_terms(terms, weights=weights, groups=groups, n_groups=len(_GROUPS), eps=_COS_EPS)
    for i, name in enumerate(names[:-3]):
        L[name] = values[i]
    for g, name in enumerate(_GROUPS):
        L[name] = values[len(names) + g]
    L["loss_reg_homo"], L["loss_logit_homo"], L["loss_repr_homo"] = homo.loss_reg, homo.loss_logit, homo.loss_repr
    L["graph_distill_loss_homo"] = _W_GD * homo.loss_total
    L["loss_reg_hetero"], L["loss_logit_hetero"], L["loss_repr_hetero"] = (
        hetero.loss_reg,
        hetero.loss_logit,
        hetero.loss_repr,
    )
    L["graph_distill_loss_hetero"] = _W_GD * hetero.loss_total
    L["total"] = total
    L["edges_homo"], L["edges_hetero"] = homo.edges, hetero.edges
    L["edge_means_homo"], L["edge_means_hetero"] = homo.edge_means, hetero.edge_means  # (E,), detached
    return L
