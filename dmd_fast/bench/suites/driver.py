"""The driver behind ``dmd-fast bench``: which suites and providers run, in which order, under the budget.

Work runs cheapest-first (uncompiled providers, checks, model, then everything that goes through
``torch.compile``) under an optional time budget; what the budget leaves out is recorded as
skipped with the reason. Nothing here raises out of :func:`run_suites`.
"""

from __future__ import annotations

import os

import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.bench import floors as fl
from dmd_fast.bench.memory import nvml_snapshot
from dmd_fast.bench.suites.attention import SCALING_CASES, attention_cases, recompile_check, run_attention_item
from dmd_fast.bench.suites.graph_distill import graph_distill_cases, run_graph_distill_item
from dmd_fast.bench.suites.model import MODEL_PROVIDERS, run_model_item
from dmd_fast.bench.suites.runner import Budget, Recorder, SuiteOptions, configure_dynamo, measure, reset_dynamo

SUITES = ("attention", "graph_distill", "model", "all")
SUITE_ALIASES = {"op": "attention", "gd": "graph_distill"}  # the names of earlier releases
ALL_PROVIDERS = tuple(dict.fromkeys(list(bl.ATTENTION_PROVIDERS) + list(bl.GD_PROVIDERS) + list(MODEL_PROVIDERS)))
PROVIDER_HELP = {
    "ours": "dmd_fast Triton kernels (backend='triton')",
    "eager": "upstream-faithful eager PyTorch (attention core as MulT; GD and model: dmd_fast.reference)",
    "compiled": "the eager path under torch.compile",
    "sdpa": "F.scaled_dot_product_attention with the same bool mask (attention suite)",
    "sdpa_flash_nomask": "SDPA flash without mask, bf16: not equivalent, lower bound (attention suite, CUDA)",
    "flex": "FlexAttention compiled, d padded to 16, no dropout (attention suite, CUDA)",
    "reference": "dmd_fast.reference attention (attention suite)",
    "cudagraph": "ours, whole step captured in a CUDA graph (model suite, CUDA)",
}
KNOWN_PROVIDERS = {
    "attention": bl.ATTENTION_PROVIDERS,
    "graph_distill": bl.GD_PROVIDERS,
    "model": dict.fromkeys(MODEL_PROVIDERS),
}


def canonical_suite(name: str) -> str:
    """A suite name with the earlier aliases ('op', 'gd') resolved."""
    return SUITE_ALIASES.get(name, name)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_providers(suite: str, device: torch.device, quick: bool) -> tuple:
    cuda = device.type == "cuda"
    suite = canonical_suite(suite)
    if suite == "attention":
        if cuda:
            base = ("ours", "eager", "sdpa", "sdpa_flash_nomask", "compiled", "flex")
            return base + (("reference",) if quick else ())
        return ("ours", "eager", "sdpa", "reference")
    if suite == "graph_distill":
        return ("ours", "eager", "compiled") if cuda else ("ours", "eager")
    if suite == "model":
        return ("eager", "ours", "cudagraph", "compiled") if cuda else ("eager", "ours")
    raise ValueError(f"suite: expected one of {SUITES}, got {suite!r}")


def _wanted(opts: SuiteOptions, suite: str, device) -> list[str]:
    known = KNOWN_PROVIDERS[canonical_suite(suite)]
    if opts.providers is None:
        return list(default_providers(suite, device, opts.quick))
    return [p for p in opts.providers if p in known]


def _floors(rec: Recorder, device, nvml: dict):
    if device.type != "cuda":
        rec.results["floors"] = {"status": "skipped", "reason": "floors are for CUDA devices (H100 anchors)"}
        return None
    bw = measure(lambda: fl.measure_copy_bandwidth(device))
    sm, clock = fl.read_sm_count_and_clock(device, nvml)
    rates = fl.device_rates(sm, clock, bw.get("bytes_per_s") if bw["status"] == "ok" else None)
    rec.results["floors"] = {
        "copy": bw,
        "sm_count": sm,
        "sm_clock_hz": clock,
        "rates": rates.as_dict(),
        "launch_us": fl.LAUNCH_US,
    }
    rec.save()
    rec.log(f"copy bandwidth: {bw.get('gb_per_s', float('nan')):.0f} GB/s; rates: {rates.source}")
    return rates


def new_results(device, opts: SuiteOptions) -> dict:
    from dmd_fast.bench.report import collect_environment

    return {
        "schema": 1,
        "env": collect_environment(device),
        "options": {
            "suites": list(opts.suites),
            "quick": opts.quick,
            "device": str(device),
            "providers": None if opts.providers is None else list(opts.providers),
            "time_budget_s": opts.time_budget_s,
            "warmup_ms": opts.warmup_ms,
            "rep_ms": opts.rep_ms,
            "n_sets": opts.n_sets,
            "cpu_threads": torch.get_num_threads(),
        },
        "rows": [],
        "checks": {},
        "floors": {},
        "notes": [],
    }


def run_suites(opts: SuiteOptions) -> dict:
    """Run the requested suites; returns the results dict (also written to ``opts.out_dir``).

    On the CPU, torch runs with one intra-op thread for the duration (restored afterwards): on a
    shared machine OpenMP's spinning threads otherwise turn milliseconds into seconds.
    """
    device = _device(opts.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _run_suites(opts, device)
    finally:
        torch.set_num_threads(threads)


def _run_suites(opts: SuiteOptions, device: torch.device) -> dict:
    suites = {canonical_suite(s) for s in opts.suites}
    if "all" in suites:
        suites = {"attention", "graph_distill", "model"}
    budget = Budget(opts.time_budget_s)
    results = new_results(device, opts)
    rec = Recorder(results, opts.out_dir, opts.log)
    rec.save()
    configure_dynamo()
    log = opts.log
    log(
        f"dmd-fast bench: suites {sorted(suites)} on {results['env'].get('device_name')} "
        f"({'quick' if opts.quick else 'full'})"
    )
    rates = _floors(rec, device, results["env"].get("nvml", {})) if "attention" in suites else None

    def phase(name: str):
        log(f"[{budget.elapsed():6.1f} s] {name}")
        if opts.out_dir:
            from dmd_fast.bench.report import write_markdown

            write_markdown(results, os.path.join(opts.out_dir, "results.md"))

    cases = attention_cases(opts.quick, device)
    op_prov = _wanted(opts, "attention", device) if "attention" in suites else []
    cheap_op = [p for p in op_prov if not bl.ATTENTION_PROVIDERS[p].compiled]
    costly_op = [p for p in op_prov if bl.ATTENTION_PROVIDERS[p].compiled]
    gd_prov = _wanted(opts, "graph_distill", device) if "graph_distill" in suites else []
    model_prov = _wanted(opts, "model", device) if "model" in suites else []

    # 1. attention, uncompiled providers
    for i, case in enumerate(cases):
        if cheap_op:
            phase(f"attention {case.name}")
        for p in cheap_op:
            run_attention_item(rec, opts, device, case, p, budget, rates, count_launches=(i == 0))
    # 2. zero-recompile check
    if "attention" in suites and "ours" in op_prov:
        phase("zero-recompile check (8 length pairs)")
        results["checks"]["recompile"] = recompile_check(opts, device, budget)
        rec.save()
        log(f"  recompile: {results['checks']['recompile']}")
    # 3. GD, uncompiled
    for case in graph_distill_cases(opts.quick) if gd_prov else []:
        phase(f"graph_distill {case.name}")
        for p in gd_prov:
            if not bl.GD_PROVIDERS[p].compiled:
                run_graph_distill_item(rec, opts, device, case, p, budget)
    # 4. model level, uncompiled
    for what in ("hetero", "step") if model_prov else ():
        phase(f"model {what}")
        for p in model_prov:
            if p != "compiled":
                run_model_item(rec, opts, device, what, p, budget)
    # 5-7. everything that goes through torch.compile: the two largest attention cases first, then
    # GD and the model level, then the remaining attention cases (compiles dominate the run time)
    ranked = sorted(cases, key=lambda c: (-(c.Lq * c.Lk * c.D), c.dtype != "fp32"))

    def compiled_attention(chosen):
        for case in chosen:
            if costly_op:
                phase(f"attention (compiled providers) {case.name}")
                reset_dynamo()
            for p in costly_op:
                run_attention_item(rec, opts, device, case, p, budget, rates, count_launches=(case == ranked[0]))

    compiled_attention(ranked[:2])
    for case in graph_distill_cases(opts.quick) if "compiled" in gd_prov else []:
        phase(f"graph_distill (compiled) {case.name}")
        run_graph_distill_item(rec, opts, device, case, "compiled", budget)
    for what in ("hetero", "step") if "compiled" in model_prov else ():
        phase(f"model {what} (compiled)")
        reset_dynamo()
        run_model_item(rec, opts, device, what, "compiled", budget)
    compiled_attention(ranked[2:])
    # 8. larger cases for scaling
    if op_prov and not opts.quick and device.type == "cuda":
        for case in SCALING_CASES:
            phase(f"attention scaling {case.name}")
            reset_dynamo()
            for p in op_prov:
                run_attention_item(rec, opts, device, case, p, budget, rates)
    if device.type == "cuda":
        results["env"]["nvml_end"] = nvml_snapshot()
    results["elapsed_s"] = round(budget.elapsed(), 1)
    phase("done")
    return results
