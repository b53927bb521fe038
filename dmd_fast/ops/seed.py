"""The dropout seed of the Triton ops: an int64 [seed, offset] pair on the device.

Drawn from ``generator`` (or torch's default generator for the device), so ``torch.manual_seed`` repeats
runs and CUDA-graph capture works (no host round trip); kernels hash it with their element indices.
A caller running several ops draws their pairs at once (:func:`draw_seeds`, one kernel) and hands each
op a row through its ``seed`` argument (:func:`check_seed` checks it).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _draw(shape: tuple[int, ...], generator, device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**62, shape, dtype=torch.int64, device=gen_device, generator=generator)
    return seed.to(device, non_blocking=True)


def draw_seed(generator, device) -> Tensor:
    """int64 [seed, offset] on ``device`` from ``generator`` (default: torch's generator for device)."""
    return _draw((2,), generator, device)


def draw_seeds(generator, device, n: int) -> Tensor:
    """int64 (n, 2) on ``device``, one [seed, offset] row per op, in one draw (as :func:`draw_seed`)."""
    return _draw((n, 2), generator, device)


def check_seed(seed, generator, device, op: str) -> None:
    """None, or an int64 [seed, offset] tensor of shape (2,), contiguous, on ``device``; never with a generator."""
    if seed is None:
        return
    if generator is not None:
        raise ValueError(f"{op}: seed: given together with generator; pass one of them (seed replaces the draw)")
    want = f"an int64 tensor [seed, offset] of shape (2,), contiguous, on {device}"
    if not isinstance(seed, Tensor) or seed.dtype != torch.int64:
        got = seed.dtype if isinstance(seed, Tensor) else type(seed).__name__
        raise TypeError(f"{op}: seed: expected {want}, got {got}")
    if tuple(seed.shape) != (2,) or seed.stride() != (1,) or seed.device != torch.device(device):
        got = f"shape {tuple(seed.shape)}, stride {seed.stride()}, on {seed.device}"
        raise ValueError(f"{op}: seed: expected {want}, got {got}")


def op_seed(seed, generator, device, needed: bool) -> Tensor | None:
    """The Triton path's seed (after :func:`check_seed`): ``seed`` when given, else a pair drawn from
    ``generator``; None when no dropout is ``needed``."""
    if not needed:
        return None
    return seed if seed is not None else draw_seed(generator, device)


def refuse_seed_on_reference(seed, op: str) -> None:
    """The reference backend draws its masks with torch.rand from a generator: a ``seed`` cannot drive it."""
    if seed is not None:
        raise ValueError(
            f"{op}: seed: given with the reference backend, which draws its dropout masks with torch.rand; "
            "pass generator instead (seed keys the Triton kernels' Philox bits)"
        )
