"""Where a DMD mini-batch's kernels go: the launch count by model part, forward and backward.

Counted as ``dmd_fast.bench.launches`` counts (ATen ops at dispatch plus Triton launches, after a
warm-up step), each attributed to a part:

- forward: the innermost ``nn.Module`` method on the Python stack (``self`` in a frame), named by its
  qualified name in the system and mapped to a part by :func:`part_of` (or a ``FUNCTION_PARTS``
  frame: the grouped encoders' fused layers, the grouped heads);
- backward: the autograd node that runs the op (``torch._C._current_autograd_node``). Nodes are
  tagged in the forward with the part that created them (a ``TorchFunctionMode`` sees each torch call
  above autograd; module hooks tag the nodes of custom autograd functions, e.g. the fused ops); a node
  still untagged takes its consumer's part. ``AccumulateGrad`` nodes are ``gradient accumulation``;
- the trainer's steps outside autograd: ``gradient accumulation`` (``train.grad_sum``) and ``clip``.

    python -m dmd_fast.bench.breakdown [--preset mosi-unaligned] [--batch 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import re
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from dmd_fast.bench.launches import (
    LaunchCounter,
    _CountingKernel,
    _git_commit,
    _random_batch,
    dmd_kernels,
    mini_batch,
    run_tool,
)

PARTS = (
    "encoder layers",
    "encoder embedding + final LN",
    "stem convs",
    "decoupling convs + decoders",
    "heads",
    "graph distillation",
    "losses + glue",
    "gradient accumulation",
    "clip",
)
# module-less code that runs a part: nn/grouped.py's fused layers, model/heads.py's grouped heads
FUNCTION_PARTS = {"_run_fused": "encoder layers", "grouped_heads": "heads"}
ACCUMULATION, CLIP, LOSSES = "gradient accumulation", "clip", "losses + glue"
_LAYER = re.compile(r"\.layers\.\d+")


def part_of(name: str) -> str:
    """Part of a module by its qualified name in ``DMDSystem`` (``""``: the system itself)."""
    leaf = name.removeprefix("dmd.")
    if leaf.startswith(("trans_", "self_attentions_")):
        return "encoder layers" if _LAYER.search(leaf) else "encoder embedding + final LN"
    if leaf.startswith(("proj_l", "proj_a", "proj_v")) and not leaf.startswith("proj_cosine"):
        return "stem convs"
    if leaf.startswith(("encoder_s_", "encoder_c", "decoder_")):
        return "decoupling convs + decoders"
    if leaf.startswith("gd_"):
        return "graph distillation"
    if leaf.startswith(("proj", "out_layer", "weight_", "align_c_", "text_model")):
        return "heads"
    return LOSSES


class _Attribution:
    """Maps the running code to a part: module names, the stack, autograd-node tags."""

    def __init__(self, system):
        self.names = {id(m): n for n, m in system.named_modules()}
        self.fixed: str | None = None  # the part of what runs outside modules and autograd nodes

    def current(self) -> str:
        node = torch._C._current_autograd_node()
        if node is not None:
            if type(node).__name__ == "AccumulateGrad":
                return ACCUMULATION
            return node.metadata.get("part", LOSSES)
        frame = sys._getframe(1)
        if self.fixed is not None:
            while frame is not None and frame.f_code.co_name != "clip_grad_value_":
                frame = frame.f_back
            return self.fixed if frame is None else CLIP
        while frame is not None:
            me = frame.f_locals.get("self")
            if me is not None and id(me) in self.names:
                return part_of(self.names[id(me)])
            if frame.f_code.co_name in FUNCTION_PARTS:
                return FUNCTION_PARTS[frame.f_code.co_name]
            frame = frame.f_back
        return LOSSES

    def tag(self, outputs, part: str | None = None) -> None:
        if dataclasses.is_dataclass(outputs):  # e.g. GraphDistillResult
            outputs = [getattr(outputs, f.name) for f in dataclasses.fields(outputs)]
        for t in tree_leaves(outputs):
            fn = getattr(t, "grad_fn", None) if isinstance(t, torch.Tensor) else None
            if fn is not None and "part" not in fn.metadata:
                fn.metadata["part"] = part or self.current()


class _PartCounter(LaunchCounter):
    """A LaunchCounter that also records each counted kernel's part and phase."""

    def __init__(self, where: _Attribution):
        super().__init__()
        self.where = where
        self.parts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.total
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.total > before:
            self._record()
        return out

    def _record(self):
        phase = "backward" if torch._C._current_autograd_node() is not None else "forward"
        part = self.where.current()
        if part in (ACCUMULATION, CLIP):
            phase = "step"
        self.parts[(part, phase)] += 1


class _Tagger(TorchFunctionMode):
    def __init__(self, where: _Attribution):
        super().__init__()
        self.where = where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.is_grad_enabled():
            self.where.tag(out)
        return out


def _inherit_tags(root) -> None:
    """Untagged nodes (reached only from other nodes) take the part of the first consumer found."""
    seen, stack = set(), [(root, LOSSES)]
    while stack:
        node, part = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        part = node.metadata.setdefault("part", part)
        stack.extend((nxt, part) for nxt, _ in node.next_functions)


def step_breakdown(preset="mosi-unaligned", batch=16, backend="triton", device="cpu") -> _PartCounter:
    """The counter of one mini-batch as ``launches.step_launch_counts`` runs it (``launches.mini_batch``,
    after a warm-up one); ``.parts``: {(part, phase): kernels}."""
    from dmd_fast.model.config import get_preset
    from dmd_fast.model.system import DMDSystem

    cfg = get_preset(preset)
    batch_t = _random_batch(cfg, batch, device)
    torch.manual_seed(0)
    system = DMDSystem(cfg, backend=backend).to(device).train()
    params = list(system.parameters())
    where = _Attribution(system)
    kernels = dmd_kernels() if backend != "reference" else []

    def after_forward(losses):
        _inherit_tags(losses["total"].grad_fn)
        tagger.__exit__(None, None, None)
        where.fixed = ACCUMULATION  # what then runs outside autograd nodes: the gradient sum, the clip

    for _counted in (False, True):
        system.zero_grad(set_to_none=False)
        counter, tagger = _PartCounter(where), _Tagger(where)
        with _patched(kernels, counter), _module_tags(where), counter:
            tagger.__enter__()
            mini_batch(system, batch_t, params, losses_hook=after_forward)
        where.fixed = None
    return counter


@contextlib.contextmanager
def _patched(kernels, counter):
    saved = [(m, n, getattr(m, n)) for m, n in kernels]
    try:
        for m, n, k in saved:
            setattr(m, n, _CountingTritonKernel(k, counter, n))
        yield
    finally:
        for m, n, k in saved:
            setattr(m, n, k)


class _CountingTritonKernel(_CountingKernel):
    """Counted, not run; attributed like an ATen op."""

    def __init__(self, kernel, counter, name):
        super().__init__(kernel, counter, name, execute=False)

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.counter.triton.append(self.name)
            self.counter._record()

        return run


@contextlib.contextmanager
def _module_tags(where: _Attribution):
    def hook(module, _inputs, output):
        name = where.names.get(id(module))
        if name is not None and torch.is_grad_enabled():
            where.tag(output, part_of(name))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def breakdown(preset="mosi-unaligned", batch=16, backends=("reference", "triton")) -> dict:
    rows = {}
    for backend in backends:
        c = step_breakdown(preset, batch, backend)
        rows[backend] = {
            "total": c.total,
            "parts": {f"{part} | {phase}": n for (part, phase), n in sorted(c.parts.items())},
        }
        assert sum(c.parts.values()) == c.total, "every counted kernel has a part"
    return {"preset": preset, "batch": batch, "torch": torch.__version__, "commit": _git_commit(), "backends": rows}


def format_breakdown(res: dict) -> str:
    backends = list(res["backends"])
    lines = [
        f"Kernels per DMD mini-batch by model part (preset {res['preset']}, B={res['batch']}; counted at "
        "dispatch, Triton launches counted, not run):",
        "",
        "| part | phase | " + " | ".join(backends) + " |",
        "|---|---|" + "---:|" * len(backends),
    ]
    keys = sorted(
        {k for b in backends for k in res["backends"][b]["parts"]},
        key=lambda k: (PARTS.index(k.split(" | ")[0]), k),
    )
    for k in keys:
        part, phase = k.split(" | ")
        counts = [str(res["backends"][b]["parts"].get(k, 0)) for b in backends]
        lines.append(f"| {part} | {phase} | " + " | ".join(counts) + " |")
    lines.append("| **total** | | " + " | ".join(str(res["backends"][b]["total"]) for b in backends) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mosi-unaligned")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default=None, help="folder for breakdown.json / breakdown.md")
    args = p.parse_args(argv)
    if args.batch < 1:
        print(f"breakdown: error: --batch: expected >= 1, got {args.batch}", file=sys.stderr)
        return 2
    return run_tool("breakdown", lambda: breakdown(args.preset, args.batch), format_breakdown, args.out)


if __name__ == "__main__":
    sys.exit(main())
