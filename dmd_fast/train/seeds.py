"""Several seeds of one setting, summarised like the paper: metrics and GD edges, mean ± STD."""

from __future__ import annotations

import math

from dmd_fast.common.graph_distill import edge_names
from dmd_fast.train.edges import aggregate_edges, format_edge_table

SUMMARY_METRICS = ("Non0_acc_2", "Non0_F1_score", "Has0_acc_2", "Acc_7", "MAE", "Corr")


def _mean_std(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def best_epoch_edges(result) -> dict:
    """{'homo': {edge: w}, 'hetero': {...}}: epoch-mean edge weights (no prior) at the best epoch."""
    record = next((h for h in result.history if h["epoch"] == result.best_epoch), result.history[-1])
    names = edge_names(3)
    return {unit: dict(zip(names, record["edges"][unit])) for unit in ("homo", "hetero")}


def summarize_seeds(seeds, results) -> str:
    """Markdown: per-seed test metrics, their mean ± STD, and the edge table (homo, hetero)."""
    lines = [
        "## Test metrics per seed",
        "",
        "| seed | " + " | ".join(SUMMARY_METRICS) + " |",
        "|---|" + "---|" * len(SUMMARY_METRICS),
    ]
    for seed, r in zip(seeds, results):
        lines.append(f"| {seed} | " + " | ".join(f"{r.test[m]:.4f}" for m in SUMMARY_METRICS) + " |")
    stats = [_mean_std([r.test[m] for r in results]) for m in SUMMARY_METRICS]
    lines.append("| mean ± STD | " + " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in stats) + " |")
    edges = [best_epoch_edges(r) for r in results]
    table = format_edge_table(
        {
            "Homo GD": aggregate_edges([e["homo"] for e in edges]),
            "Hetero GD": aggregate_edges([e["hetero"] for e in edges]),
        }
    )
    lines += [
        "",
        "## Graph edges (mean softmax weight without the prior, best epoch; mean ± STD over seeds)",
        "",
        table,
    ]
    return "\n".join(lines) + "\n"
