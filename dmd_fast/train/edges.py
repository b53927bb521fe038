"""Edge-weight readouts of GD units, aggregated over runs (the paper's supplementary Table 1)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

EDGE_ORDER = ("V→L", "A→L", "L→V", "A→V", "L→A", "V→A")


def edge_readout(unit) -> dict[str, float]:
    """name -> mean edge weight (without the prior) of a GDUnit's last forward batch; syncs the host."""
    if unit.last_mean_edges is None:
        raise ValueError("unit: expected a GDUnit that has run forward at least once, got last_mean_edges=None")
    return dict(zip(unit.edge_names, unit.last_mean_edges.float().tolist()))


def aggregate_edges(runs: Sequence[Mapping[str, float]], ddof: int = 1) -> dict[str, tuple[float, float]]:
    """Per-edge (mean, std) over runs; std with ``ddof`` (1: sample STD); NaN when len(runs) <= ddof.

    Every run must report the same edge names.
    """
    if not runs:
        raise ValueError("runs: expected at least one run, got an empty list")
    names = list(runs[0])
    for k, run in enumerate(runs):
        if set(run) != set(names):
            raise ValueError(f"runs[{k}]: expected edges {sorted(names)}, got {sorted(run)}")
    out = {}
    n = len(runs)
    for name in names:
        vals = [float(run[name]) for run in runs]
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - ddof)) if n > ddof else float("nan")
        out[name] = (mean, std)
    return out


def format_edge_table(
    columns: Mapping[str, Mapping[str, tuple[float, float]]], names: Sequence[str] | None = None, digits: int = 3
) -> str:
    """Markdown table, one row per edge, one 'mean ± STD' column per unit (e.g. {'Homo': ..., 'Hetero': ...}).

    ``names`` fixes the row order (default: V→L, A→L, L→V, A→V, L→A, V→A when those are the edges).
    """
    if not columns:
        raise ValueError("columns: expected at least one column, got none")
    if names is None:
        first = next(iter(columns.values()))
        names = list(EDGE_ORDER) if set(first) == set(EDGE_ORDER) else list(first)
    header = "| Edge | " + " | ".join(columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    rows = []
    for name in names:
        cells = []
        for label, table in columns.items():
            if name not in table:
                raise ValueError(f"columns[{label!r}]: expected an entry for edge {name!r}, got {sorted(table)}")
            mean, std = table[name]
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])
