"""Inference latency suite (``dmd-fast bench --suite latency``): DMD.predict per batch size and provider.

Providers (one model's weights shared by all):

- ``ref_eager``: the reference backend, eager ``DMD.predict`` (the baseline of every "diff" column);
- ``ref_compile`` / ``ref_compile_ro``: the reference inference forward under ``torch.compile``
  (default mode / ``mode="reduce-overhead"``, i.e. CUDA graphs: GPU only), static shapes per batch size;
- ``ours_eager``: the Triton backend, eager (on the CPU only under the Triton interpreter);
- ``ours_cudagraph``: the Triton backend replayed from a CUDA graph captured per batch size (static
  input buffers; the timed call copies the inputs in and replays): GPU only;
- ``exported``: the ``torch.export`` program of the inference forward (``dmd_fast.load_exported``;
  Triton backend on CUDA, reference backend on the CPU);
- ``aoti``: that program (reference backend, dynamic batch) compiled once by AOTInductor into a package
  (``dmd-fast export --aoti``) and reused at every batch size; its first row's first call includes the
  compilation (minutes on a small CPU).

Each row: p50/p90/p99/mean/std of per-call latency (each call isolated, device synchronised) over
>= 200 timed calls after warm-up (``--quick`` on the CPU may time fewer: the row says how many),
the first call (compilation or capture included), kernels per call (CUDA: the profiler; CPU: ATen
dispatches + Triton launches, not available for inductor's C++ kernels), peak extra memory (CUDA
only) and the largest |difference| of the outputs from ``ref_eager``'s. Rows that cannot run here say
why ("GPU only", ...) and carry no numbers. Writes ``latency.json``, ``latency.md``, ``latency.png``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dmd_fast.bench.memory import peak_extra_memory
from dmd_fast.bench.timing import CaptureError, call_samples, capture_graph, quantile, short_reason

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCH_SIZES = (1, 4)
MIN_CALLS = 200
QUICK_ROW_SECONDS = 5.0  # quick mode: timed calls per row are cut to about this much run time (>= 5 calls)
PROVIDERS = {
    "ref_eager": "reference backend, eager DMD.predict",
    "ref_compile": "reference inference forward under torch.compile (default mode, static shapes)",
    "ref_compile_ro": 'reference inference forward under torch.compile(mode="reduce-overhead") (CUDA graphs)',
    "ours_eager": "dmd_fast Triton backend, eager DMD.predict",
    "ours_cudagraph": "dmd_fast Triton backend, DMD.predict replayed from a CUDA graph per batch size",
    "exported": "torch.export program of the inference forward (Triton backend on CUDA, reference on CPU)",
    "aoti": "AOTInductor package of the reference inference forward (dynamic batch, compiled once)",
}
GPU_ONLY = {"ref_compile_ro": "CUDA graphs need a GPU", "ours_cudagraph": "CUDA graphs need a GPU"}


@dataclass
class Built:
    """A provider ready to time: ``fn(text, audio, vision)`` → (B, 1); ``first_ms`` overrides the first
    call's time when setup did the costly part (capture); ``extra`` goes into the row."""

    fn: Callable
    first_ms: float | None = None
    extra: dict | None = None
    dispatch_countable: bool = True


def latency_config(quick: bool):
    from dmd_fast.model.config import get_preset

    return get_preset("tiny" if quick else "mosi-unaligned")


def _inputs(cfg, B: int, device, n_sets: int = 2) -> list:
    from dmd_fast.inference.export import example_inputs

    return [example_inputs(cfg, B, device, seed=100 + i) for i in range(n_sets)]


class Models:
    """The reference and Triton DMD (same weights, eval mode) on ``device``; the Triton one only when
    it can run here."""

    def __init__(self, cfg, device):
        from dmd_fast.model.dmd import DMD
        from dmd_fast.ops.backend import interpreter_enabled

        torch.manual_seed(0)
        self.ref = DMD(cfg, backend="reference").to(device).eval()
        self.aoti = None  # (loaded package, compile seconds, batch it was traced at), built on first use
        self.ours = None
        self.ours_reason = None
        if device.type == "cuda" or interpreter_enabled():
            self.ours = DMD(cfg, backend="triton").to(device).eval()
            self.ours.load_state_dict(self.ref.state_dict())
        else:
            self.ours_reason = "the Triton backend on the CPU needs TRITON_INTERPRET=1"


def _no_grad(fn):
    def call(*x):
        with torch.no_grad():
            return fn(*x)

    return call


def build(provider: str, models: Models, cfg, B: int, device, sets) -> Built:
    """Set up one provider at batch size B (raises ``Unsupported`` with the reason when it cannot run)."""
    from dmd_fast.bench.baselines import Unsupported

    cuda = device.type == "cuda"
    if provider in GPU_ONLY and not cuda:
        raise Unsupported(f"GPU only ({GPU_ONLY[provider]})")
    if provider.startswith("ours") and models.ours is None:
        raise Unsupported(models.ours_reason)
    if provider == "ref_eager":
        return Built(models.ref.predict)
    if provider == "ours_eager":
        return Built(models.ours.predict)
    if provider in ("ref_compile", "ref_compile_ro"):
        torch._dynamo.reset()
        mode = "reduce-overhead" if provider == "ref_compile_ro" else None
        compiled = torch.compile(models.ref, mode=mode, dynamic=False)
        return Built(
            _no_grad(lambda t, a, v: compiled(t, a, v, inference=True)["output_logit"]), dispatch_countable=False
        )
    if provider == "ours_cudagraph":
        static = [t.clone() for t in sets[0]]
        t0 = time.perf_counter()
        graph, outs = capture_graph(models.ours.predict, [static])
        capture_ms = (time.perf_counter() - t0) * 1e3

        def replay(t, a, v):
            for buf, x in zip(static, (t, a, v)):
                buf.copy_(x)
            graph.replay()
            return outs[0]

        return Built(replay, first_ms=capture_ms, extra={"graph": graph})
    if provider == "exported":
        import tempfile

        from dmd_fast.inference.export import export_model, load_exported, save_exported

        model = models.ours if cuda else models.ref
        t0 = time.perf_counter()
        program = export_model(model, batch_size=B)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.pt2")
            save_exported(program, path, model, B)
            loaded = load_exported(path)
        export_s = time.perf_counter() - t0
        return Built(_no_grad(loaded), extra={"export_and_load_s": round(export_s, 2), "backend": model.backend})
    if provider == "aoti":
        return _aoti(models, B)
    raise ValueError(f"provider: expected one of {sorted(PROVIDERS)}, got {provider!r}")


def _aoti(models: Models, B: int) -> Built:
    """The AOTInductor package of the reference model, compiled at the first batch size asked for."""
    import tempfile

    from dmd_fast.inference.export import export_model, load_exported, save_aoti

    if models.aoti is None:
        t0 = time.perf_counter()
        program = export_model(models.ref, batch_size=B, dynamic_batch=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.pt2")
            save_aoti(program, path, models.ref, B, dynamic_batch=True)
            loaded = load_exported(path)  # the package's library is loaded: the file may go
        models.aoti = (loaded, time.perf_counter() - t0, B)
        first_ms = models.aoti[1] * 1e3
    else:
        first_ms = None
    loaded, compile_s, traced_at = models.aoti
    extra = {"export_and_compile_s": round(compile_s, 1), "compiled_at_batch": traced_at, "backend": "reference"}
    return Built(_no_grad(loaded), first_ms=first_ms, extra=extra, dispatch_countable=False)


def _kernels(built: Built, args, device) -> dict:
    if device.type == "cuda":
        from dmd_fast.bench.baselines import count_kernel_launches

        return {"kernels": count_kernel_launches(built.fn, *args)["kernels"], "how": "torch.profiler (CUDA)"}
    if not built.dispatch_countable:
        return {"kernels": None, "how": "n/a on the CPU: inductor's C++ kernels bypass ATen dispatch"}
    from dmd_fast.bench.launches import count_launches, dmd_kernels

    with count_launches(*dmd_kernels()) as c:
        built.fn(*args)
    return {"kernels": c.total, "how": "ATen dispatches + Triton launches (CPU)"}


def _stats(samples_ms: list) -> dict:
    us = [s * 1e3 for s in samples_ms]
    return {
        "p50_us": quantile(us, 0.5),
        "p90_us": quantile(us, 0.9),
        "p99_us": quantile(us, 0.99),
        "mean_us": statistics.fmean(us),
        "std_us": statistics.stdev(us) if len(us) > 1 else 0.0,
        "n_calls": len(us),
    }


def _first_call_ms(built: Built, args, device) -> float:
    """Wall time of one synchronised call in ms."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    built.fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def _n_calls(built: Built, args, quick: bool, device) -> tuple[int, str | None]:
    """Timed calls for a row (``built`` warm): MIN_CALLS, or in quick mode what fits in
    QUICK_ROW_SECONDS (>= 5), estimated from one more call."""
    if not quick:
        return MIN_CALLS, None
    est_s = _first_call_ms(built, args, device) / 1e3
    n = int(min(MIN_CALLS, max(5, QUICK_ROW_SECONDS / max(est_s, 1e-6))))
    return n, (None if n >= MIN_CALLS else f"quick: {n} timed calls (< {MIN_CALLS}; ~{est_s * 1e3:.0f} ms per call)")


def run_row(provider: str, models: Models, cfg, B: int, device, quick: bool, reference_out) -> dict:
    """One measured row (never raises: failures become a status and a reason)."""
    from dmd_fast.bench.baselines import Unsupported

    row = {
        "suite": "latency",
        "case": f"B={B}",
        "batch": B,
        "provider": provider,
        "label": PROVIDERS[provider],
        "preset": cfg.name,
    }
    sets = _inputs(cfg, B, device)
    try:
        built = build(provider, models, cfg, B, device, sets)
        first_ms = _first_call_ms(built, sets[0], device)  # compilation happens here (capture: in build)
        n, note = _n_calls(built, sets[0], quick, device)
        samples, _ = call_samples(built.fn, sets, device=device, n_calls=n, warmup_calls=1 if quick else 5)
        row.update(_stats(samples), status="ok", first_call_ms=built.first_ms or first_ms)
        out = built.fn(*sets[0]).float()
        row["max_abs_diff_vs_ref_eager"] = (out - reference_out).abs().max().item()
        row["kernels_per_call"] = _kernels(built, sets[0], device)
        mem = peak_extra_memory(built.fn, *sets[0], device=device)
        row["peak_extra_mb"] = mem["peak_extra_mb"]
        if mem.get("reason"):
            row["peak_note"] = mem["reason"]
        row["samples_per_s"] = B / (row["p50_us"] * 1e-6)
        if note:
            row["note"] = note
        if built.extra:
            row["extra"] = {k: v for k, v in built.extra.items() if k != "graph"}
    except Unsupported as exc:
        row.update(status="skipped", reason=str(exc))
    except CaptureError as exc:
        row.update(status="capture_failed", reason=str(exc))
    except Exception as exc:  # a row records its failure; the suite goes on
        row.update(status="error", reason=short_reason(exc))
    return row


def run_latency(
    quick: bool, device, providers=None, batch_sizes=None, time_budget_s=None, log=print, out_dir: str | None = None
) -> dict:
    """All rows of the suite, batch size by batch size, providers in the given order → results dict (env,
    options, rows). With ``out_dir``, latency.json is rewritten after every row (a killed run keeps its rows)."""
    from dmd_fast.bench.report import collect_environment, write_json
    from dmd_fast.bench.suites.runner import Budget, configure_dynamo

    device = torch.device(device)
    cfg = latency_config(quick)
    batch_sizes = tuple(batch_sizes or (QUICK_BATCH_SIZES if quick else BATCH_SIZES))
    providers = tuple(providers or PROVIDERS)
    budget = Budget(time_budget_s)
    results = {
        "schema": 1,
        "suite": "latency",
        "env": collect_environment(device),
        "options": {
            "quick": quick,
            "device": str(device),
            "preset": cfg.name,
            "batch_sizes": list(batch_sizes),
            "providers": list(providers),
            "min_calls": MIN_CALLS,
            "time_budget_s": time_budget_s,
            "cpu_threads": torch.get_num_threads(),
        },
        "rows": [],
    }
    configure_dynamo()
    models = Models(cfg, device)
    for B in batch_sizes:
        ref_out = models.ref.predict(*_inputs(cfg, B, device)[0]).float()
        for p in providers:
            if not budget.allows(0.0):
                row = {
                    "suite": "latency",
                    "case": f"B={B}",
                    "batch": B,
                    "provider": p,
                    "label": PROVIDERS[p],
                    "preset": cfg.name,
                    "status": "skipped",
                    "reason": "time budget exhausted",
                }
            else:
                row = run_row(p, models, cfg, B, device, quick, ref_out)
            results["rows"].append(row)
            if out_dir:
                write_json(results, os.path.join(out_dir, "latency.json"))
            log(
                f"  B={B} {p}: "
                + (
                    f"p50 {row['p50_us']:.0f} us, p99 {row['p99_us']:.0f} us ({row['n_calls']} calls)"
                    if row["status"] == "ok"
                    else f"{row['status']}: {row['reason']}"
                )
            )
    results["elapsed_s"] = round(budget.elapsed(), 1)
    return results


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _ms(us) -> str:
    return "-" if us is None else (f"{us / 1e3:.2f}" if us >= 100 else f"{us / 1e3:.3f}")


def markdown(results: dict) -> str:
    env, opts = results["env"], results["options"]
    lines = [
        f"# DMD inference latency: {env.get('device_name')}",
        "",
        f"{env.get('date')}; torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda_runtime')}, "
        f"python {env.get('python')}, {env.get('platform')}, {env.get('cpu_count')} CPUs "
        f"({opts.get('cpu_threads')} torch thread(s)); TRITON_INTERPRET={env.get('triton_interpret') or '0'}; "
        f"commit `{env.get('git_commit')}`",
        f"preset {opts['preset']}, {'quick' if opts['quick'] else 'full'}, device {opts['device']}; "
        f"elapsed {results.get('elapsed_s')} s",
        "",
        "Per-call latency in ms (each call isolated and synchronised), over the timed calls after warm-up; "
        "first call includes compilation / capture; max |diff| against ref_eager's outputs.",
        "",
        "| B | provider | p50 | p90 | p99 | mean ± std | calls | first call ms | kernels/call | peak MiB "
        "| max abs diff | samples/s | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        if r["status"] != "ok":
            cell = "GPU only" if r.get("reason", "").startswith("GPU only") else r["status"]
            lines.append(f"| {r['batch']} | {r['provider']} | " + " | ".join([cell] * 11) + f" | {r.get('reason')} |")
            continue
        k = r["kernels_per_call"]
        notes = "; ".join(
            x
            for x in (
                r.get("note"),
                k["how"] if k["kernels"] is None else None,
                r.get("peak_note"),
                ", ".join(f"{a} {b}" for a, b in (r.get("extra") or {}).items()),
            )
            if x
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["batch"]),
                    r["provider"],
                    _ms(r["p50_us"]),
                    _ms(r["p90_us"]),
                    _ms(r["p99_us"]),
                    f"{_ms(r['mean_us'])} ± {_ms(r['std_us'])}",
                    str(r["n_calls"]),
                    f"{r['first_call_ms']:.0f}",
                    "-" if k["kernels"] is None else str(k["kernels"]),
                    "-" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.2f}",
                    f"{r['max_abs_diff_vs_ref_eager']:.2e}",
                    f"{r['samples_per_s']:.0f}",
                    notes,
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> str | None:
    """p50 latency and throughput (B / p50) against batch size, one line per provider that ran."""
    from dmd_fast.bench.report import _plt

    plt = _plt()
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    if not ok:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for p in dict.fromkeys(r["provider"] for r in ok):
        rows = sorted((r for r in ok if r["provider"] == p), key=lambda r: r["batch"])
        bs = [r["batch"] for r in rows]
        ax1.plot(bs, [r["p50_us"] / 1e3 for r in rows], marker="o", label=p)
        ax2.plot(bs, [r["samples_per_s"] for r in rows], marker="o", label=p)
    not_run = sorted({r["provider"] for r in results["rows"] if r["status"] != "ok"} - {r["provider"] for r in ok})
    for ax, ylabel in ((ax1, "p50 latency (ms)"), (ax2, "throughput (samples/s at p50)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    title = f"DMD inference, {results['options']['preset']}, {results['env'].get('device_name')}"
    if not_run:
        title += f"\nnot run here: {', '.join(not_run)}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_latency_report(results: dict, out_dir: str, plots: bool = True) -> list:
    from dmd_fast.bench.report import write_json

    os.makedirs(out_dir, exist_ok=True)
    written = [os.path.join(out_dir, "latency.json"), os.path.join(out_dir, "latency.md")]
    write_json(results, written[0])
    with open(written[1], "w", encoding="utf-8") as f:
        f.write(markdown(results))
    if plots:
        png = plot(results, os.path.join(out_dir, "latency.png"))
        if png:
            written.append(png)
    return written


def parse_providers(text: str | None):
    """``--backend-list`` for this suite: comma-separated names from PROVIDERS (None: all)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in PROVIDERS]
    if not names or unknown:
        raise ValueError(f"--backend-list: expected latency providers from {', '.join(PROVIDERS)}, got {text!r}")
    return tuple(dict.fromkeys(names))
