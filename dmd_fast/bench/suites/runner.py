"""What every suite shares: options, the time budget and its table, the recorder, and one item runner.

:func:`run_item` is the life of one (case, provider) row: the budget and refusal checks, setup, the
measurements, the status, the record and the clean-up. Every failure (unsupported case, capture
failure, out of memory, any error) becomes a row with a reason; nothing here raises.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.bench.memory import nvml_snapshot
from dmd_fast.bench.timing import CaptureError, short_reason

# seconds an item needs on CUDA before it is started (on the CPU the budget is only checked, never
# reserved): what one compile, capture or measurement of that kind has taken
BUDGET_S = {
    ("attention", "plain"): 2.0,
    ("attention", "compiled"): 20.0,
    ("graph_distill", "plain"): 1.0,
    ("graph_distill", "compiled"): 15.0,
    ("model", "plain"): 5.0,
    ("model", "compiled"): 90.0,
    ("model", "cudagraph"): 10.0,
    ("check", "recompile"): 10.0,
}


@dataclass
class SuiteOptions:
    """What to run and how hard to measure."""

    suites: tuple = ("all",)
    quick: bool = False
    device: str = "auto"
    providers: tuple | None = None  # None: the defaults of each suite
    time_budget_s: float | None = None
    out_dir: str | None = None
    warmup_ms: float = 25.0
    rep_ms: float = 60.0
    n_sets: int = 3
    log: Callable = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))


class Budget:
    """Wall-clock budget; ``allows(s)`` says whether ``s`` more seconds fit."""

    def __init__(self, seconds: float | None):
        self.start = time.monotonic()
        self.deadline = None if not seconds else self.start + float(seconds)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def allows(self, need_s: float) -> bool:
        return self.remaining() >= need_s


class Recorder:
    """Accumulates results and rewrites ``results.json`` after every row (a killed run keeps its rows)."""

    def __init__(self, results: dict, out_dir: str | None, log: Callable):
        self.results = results
        self.out_dir = out_dir
        self.log = log

    def add(self, row: dict):
        self.results["rows"].append(row)
        self.save()

    def save(self):
        if self.out_dir:
            from dmd_fast.bench.report import write_json

            write_json(self.results, os.path.join(self.out_dir, "results.json"))


def configure_dynamo():
    """Room for the many compiled variants a suite makes (dynamo's cache limits raised to 256)."""
    try:
        import torch._dynamo.config as dc

        for attr in (
            "cache_size_limit",
            "recompile_limit",
            "accumulated_cache_size_limit",
            "accumulated_recompile_limit",
        ):
            if hasattr(dc, attr):
                setattr(dc, attr, max(getattr(dc, attr), 256))
    except Exception:
        pass


def reset_dynamo():
    """Forget compiled graphs between compiled providers."""
    try:
        torch._dynamo.reset()
    except Exception:
        pass


def cleanup(device):
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def measure(fn: Callable) -> dict:
    """Run a measurement; return ``{"status": "ok", ...}`` or the status and reason of its failure."""
    try:
        out = fn()
    except bl.Unsupported as exc:
        return {"status": "skipped", "reason": str(exc)}
    except CaptureError as exc:
        return {"status": "capture_failed", "reason": str(exc)}
    except torch.cuda.OutOfMemoryError as exc:
        gc.collect()
        torch.cuda.empty_cache()
        return {"status": "oom", "reason": short_reason(exc)}
    except Exception as exc:
        return {"status": "error", "reason": short_reason(exc)}
    if isinstance(out, dict):
        return {"status": "ok", **out}
    return {"status": "ok", **out.as_dict()}


def skip_row(rec: Recorder, base: dict, status: str, reason: str):
    row = dict(base, status=status, reason=reason, modes={})
    rec.add(row)
    rec.log(f"  {base.get('provider')}: {status}: {reason}")


def setup_failure_row(exc: Exception, rec: Recorder, base: dict, device):
    """Row for a provider that could not be set up: unsupported here, out of memory, or an error."""
    if isinstance(exc, bl.Unsupported):
        return skip_row(rec, base, "skipped", str(exc))
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        cleanup(device)
        return skip_row(rec, base, "oom", short_reason(exc))
    return skip_row(rec, base, "error", short_reason(exc))


def nvml_brief() -> dict:
    snap = nvml_snapshot()
    if not snap.get("available"):
        return {"available": False}
    return {k: snap.get(k) for k in ("memory_used_mb", "power_w", "sm_clock_mhz", "temperature_c")}


def brief(row: dict) -> str:
    parts = []
    for mode, m in row.get("modes", {}).items():
        if m.get("status") == "ok":
            parts.append(f"{mode} {m['median_us']:.1f} us")
        else:
            parts.append(f"{mode} {m.get('status')}")
    return f"{row['provider']}: " + ", ".join(parts)


def base_row(suite: str, case, pname: str, label: str) -> dict:
    """The identifying fields of an op-suite row (a case with ``name`` and ``as_dict()``)."""
    return {
        "suite": suite,
        "case": case.name,
        "shape": case.as_dict(),
        "provider": pname,
        "label": label,
        "equivalent": True,
    }


COMPILED_ON_CPU = "torch.compile baselines are not run on the CPU by default (name them in --backend-list to run them)"


def need_seconds(suite: str, kind: str, cuda: bool) -> float:
    """What the budget must still allow before an item of this suite and kind starts."""
    return BUDGET_S[(suite, kind)] if cuda else 0.0


def run_item(
    rec: Recorder,
    device,
    base: dict,
    *,
    need_s: float,
    budget: Budget,
    refuse: str | None,
    build: Callable,
    measure_into: Callable,
) -> None:
    """One row: skip when the budget or ``refuse`` says so, ``build()`` (a failure becomes the row),
    ``measure_into(built, row)`` fills ``row["modes"]``; the status is "ok" when any mode ran."""
    if not budget.allows(need_s):
        return skip_row(
            rec, base, "skipped", f"time budget exhausted ({budget.remaining():.0f} s left, ~{need_s:.0f} s needed)"
        )
    if refuse:
        return skip_row(rec, base, "skipped", refuse)
    torch.manual_seed(0)
    try:
        built = build()
    except Exception as exc:
        return setup_failure_row(exc, rec, base, device)
    row = dict(base, modes={}, memory={}, extra={})
    measure_into(built, row)
    statuses = {m.get("status") for m in row["modes"].values()}
    row["status"] = "ok" if "ok" in statuses else sorted(statuses)[0]
    if device.type == "cuda":
        row["nvml"] = nvml_brief()
    rec.add(row)
    rec.log("  " + brief(row) + (f", {row['samples_per_s']:.0f} samples/s" if "samples_per_s" in row else ""))
    del built
    cleanup(device)
