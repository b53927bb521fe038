"""Which implementation runs an op: the Triton kernels or the plain-PyTorch reference.

Rules (no silent fallback on CUDA):
- ``"triton"``: CUDA tensors run the kernels; CPU tensors run them under the Triton interpreter
  when ``TRITON_INTERPRET=1`` was set before import, else a clear ``RuntimeError``.
- ``"reference"``: always the reference.
- ``"auto"``: Triton on CUDA or under the interpreter; otherwise the reference, reported once
  through ``warnings`` and recorded in :func:`last_backend`.
"""

from __future__ import annotations

import functools
import os
import warnings

BACKENDS = ("auto", "triton", "reference")
_last: dict[str, str] = {}
_warned: set[str] = set()


def interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    """Whether ``import triton`` works (checked once: it is asked on every op call)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def check_backend_name(backend: str, arg: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{arg}: expected one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, device, op: str) -> str:
    """Return ``"triton"`` or ``"reference"`` for an op on ``device`` (see module doc)."""
    check_backend_name(backend)
    dev_type = getattr(device, "type", str(device))
    if backend == "reference":
        chosen = "reference"
    else:
        can_triton = triton_importable() and (dev_type == "cuda" or (dev_type == "cpu" and interpreter_enabled()))
        if can_triton:
            chosen = "triton"
        elif backend == "triton":
            if dev_type == "cpu":
                raise RuntimeError(
                    f"{op}: backend='triton' on a CPU tensor needs the Triton interpreter; set "
                    "TRITON_INTERPRET=1 before importing dmd_fast, or use backend='reference'"
                )
            raise RuntimeError(
                f"{op}: backend='triton' needs CUDA tensors and an importable triton; got device {device}"
            )
        else:
            chosen = "reference"
            if op not in _warned:
                _warned.add(op)
                warnings.warn(
                    f"{op}: no CUDA device and no Triton interpreter; running the "
                    "PyTorch reference (set TRITON_INTERPRET=1 to run the kernels on CPU)",
                    stacklevel=3,
                )
    _last[op] = chosen
    return chosen


def last_backend(op: str) -> str | None:
    """The implementation the last call of ``op`` ran ("triton" or "reference")."""
    return _last.get(op)
