"""The dropout seed of the Triton ops: an int64 [seed, offset] pair drawn on the device.

Drawn from ``generator`` (or torch's default generator for the device), so ``torch.manual_seed`` repeats
runs and CUDA-graph capture works (no host round trip); kernels hash it with their element indices.
"""

from __future__ import annotations

import torch
from torch import Tensor


def draw_seed(generator, device) -> Tensor:
    """int64 [seed, offset] on ``device`` from ``generator`` (default: torch's generator for device)."""
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**62, (2,), dtype=torch.int64, device=gen_device, generator=generator)
    return seed.to(device, non_blocking=True)
