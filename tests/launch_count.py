"""Count what a call would launch on a GPU, on any device: Triton kernel launches plus the ATen ops
that run a device kernel (views, allocations and metadata ops excluded), and host syncs.

A CPU-tier proxy for the GPU profiler's kernel count (``dmd_fast.bench.baselines.count_kernel_launches``):
the Triton interpreter's own tensor traffic is not counted (dispatch is paused inside a launch).
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
NO_KERNEL = {aten.empty.memory_format, aten.empty_strided.default, aten.new_empty.default, aten.empty_like.default,
             aten.new_empty_strided.default, aten.detach.default, aten.alias.default, aten.lift_fresh.default}
HOST_SYNC = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default}


def _has_tensor(out) -> bool:
    return any(isinstance(x, torch.Tensor) for x in torch.utils._pytree.tree_leaves(out))


class LaunchCounter(TorchDispatchMode):
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
            elif not func.is_view and func not in NO_KERNEL and _has_tensor(out):  # dtype/shape-only ops: no kernel
                self.aten_ops.append(str(func))
        return out

    @property
    def total(self) -> int:
        return len(self.aten_ops) + len(self.triton)


class _CountingKernel:
    def __init__(self, kernel, counter: LaunchCounter, name: str):
        self.kernel, self.counter, self.name = kernel, counter, name

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.counter.triton.append(self.name)
            self.counter._paused = True
            try:
                return launch(*args, **kwargs)
            finally:
                self.counter._paused = False
        return run


@contextlib.contextmanager
def count_launches(monkeypatch, *kernels):
    """with count_launches(mp, (module, 'kernel_a'), ...) as c: ... → c.triton, c.aten_ops, c.syncs."""
    counter = LaunchCounter()
    for module, name in kernels:
        monkeypatch.setattr(module, name, _CountingKernel(getattr(module, name), counter, name))
    with counter:
        yield counter
