"""Host time of one DMD training mini-batch with the device work stubbed, on any machine.

On a GPU an eager step at DMD's sizes is host-bound: the step takes as long as Python, the
dispatcher and the launchers need to issue its kernels. This measures that host path on the CPU:
the model at a preset's widths with every sequence cut to ``--seq`` steps and a small batch, so the
CPU ATen kernels have almost nothing to compute; Triton launches are stubbed at ``kernel[grid]``
(everything of ours up to the launch runs: validation, descriptor tables, allocations; Triton's own
launch path does not). One mini-batch = ``launches.mini_batch`` (forward, every loss, backward into
existing gradients, clip). Each backend runs ``--warmup`` mini-batches, then ``--steps`` timed ones.

What is in the figure: Python, autograd, the dispatcher, the CPU kernels at tiny sizes (an upper
bound of the device work's host share). What is not: the CUDA driver's launch cost (~2-5 µs per
kernel), Triton's ``JITFunction.run`` (argument binding and the cache lookup), host syncs.

    python -m dmd_fast.bench.host_time [--preset mosi-unaligned] [--seq 8] [--batch 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

from dmd_fast.bench.launches import _CountingKernel, _git_commit, _random_batch, dmd_kernels, mini_batch, run_tool


class _Discard:
    """The counter a stubbed kernel reports to: launches are tallied, nothing else."""

    def __init__(self):
        self.triton: list[str] = []
        self._paused = False


@contextlib.contextmanager
def stubbed_triton(kernels):
    """Every ``kernel[grid](...)`` of ``kernels`` returns at once (counted on the yielded object)."""
    sink = _Discard()
    saved = [(m, n, getattr(m, n)) for m, n in kernels]
    try:
        for m, n, k in saved:
            setattr(m, n, _CountingKernel(k, sink, n, execute=False))
        yield sink
    finally:
        for m, n, k in saved:
            setattr(m, n, k)


LAUNCHERS = (  # (module, function): the host functions that end in a Triton launch
    ("dmd_fast.kernels.attention", "attention_fwd"),
    ("dmd_fast.kernels.attention", "attention_bwd"),
    ("dmd_fast.kernels.attention", "attention_fwd_grouped"),
    ("dmd_fast.kernels.attention", "attention_bwd_grouped"),
    ("dmd_fast.kernels.encoder_embed", "embed_fwd_grouped"),
    ("dmd_fast.kernels.encoder_embed", "embed_bwd_grouped"),
    ("dmd_fast.kernels.encoder_in_proj", "in_proj_fwd_grouped"),
    ("dmd_fast.kernels.encoder_in_proj", "in_proj_bwd_grouped"),
    ("dmd_fast.kernels.encoder_ffn", "ffn_fwd_grouped"),
    ("dmd_fast.kernels.encoder_ffn", "ffn_bwd_grouped"),
    ("dmd_fast.kernels.graph_distill", "graph_distill_fwd"),
    ("dmd_fast.kernels.loss_terms", "loss_terms_fwd"),
    ("dmd_fast.kernels.loss_terms", "loss_terms_bwd"),
    ("dmd_fast.kernels.margin_loss", "margin_fwd"),
    ("dmd_fast.kernels.margin_loss", "margin_bwd"),
    ("dmd_fast.kernels.linear_grouped", "linear_fwd_grouped"),
    ("dmd_fast.kernels.linear_grouped", "linear_bwd_grouped"),
)


@contextlib.contextmanager
def timed_launchers():
    """Wraps each of ``LAUNCHERS``: yields {name: [seconds per call]} (the outermost call only)."""
    import importlib

    calls: dict[str, list[float]] = {}
    depth = [0]
    saved = []

    def wrap(name, fn):
        def timed(*args, **kwargs):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    calls.setdefault(name, []).append(time.perf_counter() - t0)

        return timed

    try:
        for mod_name, fn_name in LAUNCHERS:
            mod = importlib.import_module(mod_name)
            saved.append((mod, fn_name, getattr(mod, fn_name)))
            setattr(mod, fn_name, wrap(fn_name, getattr(mod, fn_name)))
        yield calls
    finally:
        for mod, fn_name, fn in saved:
            setattr(mod, fn_name, fn)


def short_config(preset: str, seq: int):
    """The preset with every sequence cut to ``seq`` steps (at least each conv kernel's size)."""
    from dmd_fast.model.config import get_preset

    cfg = get_preset(preset)
    if seq < max(cfg.conv_kernels):
        raise ValueError(f"seq: expected >= the largest conv kernel {max(cfg.conv_kernels)}, got {seq}")
    return cfg.replace(seq_lens=(seq, seq, seq), name=f"{cfg.name}-T{seq}")


def time_backend(cfg, backend: str, batch: int, steps: int, warmup: int) -> dict:
    """Seconds per mini-batch over ``steps`` timed calls (after ``warmup``), and Triton launches per call."""
    from dmd_fast.model.system import DMDSystem

    torch.manual_seed(0)
    system = DMDSystem(cfg, backend=backend).train()
    params = list(system.parameters())
    batch_t = _random_batch(cfg, batch, "cpu")
    kernels = dmd_kernels() if backend != "reference" else []
    times = []
    with stubbed_triton(kernels) as sink:
        for i in range(warmup + steps):
            system.zero_grad(set_to_none=False)
            t0 = time.perf_counter()
            mini_batch(system, batch_t, params)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times.append(dt)
        launchers = {}
        if kernels:  # separately: the wrappers' own cost stays out of the step times above
            with timed_launchers() as calls:
                for _ in range(steps):
                    mini_batch(system, batch_t, params)
            launchers = {
                n: {"calls_per_step": len(t) // steps, "median_us": 1e6 * statistics.median(t)}
                for n, t in sorted(calls.items())
            }
    launches = len(sink.triton) // (warmup + 2 * steps if kernels else warmup + steps)
    q = statistics.quantiles(times, n=10)
    return {
        "launchers": launchers,
        "median_ms": 1e3 * statistics.median(times),
        "p10_ms": 1e3 * q[0],
        "p90_ms": 1e3 * q[-1],
        "min_ms": 1e3 * min(times),
        "steps": steps,
        "triton_launches": launches,
    }


def host_time(preset="mosi-unaligned", seq=8, batch=2, steps=30, warmup=3, backends=("reference", "triton")) -> dict:
    cfg = short_config(preset, seq)
    torch.set_num_threads(1)  # a host thread issues the kernels; CPU kernels must not fan out
    torch.set_flush_denormal(True)  # stubbed outputs are uninitialised memory: no denormal slow paths
    rows = {b: time_backend(cfg, b, batch, steps, warmup) for b in backends}
    return {
        "preset": preset,
        "seq": seq,
        "batch": batch,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "commit": _git_commit(),
        "backends": rows,
    }


def format_host_time(res: dict) -> str:
    lines = [
        f"Host time per DMD mini-batch (preset {res['preset']} widths, sequences cut to {res['seq']}, "
        f"B={res['batch']}; Triton launches stubbed; torch {res['torch']}, one CPU thread):",
        "",
        "| backend | median ms | p10 ms | p90 ms | min ms | timed steps | Triton launches |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["backends"].items():
        lines.append(
            f"| {name} | {r['median_ms']:.1f} | {r['p10_ms']:.1f} | {r['p90_ms']:.1f} | {r['min_ms']:.1f} | "
            f"{r['steps']} | {r['triton_launches']} |"
        )
    for name, r in res["backends"].items():
        if r["launchers"]:
            lines += [
                "",
                f"Host time inside dmd_fast's launchers ({name}; from the call to the stubbed launch):",
                "",
                "| launcher | calls per step | median µs per call |",
                "|---|---:|---:|",
            ]
            for fn, t in r["launchers"].items():
                lines.append(f"| {fn} | {t['calls_per_step']} | {t['median_us']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mosi-unaligned")
    p.add_argument("--seq", type=int, default=8, help="steps per sequence (default 8)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="timed mini-batches per backend")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None, help="folder for host_time.json / host_time.md")
    args = p.parse_args(argv)
    for name in ("batch",):
        if getattr(args, name) < 1:
            print(f"host_time: error: --{name}: expected >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.steps < 2:
        print(f"host_time: error: --steps: expected >= 2 (a spread needs two), got {args.steps}", file=sys.stderr)
        return 2
    return run_tool(
        "host_time",
        lambda: host_time(args.preset, args.seq, args.batch, args.steps, args.warmup),
        format_host_time,
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
