"""Regression metrics for MOSI/MOSEI as in MMSA's ``metricsTop`` (docs/upstream-semantics.md, "Metrics"), numpy only.

Inputs are flattened, so (B,), (B, 1) or any shape works; torch tensors (any dtype, any device)
and numpy arrays/lists are accepted. Computation is in float64 (exact for float32 inputs, so
thresholds and rounding match upstream).

Rounding for Acc_7/Acc_5/Acc_3 is ``np.round`` (round half to even: 0.5 -> 0, 1.5 -> 2), as
upstream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["regression_metrics", "upstream_metrics", "weighted_f1", "format_metrics_table"]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    except ImportError:  # pragma: no cover
        pass
    try:
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a numeric array or tensor; received {type(x).__name__}") from None
    return arr


def _check(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _to_numpy(pred, "pred"), _to_numpy(truth, "truth")
    if p.size != t.size:
        raise ValueError(f"pred/truth: expected the same number of elements; received pred {p.size}, truth {t.size}")
    if p.size == 0:
        raise ValueError("pred/truth: expected at least one element; received empty arrays")
    for name, a in (("pred", p), ("truth", t)):
        bad = ~np.isfinite(a)
        if bad.any():
            raise ValueError(f"{name}: expected all finite values; received {int(bad.sum())} NaN/inf of {a.size}")
    return p, t


def weighted_f1(truth_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Support-weighted F1 over classes (= sklearn ``f1_score(average='weighted')``).

    Classes are the union of labels in truth and pred; each class's F1 is
    2TP / (2TP + FP + FN) (0 when TP = 0) and is weighted by its count in ``truth``.
    Inputs: 1-D arrays of equal length (any hashable label type, e.g. bool).
    """
    truth_labels = np.asarray(truth_labels).reshape(-1)
    pred_labels = np.asarray(pred_labels).reshape(-1)
    if truth_labels.size != pred_labels.size or truth_labels.size == 0:
        raise ValueError(
            f"truth_labels/pred_labels: expected equal, non-zero lengths; received "
            f"{truth_labels.size} and {pred_labels.size}"
        )
    total = 0.0
    for c in np.union1d(truth_labels, pred_labels):
        tp = float(np.sum((pred_labels == c) & (truth_labels == c)))
        fp = float(np.sum((pred_labels == c) & (truth_labels != c)))
        fn = float(np.sum((pred_labels != c) & (truth_labels == c)))
        f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        total += f1 * (tp + fn)
    return total / truth_labels.size


def _pearson(p: np.ndarray, t: np.ndarray) -> float:
    pc, tc = p - p.mean(), t - t.mean()
    den = math.sqrt(float(np.dot(pc, pc)) * float(np.dot(tc, tc)))
    if den == 0.0:
        return 0.0
    return float(np.clip(np.dot(pc, tc) / den, -1.0, 1.0))


def _multiclass_acc(p: np.ndarray, t: np.ndarray, bound: float) -> float:
    return float(np.mean(np.round(np.clip(p, -bound, bound)) == np.round(np.clip(t, -bound, bound))))


def regression_metrics(pred: Any, truth: Any) -> dict[str, float]:
    """All MMSA regression metrics (unrounded floats).

    Keys:
        ``Has0_acc_2``, ``Has0_F1_score``: pred >= 0 vs truth >= 0 on all samples (weighted F1).
        ``Non0_acc_2``, ``Non0_F1_score``: samples with truth == 0 dropped, then pred > 0 vs
            truth > 0. NaN when every truth is 0 (upstream would crash).
        ``Acc_7``, ``Acc_5``, ``Acc_3``: ``round(clip(x, -b, b))`` equality with b = 3, 2, 1.
        ``MAE``: mean |pred - truth|.
        ``Corr``: Pearson correlation; 0.0 when pred or truth is constant (upstream's
            ``np.corrcoef`` would give NaN there).

    Raises ``ValueError`` for a size mismatch, empty input or non-finite values.
    """
    p, t = _check(pred, truth)
    nz = t != 0
    if nz.any():
        tb, pb = t[nz] > 0, p[nz] > 0
        non0_acc, non0_f1 = float(np.mean(tb == pb)), weighted_f1(tb, pb)
    else:
        non0_acc = non0_f1 = float("nan")
    tb0, pb0 = t >= 0, p >= 0
    return {
        "Has0_acc_2": float(np.mean(tb0 == pb0)),
        "Has0_F1_score": weighted_f1(tb0, pb0),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Acc_7": _multiclass_acc(p, t, 3.0),
        "Acc_5": _multiclass_acc(p, t, 2.0),
        "Acc_3": _multiclass_acc(p, t, 1.0),
        "MAE": float(np.mean(np.abs(p - t))),
        "Corr": _pearson(p, t),
    }


def upstream_metrics(pred: Any, truth: Any) -> dict[str, float]:
    """DMD's reported subset: ``Acc_2`` (= Non0_acc_2), ``F1_score`` (= Non0_F1_score), ``Acc_7``, ``MAE``.

    Upstream rounds these to 4 decimals; here they are not rounded.
    """
    m = regression_metrics(pred, truth)
    return {"Acc_2": m["Non0_acc_2"], "F1_score": m["Non0_F1_score"], "Acc_7": m["Acc_7"], "MAE": m["MAE"]}


def _fmt(v: Any, digits: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else f"{float(v):.{digits}f}"
    try:  # 0-d tensors / arrays
        return _fmt(v.item(), digits)
    except AttributeError:
        return str(v)


def format_metrics_table(rows: Sequence[dict], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """Format ``rows`` (e.g. one dict per epoch) as a fixed-width text table.

    ``columns``: keys to show, in order (default: every key in order of first appearance).
    Floats use ``digits`` decimals, ints stay ints, missing entries show ``-``. Numbers are
    right-aligned. Returns header, a rule and one line per row, joined by newlines.
    """
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = [str(c) for c in columns]
    if not columns:
        raise ValueError("columns: expected at least one column; received none (and rows have no keys)")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"rows[{i}]: expected a dict; received {type(r).__name__}")
    cells = [[_fmt(r.get(c), digits) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(s.rjust(w) for s, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
