"""Count the device kernels one DMD training step launches, on any machine (no GPU needed).

A ``TorchDispatchMode`` sees every ATen op below autograd (forward, losses, backward with the
trainer's in-place gradient accumulation, and upstream's clip); ops that touch tensors are counted
(views, allocations and dtype/shape-only ops are not; in-place and ``_foreach`` ops are), host scalar
reads (``.item()``-style, a device sync on a GPU) are counted apart, and Triton kernels are counted
at their launch. Other host syncs (a copy to the CPU, ``nonzero``) are not detected on a CPU run.
``execute_triton=False`` counts the Triton launches without running them (their outputs are
left uninitialised): a DMD step has no data-dependent control flow, so the counts are those of a
real step, and a CPU counts the Triton backend's mosi-sized step in seconds instead of minutes in
the interpreter. On a GPU the profiler's count (``baselines.count_kernel_launches``) is the
authority; this is the dispatch-level view of the same step.

    python -m dmd_fast.bench.launches [--preset mosi-unaligned] [--batch 16] [--out DIR]
    python -m dmd_fast.bench.launches --mode inference [--batch 1]   (full eval forward vs DMD.predict)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
NO_KERNEL = {
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.new_empty.default,
    aten.empty_like.default,
    aten.new_empty_strided.default,
    aten.detach.default,
    aten.alias.default,
    aten.lift_fresh.default,
}
HOST_SYNC = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default}


def _touches_tensors(func) -> bool:
    """False for dtype/shape-only ops (``promote_types``...): no tensor among arguments or returns."""
    schema = func._schema
    return any("Tensor" in str(a.type) for a in (*schema.arguments, *schema.returns))


class LaunchCounter(TorchDispatchMode):
    """Records ``aten_ops`` (ops that launch a kernel), ``triton`` (launched kernel names) and ``syncs``."""

    def __init__(self):
        super().__init__()
        self.aten_ops: list[str] = []
        self.triton: list[str] = []
        self.syncs: list[str] = []
        self._paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._paused:
            if func in HOST_SYNC:
                self.syncs.append(str(func))
            elif not func.is_view and func not in NO_KERNEL and _touches_tensors(func):
                self.aten_ops.append(str(func))
        return out

    @property
    def total(self) -> int:
        return len(self.aten_ops) + len(self.triton)


class _CountingKernel:
    """Stands in for a ``@triton.jit`` function: ``kernel[grid](...)`` is counted, then run or not."""

    def __init__(self, kernel, counter: LaunchCounter, name: str, execute: bool):
        self.kernel, self.counter, self.name, self.execute = kernel, counter, name, execute

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.counter.triton.append(self.name)
            if not self.execute:
                return None
            self.counter._paused = True  # the interpreter's own tensor traffic is not the step's
            try:
                return self.kernel[grid](*args, **kwargs)
            finally:
                self.counter._paused = False

        return run


@contextlib.contextmanager
def count_launches(*kernels, execute_triton: bool = True):
    """``with count_launches((module, "kernel_name"), ...) as c:`` → c.aten_ops, c.triton, c.syncs."""
    counter = LaunchCounter()
    saved = [(m, n, getattr(m, n)) for m, n in kernels]
    try:
        for m, n, k in saved:
            setattr(m, n, _CountingKernel(k, counter, n, execute_triton))
        with counter:
            yield counter
    finally:
        for m, n, k in saved:
            setattr(m, n, k)


def dmd_kernels() -> list[tuple]:
    """(module, name) of every Triton kernel dmd_fast launches."""
    import dmd_fast.kernels.attention as ka
    import dmd_fast.kernels.encoder_embed as ke
    import dmd_fast.kernels.encoder_ffn as kf
    import dmd_fast.kernels.encoder_in_proj as kp
    import dmd_fast.kernels.graph_distill as kg
    import dmd_fast.kernels.linear_grouped as kn
    import dmd_fast.kernels.loss_terms as kl
    import dmd_fast.kernels.margin_loss as km

    return [(m, n) for m in (ka, ke, kp, kf, kg, kl, km, kn) for n in sorted(vars(m)) if n.endswith("_kernel")]


def step_launch_counts(
    preset: str = "mosi-unaligned",
    batch: int = 16,
    backends=("reference", "triton"),
    device: str = "cpu",
    execute_triton: bool = False,
) -> dict:
    """Kernels of one DMD mini-batch (forward, all losses, backward summed into existing gradients,
    ``clip_grad_value_``) per backend, after a warm-up step; the optimizer step (once per accumulation
    window) is not included. The reference sums as upstream does (``loss.backward()``: one ``add_`` per
    parameter), the other backends as dmd_fast's trainer (``train.grad_sum``: one multi-tensor add)."""
    from dmd_fast.model.config import get_preset
    from dmd_fast.model.system import DMDSystem

    cfg = get_preset(preset)
    batch_t = _random_batch(cfg, batch, device)
    out = {}
    for backend in backends:
        torch.manual_seed(0)
        system = DMDSystem(cfg, backend=backend).to(device).train()
        kernels = dmd_kernels() if backend != "reference" else []
        params = list(system.parameters())
        for _counted in (False, True):  # warm-up (compilation, caches, gradients allocated), then counted
            system.zero_grad(set_to_none=False)  # the trainer zeroes in place: backward then accumulates
            with count_launches(*kernels, execute_triton=execute_triton) as c:
                mini_batch(system, batch_t, params)
        out[backend] = _summary(c)
    return {
        "preset": preset,
        "batch": batch,
        "device": device,
        "triton_executed": execute_triton,
        "torch": torch.__version__,
        "commit": _git_commit(),
        "backends": out,
    }


def mini_batch(system, batch_t, params, losses_hook=None) -> None:
    """One training mini-batch: forward, every loss, backward summed into ``.grad``, upstream's clip.
    The reference backend sums as upstream (``loss.backward()``: one ``add_`` per parameter), the others
    as dmd_fast's trainer (``train.grad_sum``: one multi-tensor add). ``losses_hook(losses)`` runs
    between the forward and the backward."""
    from dmd_fast.train.grad_sum import backward_into_grads

    _, losses = system(*batch_t)
    if losses_hook is not None:
        losses_hook(losses)
    if system.dmd.backend == "reference":
        losses["total"].backward()
    else:
        backward_into_grads(losses["total"], params)
    torch.nn.utils.clip_grad_value_(params, system.config.grad_clip)


def _random_batch(cfg, batch: int, device) -> list:
    """[text (B, T_l, d_l), audio, vision, labels (B,)] drawn from a fixed seed."""
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    gen = torch.Generator().manual_seed(0)
    return [
        t.to(device)
        for t in (
            torch.randn(batch, tl, dl, generator=gen),
            torch.randn(batch, ta, da, generator=gen),
            torch.randn(batch, tv, dv, generator=gen),
            torch.randn(batch, generator=gen),
        )
    ]


def _summary(c: LaunchCounter) -> dict:
    return {
        "kernels": c.total,
        "aten": len(c.aten_ops),
        "triton": len(c.triton),
        "host_syncs": len(c.syncs),
        "top_aten": dict(collections.Counter(c.aten_ops).most_common(10)),
        "triton_by_kernel": dict(collections.Counter(c.triton)),
    }


def inference_launch_counts(
    preset: str = "mosi-unaligned",
    batch: int = 1,
    backends=("reference", "triton"),
    device: str = "cpu",
    execute_triton: bool = False,
) -> dict:
    """Kernels of one inference call under ``torch.no_grad`` in eval mode, after a warm-up call: the full
    eval forward (every upstream output; what upstream runs at test time) and the pruned
    ``DMD.predict`` per backend. ``reduction`` is the reference full forward's count over each pruned one."""
    from dmd_fast.model.config import get_preset
    from dmd_fast.model.dmd import DMD

    cfg = get_preset(preset)
    text, audio, vision, _ = _random_batch(cfg, batch, device)
    out = {}
    for backend in backends:
        torch.manual_seed(0)
        model = DMD(cfg, backend=backend).to(device).eval()
        kernels = dmd_kernels() if backend != "reference" else []
        for mode, fn in (
            ("full_eval_forward", lambda: model(text, audio, vision)),
            ("predict", lambda: model.predict(text, audio, vision)),
        ):
            for _ in range(2):  # warm-up, then counted
                with torch.no_grad(), count_launches(*kernels, execute_triton=execute_triton) as c:
                    fn()
            out[f"{backend} {mode}"] = _summary(c)
    base = out.get("reference full_eval_forward", {}).get("kernels")
    reduction = {k: round(base / v["kernels"], 2) for k, v in out.items() if base and k.endswith(" predict")}
    return {
        "mode": "inference",
        "preset": preset,
        "batch": batch,
        "device": device,
        "triton_executed": execute_triton,
        "torch": torch.__version__,
        "commit": _git_commit(),
        "backends": out,
        "reduction_vs_reference_full_forward": reduction,
    }


def _git_commit() -> str | None:
    import subprocess

    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                cwd=os.path.dirname(os.path.abspath(__file__)),
            ).stdout.strip()
            or None
        )
    except Exception:
        return None


def format_counts(res: dict) -> str:
    if res.get("mode") == "inference":
        return _format_inference(res)
    lines = [
        f"Kernels per DMD mini-batch (preset {res['preset']}, B={res['batch']}; forward, every loss, "
        f"backward into existing gradients, clip), counted at dispatch on {res['device']}"
        + ("" if res["triton_executed"] else " with Triton launches counted, not run")
        + ":",
        "",
        "| backend | kernels | ATen | Triton | host scalar reads |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in res["backends"].items():
        lines.append(f"| {name} | {r['kernels']} | {r['aten']} | {r['triton']} | {r['host_syncs']} |")
    return "\n".join(lines)


def _format_inference(res: dict) -> str:
    lines = [
        f"Kernels per inference call (preset {res['preset']}, B={res['batch']}, eval mode, no_grad), counted "
        f"at dispatch on {res['device']}"
        + ("" if res["triton_executed"] else " with Triton launches counted, not run")
        + ":",
        "",
        "| backend and path | kernels | ATen | Triton | host scalar reads | reference full forward / this |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    red = res["reduction_vs_reference_full_forward"]
    for name, r in res["backends"].items():
        ratio = f"{red[name]:.2f}x" if name in red else "-"
        lines.append(f"| {name} | {r['kernels']} | {r['aten']} | {r['triton']} | {r['host_syncs']} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mosi-unaligned")
    p.add_argument("--batch", type=int, default=None, help="default 16 (train), 1 (inference)")
    p.add_argument(
        "--mode",
        default="train",
        choices=("train", "inference"),
        help="train: one training mini-batch; inference: full eval forward vs DMD.predict",
    )
    p.add_argument("--out", default=None, help="folder for launches.json / launches.md")
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = 16 if args.mode == "train" else 1
    if args.batch < 1:
        print(f"launches: error: --batch: expected >= 1, got {args.batch}", file=sys.stderr)
        return 2
    counter = step_launch_counts if args.mode == "train" else inference_launch_counts
    return run_tool("launches", lambda: counter(args.preset, args.batch), format_counts, args.out)


def run_tool(tool: str, compute, fmt, out: str | None) -> int:
    """A bench tool's tail: ``compute()`` (CPU tensors may take the Triton backend: the interpreter is
    set), print ``fmt(result)``, write ``TOOL.json`` / ``TOOL.md`` into ``out``; 2 on a known error."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        res = compute()
    except (KeyError, ValueError) as exc:
        print(f"{tool}: error: {exc}", file=sys.stderr)
        return 2
    text = fmt(res)
    print(text)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{tool}.json"), "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(out, f"{tool}.md"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
