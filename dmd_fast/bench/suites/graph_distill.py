"""The graph-distillation suite: DMD's homo and hetero GD units (B=16), every provider, and the
launches of one forward+backward."""

from __future__ import annotations

import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.bench.memory import peak_extra_memory
from dmd_fast.bench.suites.runner import (
    COMPILED_ON_CPU,
    Budget,
    Recorder,
    SuiteOptions,
    base_row,
    measure,
    need_seconds,
    run_item,
)
from dmd_fast.bench.timing import time_fn


def graph_distill_cases(quick: bool) -> list[bl.GDCase]:
    if quick:
        return [bl.GDCase("homo", 4, 12, 16, "l1"), bl.GDCase("hetero", 4, 24, 8, "cosine")]
    # MOSI: d=50; homo reprs are d, hetero reprs 2d
    return [bl.GDCase("homo", 16, 50, 64, "l1"), bl.GDCase("hetero", 16, 100, 32, "cosine")]


def run_graph_distill_item(rec: Recorder, opts: SuiteOptions, device, case: bl.GDCase, pname: str, budget: Budget):
    spec = bl.GD_PROVIDERS[pname]
    base = base_row("graph_distill", case, pname, spec.label)
    cuda = device.type == "cuda"
    refuse = None
    if spec.compiled and not cuda and opts.providers is None:
        refuse = COMPILED_ON_CPU

    def build():
        sets = bl.make_gd_inputs(case, device, opts.n_sets)
        return sets, spec.build(case, device, sets[0])

    def measure_into(sets_built, row):
        sets, built = sets_built
        row["note"] = built.note

        def fwd(*inp):
            return built.fn(*inp)

        def fwdbwd(*inp):
            res = built.fn(*inp)
            return torch.autograd.grad(bl.gd_losses(res), inp[:8], allow_unused=True)

        tkw = dict(device=device, warmup_ms=opts.warmup_ms, rep_ms=opts.rep_ms)
        row["modes"]["fwd"] = measure(lambda: time_fn(fwd, sets, **tkw))
        row["modes"]["fwdbwd"] = measure(lambda: time_fn(fwdbwd, sets, **tkw))
        if not cuda:
            row["modes"]["graph_fwdbwd"] = {"status": "skipped", "reason": "CUDA graphs need CUDA"}
        elif row["modes"]["fwdbwd"]["status"] == "ok":
            row["memory"]["fwdbwd"] = measure(lambda: peak_extra_memory(fwdbwd, *sets[0], device=device)).get(
                "peak_extra_mb"
            )
            row["modes"]["graph_fwdbwd"] = measure(lambda: time_fn(fwdbwd, sets, graph=True, **tkw))
            row["extra"]["launches_fwdbwd"] = measure(lambda: bl.count_kernel_launches(fwdbwd, *sets[0]))
        else:
            row["modes"]["graph_fwdbwd"] = {"status": "skipped", "reason": "fwd+bwd did not run"}

    run_item(
        rec,
        device,
        base,
        need_s=need_seconds("graph_distill", "compiled" if spec.compiled else "plain", cuda),
        budget=budget,
        refuse=refuse,
        build=build,
        measure_into=measure_into,
    )
