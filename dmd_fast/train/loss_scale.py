"""Dynamic fp16 loss scaling that keeps upstream's clip-after-every-backward exactly.

Upstream DMD sums gradients over ``update_epochs`` mini-batches and calls
``clip_grad_value_(params, c)`` after *every* backward, on the running sum. ``torch.amp.GradScaler``
can unscale only once per optimizer step, so it cannot express that. Here the running sum stays
scaled by S (a power of two, fixed within an accumulation window) and after each backward:

1. one fused kernel checks every gradient for inf/NaN (accumulated into ``found_inf`` on the
   device, before a clamp could hide an inf) and multiplies by 1/S;
2. the clamp to ±c runs on the true gradient, as upstream;
3. the sum is multiplied back by S.

Multiplying by a power of two is exact, so the clipped sum equals upstream's bit for bit. At the
window's end the fused Adam divides by S inside its kernel and skips the update when ``found_inf``
is set (no host sync); the scale then halves on overflow or doubles after ``growth_interval``
clean steps, as GradScaler does. Nothing here reads a value back to the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _pow2(x: float) -> bool:
    return math.frexp(float(x))[0] == 0.5


class ClipAwareLossScaler:
    """Loss scaler for fp16 autocast with per-backward value clipping.

    Use: ``scaler.begin_window()`` where the gradients are zeroed, ``scaler.scale(loss).backward();
    scaler.clip_(params, c)`` per mini-batch and ``scaler.step(optimizer)`` at the end of each
    accumulation window. ``optimizer`` must be a fused ``torch.optim.Adam``/``AdamW`` (it unscales
    and skips inside its kernel). The loss should be fp32 (2¹⁶ does not fit fp16). Scales and
    factors must be powers of two: that is what makes scaling exact.
    """

    def __init__(
        self,
        device,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ):
        for name, val, ok in (
            ("init_scale", init_scale, init_scale > 0 and _pow2(init_scale)),
            ("growth_factor", growth_factor, growth_factor > 1 and _pow2(growth_factor)),
            ("backoff_factor", backoff_factor, 0 < backoff_factor < 1 and _pow2(backoff_factor)),
            ("growth_interval", growth_interval, growth_interval >= 1),
        ):
            if not ok:
                raise ValueError(
                    f"ClipAwareLossScaler: {name} out of range (scale and factors must be powers "
                    f"of two, growth > 1, backoff in (0, 1), interval >= 1), got {val!r}"
                )
        self.device = torch.device(device)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._scale = torch.full((), float(init_scale), dtype=torch.float32, device=self.device)
        self._inv_scale = self._scale.reciprocal()
        self._growth_tracker = torch.zeros((), dtype=torch.int32, device=self.device)
        self._found_inf = torch.zeros((), dtype=torch.float32, device=self.device)

    # --- per mini-batch ------------------------------------------------------------------------
    def begin_window(self) -> None:
        """A new accumulation window (gradients were just zeroed): forget non-finite values seen in a
        window that was dropped without a step (upstream discards a trailing partial window)."""
        self._found_inf.zero_()

    def scale(self, loss: Tensor) -> Tensor:
        """loss · S in fp32 (call ``.backward()`` on the result)."""
        return loss * self._scale

    def clip_(self, params, clip_value: float | None) -> None:
        """After a backward: record non-finite gradients, then clamp the true running sum to ±clip_value.

        ``clip_value`` None or -1 (upstream's "off") only records non-finite values.
        """
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        # one kernel: found_inf |= any(!isfinite(g)); g *= 1/S
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found_inf, self._inv_scale)
        if clip_value is not None and clip_value != -1.0:
            torch._foreach_clamp_min_(grads, -clip_value)
            torch._foreach_clamp_max_(grads, clip_value)
        torch._foreach_mul_(grads, self._scale)

    # --- per optimizer step ------------------------------------------------------------------------
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale inside the fused optimizer, skip it on overflow, then update S. No host sync."""
        if not all(g.get("fused") for g in optimizer.param_groups):
            raise ValueError(
                "ClipAwareLossScaler.step: the optimizer must be fused (e.g. "
                "torch.optim.Adam(..., fused=True)) so it can unscale and skip on the device, got "
                f"{type(optimizer).__name__} with fused={optimizer.param_groups[0].get('fused')}"
            )
        optimizer.grad_scale = self._scale
        optimizer.found_inf = self._found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale
            del optimizer.found_inf
        torch._amp_update_scale_(
            self._scale,
            self._growth_tracker,
            self._found_inf,
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        )
        torch.reciprocal(self._scale, out=self._inv_scale)
        self._found_inf.zero_()

    # --- state ----------------------------------------------------------------------------------
    def get_scale(self) -> float:
        """The current S (host read: for logs, not for the step)."""
        return float(self._scale.item())

    def state_dict(self) -> dict:
        return {
            "scale": self._scale.detach().cpu().clone(),
            "growth_tracker": self._growth_tracker.detach().cpu().clone(),
            "found_inf": self._found_inf.detach().cpu().clone(),
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
        }

    def load_state_dict(self, state: dict) -> None:
        missing = {"scale", "growth_tracker", "found_inf"} - set(state)
        if missing:
            raise KeyError(f"ClipAwareLossScaler.load_state_dict: missing {sorted(missing)}")
        self._scale.copy_(state["scale"])
        torch.reciprocal(self._scale, out=self._inv_scale)
        self._growth_tracker.copy_(state["growth_tracker"])
        self._found_inf.copy_(state["found_inf"])
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))
