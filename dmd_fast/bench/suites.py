"""The benchmark suites behind ``dmd-fast bench``.

- ``op``: the cross-modal attention core at DMD's shapes (B=16; 46x496 and 496x371 at head dim 5,
  H=10; 496x496 at head dim 10, H=10 (MOSI memory encoders, d=100); aligned 46x46), fp32 and bf16,
  offset-causal mask, dropout 0.3: forward, forward+backward (eager-launched) and forward+backward
  replayed from a CUDA graph, peak extra memory, and each result against the floor of
  :mod:`dmd_fast.bench.floors`; plus the zero-recompile check over eight length pairs and two
  larger cases for scaling.
- ``gd``: the graph-distillation op (DMD's homo and hetero units, B=16) and its launch count.
- ``model``: one DMD training step (precomputed text features, MOSI unaligned, B=16, every
  dropout of the preset; forward, backward, ``clip_grad_value_``, Adam step) and one hetero-branch
  step (the six cross-modal and three memory encoders, forward+backward on s features (T', B, d)),
  as samples/s and peak memory.

Work runs cheapest-first (uncompiled providers, checks, model, then everything that goes through
``torch.compile``) under an optional time budget; what the budget leaves out is recorded as
skipped with the reason. Every failure (unsupported case, capture failure, out of memory, any
error) becomes a row with a reason; nothing here raises out of :func:`run_suites`.
"""
from __future__ import annotations

import gc
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.bench import floors as fl
from dmd_fast.bench.memory import MiB, nvml_snapshot, peak_extra_memory
from dmd_fast.bench.timing import CaptureError, short_reason, time_fn

SUITES = ("op", "gd", "model", "all")
MODEL_PROVIDERS = ("eager", "compiled", "ours", "cudagraph")
ALL_PROVIDERS = tuple(dict.fromkeys(list(bl.ATTENTION_PROVIDERS) + list(bl.GD_PROVIDERS) + list(MODEL_PROVIDERS)))
PROVIDER_HELP = {
    "ours": "dmd_fast Triton kernels (backend='triton')",
    "eager": "upstream-faithful eager PyTorch (attention core as MulT; GD and model: dmd_fast.reference)",
    "compiled": "the eager path under torch.compile",
    "sdpa": "F.scaled_dot_product_attention with the same bool mask (op suite)",
    "sdpa_flash_nomask": "SDPA flash without mask, bf16: not equivalent, lower bound (op suite, CUDA)",
    "flex": "FlexAttention compiled, d padded to 16, no dropout (op suite, CUDA)",
    "reference": "dmd_fast.reference attention (op suite)",
    "cudagraph": "ours, whole step captured in a CUDA graph (model suite, CUDA)",
}

# DMD (MOSI unaligned) shapes, B=16: (Lq, Lk, head_dim); H=10 everywhere (d=50 -> hd 5, d=100 -> hd 10)
FULL_SHAPES = ((46, 496, 5), (496, 371, 5), (496, 496, 10), (46, 46, 5))
SCALING_CASES = (bl.AttnCase(64, 10, 500, 500, 5, "bf16"), bl.AttnCase(16, 10, 2000, 2000, 10, "fp32"))
QUICK_SHAPES = ((6, 10, 5), (10, 7, 5), (8, 8, 10))
RECOMPILE_PAIRS = ((46, 46), (50, 50), (46, 371), (46, 496), (371, 496), (496, 46), (500, 500), (500, 50))


@dataclass
class SuiteOptions:
    """What to run and how hard to measure."""
    suites: tuple = ("all",)
    quick: bool = False
    device: str = "auto"
    providers: tuple | None = None        # None: the defaults of each suite
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


def _cleanup(device):
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _measure(fn: Callable) -> dict:
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _configure_dynamo():
    try:
        import torch._dynamo.config as dc
        for attr in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dc, attr):
                setattr(dc, attr, max(getattr(dc, attr), 256))
    except Exception:
        pass


def _reset_dynamo():
    try:
        torch._dynamo.reset()
    except Exception:
        pass


def default_providers(suite: str, device: torch.device, quick: bool) -> tuple:
    cuda = device.type == "cuda"
    if suite == "op":
        if cuda:
            base = ("ours", "eager", "sdpa", "sdpa_flash_nomask", "compiled", "flex")
            return base + (("reference",) if quick else ())
        return ("ours", "eager", "sdpa", "reference")
    if suite == "gd":
        return ("ours", "eager", "compiled") if cuda else ("ours", "eager")
    if suite == "model":
        return ("eager", "ours", "cudagraph", "compiled") if cuda else ("eager", "ours")
    raise ValueError(f"suite: expected one of {SUITES}, got {suite!r}")


def _wanted(opts: SuiteOptions, suite: str, device) -> list[str]:
    known = {"op": bl.ATTENTION_PROVIDERS, "gd": bl.GD_PROVIDERS, "model": dict.fromkeys(MODEL_PROVIDERS)}[suite]
    if opts.providers is None:
        return list(default_providers(suite, device, opts.quick))
    return [p for p in opts.providers if p in known]


def _skip_row(rec: Recorder, base: dict, status: str, reason: str):
    row = dict(base, status=status, reason=reason, modes={})
    rec.add(row)
    rec.log(f"  {base.get('provider')}: {status}: {reason}")


def _setup_failure_row(exc: Exception, rec: Recorder, base: dict, device):
    """Row for a provider that could not be set up: unsupported here, out of memory, or an error."""
    if isinstance(exc, bl.Unsupported):
        return _skip_row(rec, base, "skipped", str(exc))
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        _cleanup(device)
        return _skip_row(rec, base, "oom", short_reason(exc))
    return _skip_row(rec, base, "error", short_reason(exc))


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------

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
    return {"fwd_us": f_fwd["floor_us"], "fwdbwd_us": f_all["floor_us"],
            "fwd_bound": f_fwd["passes"]["fwd"]["bound"], "bwd_bound": f_all["passes"]["bwd"]["bound"],
            "launch_us_fwdbwd": f_all["launch_us"]}


def run_attention_item(rec: Recorder, opts: SuiteOptions, device, case: bl.AttnCase, pname: str,
                       budget: Budget, rates=None, count_launches: bool = False):
    spec = bl.ATTENTION_PROVIDERS[pname]
    base = {"suite": "attention", "case": case.name, "shape": case.as_dict(), "provider": pname,
            "label": spec.label, "equivalent": True}
    cuda = device.type == "cuda"
    need = 20.0 if spec.compiled else 2.0
    if not budget.allows(need if cuda else 0.0):
        return _skip_row(rec, base, "skipped", f"time budget exhausted ({budget.remaining():.0f} s left)")
    if spec.cuda_only and not cuda:
        return _skip_row(rec, base, "skipped", f"{pname} needs CUDA")
    if spec.compiled and not cuda and opts.providers is None:
        return _skip_row(rec, base, "skipped", "torch.compile baselines are not run on the CPU by default "
                                                "(name them in --backend-list to run them)")
    torch.manual_seed(0)
    try:
        sets = bl.make_attention_inputs(case, device, opts.n_sets)
        built = spec.build(case, device, sets[0])
        if built.prepare is not None:
            sets = [built.prepare(*s) for s in sets]
    except Exception as exc:
        return _setup_failure_row(exc, rec, base, device)
    row = dict(base, equivalent=built.equivalent, note=built.note, extra=dict(built.extra), modes={}, memory={})

    def fwd(q, k, v, g):
        return built.fn(q, k, v)

    def fwdbwd(q, k, v, g):
        o = built.fn(q, k, v)
        return torch.autograd.grad(o, (q, k, v), g)

    tkw = dict(device=device, warmup_ms=opts.warmup_ms, rep_ms=opts.rep_ms)
    row["modes"]["fwd"] = _measure(lambda: time_fn(fwd, sets, **tkw))
    row["modes"]["fwdbwd"] = _measure(lambda: time_fn(fwdbwd, sets, **tkw))
    if cuda:
        for mode, f in (("fwd", fwd), ("fwdbwd", fwdbwd)):
            if row["modes"][mode]["status"] == "ok":
                m = _measure(lambda: peak_extra_memory(f, *sets[0], device=device))
                row["memory"][mode] = m.get("peak_extra_mb")
        if row["modes"]["fwdbwd"]["status"] == "ok":
            row["modes"]["graph_fwdbwd"] = _measure(lambda: time_fn(fwdbwd, sets, graph=True, **tkw))
        else:
            row["modes"]["graph_fwdbwd"] = {"status": "skipped", "reason": "fwd+bwd did not run"}
        if count_launches and row["modes"]["fwdbwd"]["status"] == "ok":
            row["extra"]["launches_fwdbwd"] = _measure(lambda: bl.count_kernel_launches(fwdbwd, *sets[0]))
    else:
        row["modes"]["graph_fwdbwd"] = {"status": "skipped", "reason": "CUDA graphs need CUDA"}
    row["floor"] = _attention_floor(case, rates, cuda)
    if row["floor"]:
        for mode, key in (("fwd", "fwd_us"), ("fwdbwd", "fwdbwd_us"), ("graph_fwdbwd", "fwdbwd_us")):
            m = row["modes"].get(mode, {})
            if m.get("status") == "ok":
                m["floor_fraction"] = fl.floor_fraction(row["floor"][key], m["median_us"])
    statuses = {m.get("status") for m in row["modes"].values()}
    row["status"] = "ok" if "ok" in statuses else sorted(statuses)[0]
    if cuda:
        row["nvml"] = _nvml_brief()
    rec.add(row)
    rec.log("  " + _brief(row))
    del sets, built
    _cleanup(device)


def _nvml_brief() -> dict:
    snap = nvml_snapshot()
    if not snap.get("available"):
        return {"available": False}
    return {k: snap.get(k) for k in ("memory_used_mb", "power_w", "sm_clock_mhz", "temperature_c")}


def _brief(row: dict) -> str:
    parts = []
    for mode, m in row.get("modes", {}).items():
        if m.get("status") == "ok":
            parts.append(f"{mode} {m['median_us']:.1f} us")
        else:
            parts.append(f"{mode} {m.get('status')}")
    return f"{row['provider']}: " + ", ".join(parts)


def recompile_check(opts: SuiteOptions, device, budget: Budget) -> dict:
    """Distinct compiled variants of our attention kernels before/after the eight length pairs."""
    if device.type != "cuda":
        return {"status": "skipped", "reason": "needs compiled Triton kernels on CUDA (the interpreter keeps no "
                                               "kernel cache)"}
    if not budget.allows(10.0):
        return {"status": "skipped", "reason": "time budget exhausted"}
    try:
        from dmd_fast.ops.attention import cross_modal_attention
        import dmd_fast.kernels.attention as kmod
    except ImportError as exc:
        return {"status": "skipped", "reason": f"dmd_fast.ops.attention not importable yet ({exc})"}
    jits = _jit_functions(kmod)
    if not jits:
        return {"status": "error", "reason": "no triton JITFunction found in dmd_fast.kernels.attention"}
    B, H, D = (2, 2, 5) if opts.quick else (16, 10, 5)
    out = {"status": "ok", "pairs": [list(p) for p in RECOMPILE_PAIRS], "B": B, "H": H, "D": D,
           "offset_causal": True, "dropout_p": 0.3, "per_dtype": {}}
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
            out["per_dtype"][dtype] = {"variants_after_each_pair": counts,
                                       "recompiles_after_first_pair": counts[-1] - counts[0]}
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


# ------------------------------------------------------------------------------------------------
# graph distillation
# ------------------------------------------------------------------------------------------------

def gd_cases(quick: bool) -> list[bl.GDCase]:
    if quick:
        return [bl.GDCase("homo", 4, 12, 16, "l1"), bl.GDCase("hetero", 4, 24, 8, "cosine")]
    # MOSI: d=50; homo reprs are d, hetero reprs 2d
    return [bl.GDCase("homo", 16, 50, 64, "l1"), bl.GDCase("hetero", 16, 100, 32, "cosine")]


def run_gd_item(rec: Recorder, opts: SuiteOptions, device, case: bl.GDCase, pname: str, budget: Budget):
    spec = bl.GD_PROVIDERS[pname]
    base = {"suite": "gd", "case": case.name, "shape": case.as_dict(), "provider": pname, "label": spec.label,
            "equivalent": True}
    cuda = device.type == "cuda"
    if not budget.allows((15.0 if spec.compiled else 1.0) if cuda else 0.0):
        return _skip_row(rec, base, "skipped", "time budget exhausted")
    if spec.compiled and not cuda and opts.providers is None:
        return _skip_row(rec, base, "skipped", "torch.compile baselines are not run on the CPU by default")
    torch.manual_seed(0)
    try:
        sets = bl.make_gd_inputs(case, device, opts.n_sets)
        built = spec.build(case, device, sets[0])
    except Exception as exc:
        return _setup_failure_row(exc, rec, base, device)
    row = dict(base, note=built.note, extra={}, modes={}, memory={})

    def fwd(*inp):
        return built.fn(*inp)

    def fwdbwd(*inp):
        res = built.fn(*inp)
        return torch.autograd.grad(bl.gd_losses(res), inp[:8], allow_unused=True)

    tkw = dict(device=device, warmup_ms=opts.warmup_ms, rep_ms=opts.rep_ms)
    row["modes"]["fwd"] = _measure(lambda: time_fn(fwd, sets, **tkw))
    row["modes"]["fwdbwd"] = _measure(lambda: time_fn(fwdbwd, sets, **tkw))
    if cuda:
        if row["modes"]["fwdbwd"]["status"] == "ok":
            row["memory"]["fwdbwd"] = _measure(
                lambda: peak_extra_memory(fwdbwd, *sets[0], device=device)).get("peak_extra_mb")
            row["modes"]["graph_fwdbwd"] = _measure(lambda: time_fn(fwdbwd, sets, graph=True, **tkw))
            row["extra"]["launches_fwdbwd"] = _measure(lambda: bl.count_kernel_launches(fwdbwd, *sets[0]))
        else:
            row["modes"]["graph_fwdbwd"] = {"status": "skipped", "reason": "fwd+bwd did not run"}
    else:
        row["modes"]["graph_fwdbwd"] = {"status": "skipped", "reason": "CUDA graphs need CUDA"}
    statuses = {m.get("status") for m in row["modes"].values()}
    row["status"] = "ok" if "ok" in statuses else sorted(statuses)[0]
    rec.add(row)
    rec.log("  " + _brief(row))
    _cleanup(device)


# ------------------------------------------------------------------------------------------------
# model level
# ------------------------------------------------------------------------------------------------

def _model_config(quick: bool):
    from dmd_fast.model.config import get_preset
    return get_preset("tiny" if quick else "mosi-unaligned"), (4 if quick else 16)


class HeteroBranch(torch.nn.Module):
    """DMD's six cross-modal encoders and three memory encoders on s features (T', B, d), through the
    model's own ``hetero_branch`` (grouped launches on the Triton backend, one by one on the reference)."""

    def __init__(self, dmd):
        super().__init__()
        self.dmd = dmd

    def forward(self, s_l, s_a, s_v):
        h = self.dmd.hetero_branch({"l": s_l, "a": s_a, "v": s_v})
        return h["l"], h["a"], h["v"]


def _backend_for(pname: str, device) -> str:
    from dmd_fast.ops.backend import interpreter_enabled
    if pname in ("ours", "cudagraph"):
        if device.type == "cpu" and not interpreter_enabled():
            raise bl.Unsupported("ours on the CPU needs the Triton interpreter: set TRITON_INTERPRET=1 (skipped)")
        return "triton"
    return "reference"


def _build_model_step(pname: str, device, quick: bool):
    """(step fn, arg sets, samples per call, note) for one DMD training step."""
    try:
        from dmd_fast.model.system import DMDSystem
    except ImportError as exc:
        raise bl.Unsupported(f"dmd_fast.model.system not importable yet ({exc})") from exc
    cfg, B = _model_config(quick)
    backend = _backend_for(pname, device)
    torch.manual_seed(0)
    system = DMDSystem(cfg, backend=backend).to(device).train()
    opt = torch.optim.Adam(system.parameters(), lr=cfg.learning_rate, capturable=(pname == "cudagraph"))
    model = torch.compile(system) if pname == "compiled" else system
    params = [p for p in system.parameters() if p.requires_grad]
    clip = cfg.grad_clip

    def step(text, audio, vision, labels):
        opt.zero_grad(set_to_none=True)
        _, losses = model(text, audio, vision, labels)
        losses["total"].backward()
        if clip != -1.0:
            torch.nn.utils.clip_grad_value_(params, clip)
        opt.step()
        return losses["total"].detach()

    (Tl, Ta, Tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    gen = torch.Generator(device="cpu").manual_seed(1)
    sets = []
    for _ in range(2):
        sets.append((torch.randn(B, Tl, dl, generator=gen).to(device), torch.randn(B, Ta, da, generator=gen).to(device),
                     torch.randn(B, Tv, dv, generator=gen).to(device),
                     (torch.rand(B, generator=gen) * 6 - 3).to(device)))
    note = (f"preset {cfg.name}, B={B}, backend={backend}; step = fwd + losses + bwd + clip_grad_value_ + Adam "
            f"(upstream steps Adam every {cfg.update_epochs} batches)")
    return step, sets, B, note


def _build_hetero_step(pname: str, device, quick: bool):
    """(fwd+bwd fn, arg sets, samples per call, note) for the hetero branch."""
    from dmd_fast.model.dmd import DMD
    cfg, B = _model_config(quick)
    backend = _backend_for(pname, device)
    torch.manual_seed(0)
    branch = HeteroBranch(DMD(cfg, backend=backend)).to(device).train()
    model = torch.compile(branch) if pname == "compiled" else branch
    params = [p for n, p in branch.named_parameters() if p.requires_grad
              and n.startswith(("dmd.trans_l_", "dmd.trans_a_", "dmd.trans_v_"))]
    tl_, ta_, tv_ = cfg.conv_out_lens
    d = cfg.d_model
    gen = torch.Generator(device="cpu").manual_seed(2)

    def rnd(*shape, grad=False):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_(grad)
    sets = []
    for _ in range(2):
        s = (rnd(tl_, B, d, grad=True), rnd(ta_, B, d, grad=True), rnd(tv_, B, d, grad=True))
        g = (rnd(tl_, B, 2 * d), rnd(ta_, B, 2 * d), rnd(tv_, B, 2 * d))
        sets.append(s + g)

    def fwdbwd(s_l, s_a, s_v, g_l, g_a, g_v):
        outs = model(s_l, s_a, s_v)
        return torch.autograd.grad(outs, params + [s_l, s_a, s_v], (g_l, g_a, g_v), allow_unused=True)
    note = f"preset {cfg.name}, B={B}, T'=(l {tl_}, a {ta_}, v {tv_}), d={d}, backend={backend}"
    return fwdbwd, sets, B, note


def run_model_item(rec: Recorder, opts: SuiteOptions, device, what: str, pname: str, budget: Budget):
    cuda = device.type == "cuda"
    labels = {"eager": "reference eager", "compiled": "reference + torch.compile", "ours": "dmd_fast Triton",
              "cudagraph": "dmd_fast Triton + CUDA graph"}
    base = {"suite": "model", "case": "DMD train step" if what == "step" else "hetero branch fwd+bwd",
            "provider": pname, "label": labels[pname], "equivalent": True}
    need = {"compiled": 90.0, "cudagraph": 10.0}.get(pname, 5.0)
    if not budget.allows(need if cuda else 0.0):
        return _skip_row(rec, base, "skipped", f"time budget exhausted ({budget.remaining():.0f} s left, "
                                               f"~{need:.0f} s needed)")
    if pname == "cudagraph" and not cuda:
        return _skip_row(rec, base, "skipped", "CUDA graphs need CUDA")
    if pname == "compiled" and not cuda and opts.providers is None:
        return _skip_row(rec, base, "skipped", "torch.compile baselines are not run on the CPU by default")
    if pname == "ours" and not cuda and opts.providers is None:
        return _skip_row(rec, base, "skipped", "model-level ours on the CPU runs every kernel in the Triton "
                                               "interpreter (~20-35 s per step); name 'ours' in --backend-list "
                                               "to run it anyway")
    try:
        builder = _build_model_step if what == "step" else _build_hetero_step
        fn, sets, samples, note = builder(pname, device, opts.quick)
    except Exception as exc:
        return _setup_failure_row(exc, rec, base, device)
    row = dict(base, note=note, modes={}, memory={}, extra={})
    graph = pname == "cudagraph"
    tkw = dict(device=device, warmup_ms=opts.warmup_ms * 4, rep_ms=opts.rep_ms * 5, min_reps=5 if cuda else 1)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mb = torch.cuda.memory_allocated() / MiB
    m = _measure(lambda: time_fn(fn, sets, graph=graph, **tkw))
    if graph and m["status"] != "ok":
        m["reason"] = m.get("reason", "") + " (the whole step must be capturable: no host syncs, no CPU tensors)"
    row["modes"]["step"] = m
    if m["status"] == "ok":
        row["samples_per_s"] = samples / (m["median_us"] * 1e-6)
        row["step_ms"] = m["median_us"] / 1e3
        if cuda:
            if graph:  # warm-up steps + capture: the graph's private pool included
                torch.cuda.synchronize()
                row["memory"]["step"] = round(torch.cuda.max_memory_allocated() / MiB - base_mb, 3)
                row["extra"]["memory_note"] = "peak during warm-up and capture (graph pool included)"
            else:
                row["memory"]["step"] = _measure(
                    lambda: peak_extra_memory(fn, *sets[0], device=device)).get("peak_extra_mb")
                # device kernels per call, from the profiler (warm: the timing above compiled everything)
                row["extra"]["kernels_per_call"] = _measure(lambda: bl.count_kernel_launches(fn, *sets[0]))
    row["status"] = m["status"]
    row["reason"] = m.get("reason")
    rec.add(row)
    rec.log("  " + _brief(row) + (f", {row['samples_per_s']:.0f} samples/s" if "samples_per_s" in row else ""))
    del fn, sets
    _cleanup(device)


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------

def _floors(rec: Recorder, device, nvml: dict):
    if device.type != "cuda":
        rec.results["floors"] = {"status": "skipped", "reason": "floors are for CUDA devices (H100 anchors)"}
        return None
    bw = _measure(lambda: fl.measure_copy_bandwidth(device))
    sm, clock = fl.read_sm_count_and_clock(device, nvml)
    rates = fl.device_rates(sm, clock, bw.get("bytes_per_s") if bw["status"] == "ok" else None)
    rec.results["floors"] = {"copy": bw, "sm_count": sm, "sm_clock_hz": clock, "rates": rates.as_dict(),
                             "launch_us": fl.LAUNCH_US}
    rec.save()
    rec.log(f"copy bandwidth: {bw.get('gb_per_s', float('nan')):.0f} GB/s; rates: {rates.source}")
    return rates


def new_results(device, opts: SuiteOptions) -> dict:
    from dmd_fast.bench.report import collect_environment
    return {"schema": 1, "env": collect_environment(device),
            "options": {"suites": list(opts.suites), "quick": opts.quick, "device": str(device),
                        "providers": None if opts.providers is None else list(opts.providers),
                        "time_budget_s": opts.time_budget_s, "warmup_ms": opts.warmup_ms, "rep_ms": opts.rep_ms,
                        "n_sets": opts.n_sets, "cpu_threads": torch.get_num_threads()},
            "rows": [], "checks": {}, "floors": {}, "notes": []}


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
    suites = set(opts.suites)
    if "all" in suites:
        suites = {"op", "gd", "model"}
    budget = Budget(opts.time_budget_s)
    results = new_results(device, opts)
    rec = Recorder(results, opts.out_dir, opts.log)
    rec.save()
    _configure_dynamo()
    log = opts.log
    log(f"dmd-fast bench: suites {sorted(suites)} on {results['env'].get('device_name')} "
        f"({'quick' if opts.quick else 'full'})")
    rates = _floors(rec, device, results["env"].get("nvml", {})) if "op" in suites else None

    def phase(name: str):
        log(f"[{budget.elapsed():6.1f} s] {name}")
        if opts.out_dir:
            from dmd_fast.bench.report import write_markdown
            write_markdown(results, os.path.join(opts.out_dir, "results.md"))

    cases = attention_cases(opts.quick, device)
    op_prov = _wanted(opts, "op", device) if "op" in suites else []
    cheap_op = [p for p in op_prov if not bl.ATTENTION_PROVIDERS[p].compiled]
    costly_op = [p for p in op_prov if bl.ATTENTION_PROVIDERS[p].compiled]
    gd_prov = _wanted(opts, "gd", device) if "gd" in suites else []
    model_prov = _wanted(opts, "model", device) if "model" in suites else []

    # 1. attention, uncompiled providers
    for i, case in enumerate(cases):
        if cheap_op:
            phase(f"attention {case.name}")
        for p in cheap_op:
            run_attention_item(rec, opts, device, case, p, budget, rates, count_launches=(i == 0))
    # 2. zero-recompile check
    if "op" in suites and "ours" in op_prov:
        phase("zero-recompile check (8 length pairs)")
        results["checks"]["recompile"] = recompile_check(opts, device, budget)
        rec.save()
        log(f"  recompile: {results['checks']['recompile']}")
    # 3. GD, uncompiled
    for case in gd_cases(opts.quick) if gd_prov else []:
        phase(f"gd {case.name}")
        for p in gd_prov:
            if not bl.GD_PROVIDERS[p].compiled:
                run_gd_item(rec, opts, device, case, p, budget)
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
                _reset_dynamo()
            for p in costly_op:
                run_attention_item(rec, opts, device, case, p, budget, rates, count_launches=(case == ranked[0]))
    compiled_attention(ranked[:2])
    for case in gd_cases(opts.quick) if "compiled" in gd_prov else []:
        phase(f"gd (compiled) {case.name}")
        run_gd_item(rec, opts, device, case, "compiled", budget)
    for what in ("hetero", "step") if "compiled" in model_prov else ():
        phase(f"model {what} (compiled)")
        _reset_dynamo()
        run_model_item(rec, opts, device, what, "compiled", budget)
    compiled_attention(ranked[2:])
    # 8. larger cases for scaling
    if op_prov and not opts.quick and device.type == "cuda":
        for case in SCALING_CASES:
            phase(f"attention scaling {case.name}")
            _reset_dynamo()
            for p in op_prov:
                run_attention_item(rec, opts, device, case, p, budget, rates)
    if device.type == "cuda":
        results["env"]["nvml_end"] = nvml_snapshot()
    results["elapsed_s"] = round(budget.elapsed(), 1)
    phase("done")
    return results
