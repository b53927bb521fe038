"""The attention suite: the cross-modal attention core at DMD's shapes, every provider, and the
zero-recompile check.

B=16; 46x496 and 496x371 at head dim 5, H=10; 496x496 at head dim 10 (MOSI memory encoders, d=100);
aligned 46x46; fp32 and bf16, offset-causal mask, dropout 0.3: forward, forward+backward
(eager-launched) and forward+backward replayed from a CUDA graph, peak extra memory, each result
against the floor of :mod:`dmd_fast.bench.floors`; two larger cases for scaling.
"""

from __future__ import annotations

import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.bench import floors as fl
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
from dmd_fast.bench.timing import short_reason, time_fn

# DMD (MOSI unaligned) shapes, B=16: (Lq, Lk, head_dim); H=10 everywhere (d=50 -> hd 5, d=100 -> hd 10)
FULL_SHAPES = ((46, 496, 5), (496, 371, 5), (496, 496, 10), (46, 46, 5))
SCALING_CASES = (bl.AttnCase(64, 10, 500, 500, 5, "bf16"), bl.AttnCase(16, 10, 2000, 2000, 10, "fp32"))
QUICK_SHAPES = ((6, 10, 5), (10, 7, 5), (8, 8, 10))
RECOMPILE_PAIRS = ((46, 46), (50, 50), (46, 371), (46, 496), (371, 496), (496, 46), (500, 500), (500, 50))


def attention_cases(quick: bool, device: torch.device) -> list[bl.AttnCase]:
    if quick:
        dtypes = ("fp32", "bf16") if device.type == "cuda" else ("fp32",)
        return [bl.AttnCase(2, 2, lq, lk, d, dt) for dt in dtypes for lq, lk, d in QUICK_SHAPES]
    return [bl.AttnCase(16, 10, lq, lk, d, dt) for dt in ("fp32", "bf16") for lq, lk, d in FULL_SHAPES]


def _attention_floor(case: bl.AttnCase, rates, cuda: bool) -> dict | None:
    if not cuda or rates is None:
        return None
    kw = dict(dtype=case.dtype, dropout=case.dropout_p > 0, rates=rates)
    f_fwd = fl.attention_floor(case.B, case.H, case.Lq, case.Lk, case.D, mode="fwd", **kw)
    f_all = fl.attention_floor(case.B, case.H, case.Lq, case.Lk, case.D, mode="fwdbwd", **kw)
    return {
        "fwd_us": f_fwd["floor_us"],
        "fwdbwd_us": f_all["floor_us"],
        "fwd_bound": f_fwd["passes"]["fwd"]["bound"],
        "bwd_bound": f_all["passes"]["bwd"]["bound"],
        "launch_us_fwdbwd": f_all["launch_us"],
    }


def run_attention_item(
    rec: Recorder,
    opts: SuiteOptions,
    device,
    case: bl.AttnCase,
    pname: str,
    budget: Budget,
    rates=None,
    count_launches: bool = False,
):
    spec = bl.ATTENTION_PROVIDERS[pname]
    base = base_row("attention", case, pname, spec.label)
    cuda = device.type == "cuda"
    refuse = None
    if spec.cuda_only and not cuda:
        refuse = f"{pname} needs CUDA"
    elif spec.compiled and not cuda and opts.providers is None:
        refuse = COMPILED_ON_CPU

    def build():
        sets = bl.make_attention_inputs(case, device, opts.n_sets)
        built = spec.build(case, device, sets[0])
        if built.prepare is not None:
            sets = [built.prepare(*s) for s in sets]
        return sets, built

    def measure_into(sets_built, row):
        sets, built = sets_built
        row.update(equivalent=built.equivalent, note=built.note, extra=dict(built.extra))

        def fwd(q, k, v, g):
            return built.fn(q, k, v)

        def fwdbwd(q, k, v, g):
            o = built.fn(q, k, v)
            return torch.autograd.grad(o, (q, k, v), g)

        tkw = dict(device=device, warmup_ms=opts.warmup_ms, rep_ms=opts.rep_ms)
        row["modes"]["fwd"] = measure(lambda: time_fn(fwd, sets, **tkw))
        row["modes"]["fwdbwd"] = measure(lambda: time_fn(fwdbwd, sets, **tkw))
        if cuda:
            for mode, f in (("fwd", fwd), ("fwdbwd", fwdbwd)):
                if row["modes"][mode]["status"] == "ok":
                    m = measure(lambda: peak_extra_memory(f, *sets[0], device=device))
                    row["memory"][mode] = m.get("peak_extra_mb")
            if row["modes"]["fwdbwd"]["status"] == "ok":
                row["modes"]["graph_fwdbwd"] = measure(lambda: time_fn(fwdbwd, sets, graph=True, **tkw))
            else:
                row["modes"]["graph_fwdbwd"] = {"status": "skipped", "reason": "fwd+bwd did not run"}
            if count_launches and row["modes"]["fwdbwd"]["status"] == "ok":
                row["extra"]["launches_fwdbwd"] = measure(lambda: bl.count_kernel_launches(fwdbwd, *sets[0]))
        else:
            row["modes"]["graph_fwdbwd"] = {"status": "skipped", "reason": "CUDA graphs need CUDA"}
        row["floor"] = _attention_floor(case, rates, cuda)
        if row["floor"]:
            for mode, key in (("fwd", "fwd_us"), ("fwdbwd", "fwdbwd_us"), ("graph_fwdbwd", "fwdbwd_us")):
                m = row["modes"].get(mode, {})
                if m.get("status") == "ok":
                    m["floor_fraction"] = fl.floor_fraction(row["floor"][key], m["median_us"])

    run_item(
        rec,
        device,
        base,
        need_s=need_seconds("attention", "compiled" if spec.compiled else "plain", cuda),
        budget=budget,
        refuse=refuse,
        build=build,
        measure_into=measure_into,
    )


def recompile_check(opts: SuiteOptions, device, budget: Budget) -> dict:
    """Distinct compiled variants of our attention kernels before/after the eight length pairs."""
    if device.type != "cuda":
        return {
            "status": "skipped",
            "reason": "needs compiled Triton kernels on CUDA (the interpreter keeps no kernel cache)",
        }
    if not budget.allows(need_seconds("check", "recompile", True)):
        return {"status": "skipped", "reason": "time budget exhausted"}
    try:
        import dmd_fast.kernels.attention as kmod
        from dmd_fast.ops.attention import cross_modal_attention
    except ImportError as exc:
        return {"status": "skipped", "reason": f"dmd_fast.ops.attention not importable yet ({exc})"}
    jits = _jit_functions(kmod)
    if not jits:
        return {"status": "error", "reason": "no triton JITFunction found in dmd_fast.kernels.attention"}
    B, H, D = (2, 2, 5) if opts.quick else (16, 10, 5)
    out = {
        "status": "ok",
        "pairs": [list(p) for p in RECOMPILE_PAIRS],
        "B": B,
        "H": H,
        "D": D,
        "offset_causal": True,
        "dropout_p": 0.3,
        "per_dtype": {},
    }
    try:
        out["variants_before"] = _variant_count(jits)
        for dtype in ("fp32", "bf16"):
            counts = []
            for i, (lq, lk) in enumerate(RECOMPILE_PAIRS):
                case = bl.AttnCase(B, H, lq, lk, D, dtype)
                q, k, v, g = bl.make_attention_inputs(case, device, 1, seed=i)[0]
                o = cross_modal_attention(q, k, v, offset_causal=True, dropout_p=0.3, backend="triton")
                torch.autograd.grad(o, (q, k, v), g)
                torch.cuda.synchronize()
                counts.append(_variant_count(jits))
            out["per_dtype"][dtype] = {
                "variants_after_each_pair": counts,
                "recompiles_after_first_pair": counts[-1] - counts[0],
            }
    except Exception as exc:
        return {"status": "error", "reason": short_reason(exc), **{k: out[k] for k in ("pairs", "per_dtype")}}
    total = sum(d["recompiles_after_first_pair"] for d in out["per_dtype"].values())
    out["recompiles"] = total
    out["passed"] = total == 0
    out["kernels"] = sorted(jits)
    return out


def _jit_functions(module) -> dict:
    """name -> triton JITFunction for every kernel object in a module (autotuners unwrapped)."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return {}
    found = {}
    for name, obj in vars(module).items():
        inner, depth = obj, 0
        while not isinstance(inner, JITFunction) and hasattr(inner, "fn") and depth < 5:
            inner, depth = inner.fn, depth + 1
        if isinstance(inner, JITFunction):
            found[name] = inner
    return found


def _variant_count(jits: dict) -> int:
    n = 0
    for jf in jits.values():
        caches = getattr(jf, "device_caches", None)
        if caches is not None:
            for entry in list(caches.values()):
                kc = entry[0] if isinstance(entry, tuple) else entry
                n += len(kc)
        elif isinstance(getattr(jf, "cache", None), dict):  # older Triton
            n += sum(len(c) for c in jf.cache.values())
    return n
