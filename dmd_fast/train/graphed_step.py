"""One training mini-batch (forward, losses, backward, clip) captured in a CUDA graph and replayed.

The graph holds static input buffers for one batch shape. Each call copies the batch into them
and replays, so the whole mini-batch costs one graph launch instead of hundreds of kernel launches
from Python. What stays outside the graph, eager: ``zero_grad(set_to_none=False)`` and the fused
optimizer step at the end of an accumulation window (one or two launches), the LR scheduler, and
every batch of another shape (the short last batch of an epoch), which runs ``step_fn`` directly
on the same parameters and gradient buffers.

Gradients accumulate into the parameters' existing ``.grad`` tensors, as upstream's summed windows
need: the first ``warmup`` calls run eagerly on a side stream (real training steps, as PyTorch
requires before capturing autograd), which allocates every gradient outside the graph; capture
then records in-place accumulation into them, checked after capture.

Capture does not run the step: the call that captures replays the graph once afterwards, so no
mini-batch is skipped or doubled. Outputs are the graph's static tensors, overwritten by the next
replay: clone what you keep.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class CaptureError(RuntimeError):
    """The step could not be captured in a CUDA graph; the message says why."""


class CUDAGraphCapture:
    """Capture/replay on CUDA (the default engine of :class:`GraphedTrainStep`)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.graph = None

    def warmup(self, fn: Callable, *args):
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = fn(*args)
            torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def capture(self, fn: Callable, *args):
        with torch.cuda.device(self.device):
            torch.cuda.synchronize(self.device)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a pin-memory thread of the DataLoader must not invalidate the capture
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                out = fn(*args)
        return out

    def replay(self):
        with torch.cuda.device(self.device):
            self.graph.replay()


class GraphedTrainStep:
    """``step_fn(*batch) -> dict of tensors``, replayed from a CUDA graph for one static batch shape.

    params: the parameters whose ``.grad`` the step accumulates into (checked to stay the same
    tensors across capture). warmup: eager side-stream calls before capture (≥ 1: Triton
    compiles its kernels and the grouped launches build their descriptor tables there).
    """

    def __init__(self, step_fn: Callable[..., dict], params, device, *, warmup: int = 3, engine=None):
        if warmup < 1:
            raise ValueError(
                f"GraphedTrainStep: warmup must be >= 1 (autograd must run once before capture), got {warmup}"
            )
        device = torch.device(device)
        if engine is None:
            if device.type != "cuda":
                raise ValueError(f"cuda_graph: whole-step capture needs a CUDA device, got {device}")
            engine = CUDAGraphCapture(device)
        self.step_fn = step_fn
        self.params = [p for p in params if p.requires_grad]
        self.warmup = warmup
        self.engine = engine
        self.calls = {"eager": 0, "warmup": 0, "replay": 0}
        self._shapes = None
        self._static_in: list[Tensor] | None = None
        self._static_out: dict | None = None

    @property
    def captured(self) -> bool:
        return self._static_out is not None

    def __call__(self, *batch: Tensor) -> dict:
        shapes = tuple((t.shape, t.dtype, t.device) for t in batch)
        if self._shapes is None:
            self._shapes = shapes
        if shapes != self._shapes:  # another shape: run eagerly, same buffers
            self.calls["eager"] += 1
            return self.step_fn(*batch)
        if self.calls["warmup"] < self.warmup:
            self.calls["warmup"] += 1
            return self.engine.warmup(self.step_fn, *batch)
        if not self.captured:
            self._capture(batch)
        for dst, src in zip(self._static_in, batch):
            dst.copy_(src, non_blocking=True)
        self.engine.replay()
        self.calls["replay"] += 1
        return self._static_out

    def _capture(self, batch):
        grads = [p.grad for p in self.params]
        self._static_in = [t.detach().clone() for t in batch]
        try:
            out = self.engine.capture(self.step_fn, *self._static_in)
        except Exception as exc:
            raise CaptureError(
                f"cuda_graph: capturing the training step failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); the step must not sync with "
                "the host or create CPU tensors; run without --cuda-graph"
            ) from exc
        moved = [i for i, (p, g) in enumerate(zip(self.params, grads)) if p.grad is not g]
        if moved:
            raise CaptureError(
                f"cuda_graph: {len(moved)} parameter gradients were re-allocated during capture "
                "instead of accumulated in place (gradients must exist before capture)"
            )
        if not isinstance(out, dict):
            raise CaptureError(f"cuda_graph: step_fn must return a dict of tensors, got {type(out).__name__}")
        self._static_out = out
