"""Input checks shared by every public entry point: one function per concept.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value)
with a message that names the argument, says what it got and what it expects, and returns the
value normalised (a float, an int, a tuple). Checks of Python values cost a few microseconds and
never read a device tensor: no check here synchronises the host with a GPU, except
:func:`finite_tensor`, whose callers run it only where a host sync is documented.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import pathlib
from collections.abc import Mapping, Sequence

import torch

FP32_MAX = 3.4028234663852886e38
FP32_TINY = 1.1754943508222875e-38  # smallest normal float32
LOG2E = 1.4426950408889634
SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _got(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def real(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in [low, high] (open ends with ``low_open``/``high_open``) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a finite real number, got {_got(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name}: expected a number {'>' if low_open else '>='} {low:g}, got {v:g}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name}: expected a number {'<' if high_open else '<='} {high:g}, got {v:g}")
    return v


def positive(value, name: str) -> float:
    """A finite number > 0."""
    return real(value, name, low=0.0, low_open=True)


def probability(value, name: str) -> float:
    """A dropout probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1), got {_got(value)}")
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {v}")
    return v


def integer(value, name: str, *, low: int | None = None) -> int:
    """An integer (not a bool, not a float) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {_got(value)}")
    v = int(value)
    if low is not None and v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v}")
    return v


def dim(value, name: str) -> int:
    """A positive integer size (embed_dim, num_heads, hidden_size, ...)."""
    return integer(value, name, low=1)


def boolean(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {_got(value)}")
    return value


def choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def reals(value, name: str, n: int, what: str = "numbers", **range_kw) -> tuple[float, ...]:
    """A sequence of exactly ``n`` finite numbers (each checked as :func:`real`); ``what`` names them."""
    if not isinstance(value, (tuple, list)) and (
        isinstance(value, (str, bytes)) or torch.is_tensor(value) or not isinstance(value, Sequence)
    ):
        raise TypeError(f"{name}: expected a sequence of {n} finite {what}, got {_got(value)}")
    if len(value) != n:
        raise ValueError(f"{name}: expected {n} {what}, got {len(value)}: {list(value)!r}")
    if not range_kw and all(type(v) is float and math.isfinite(v) for v in value):
        return tuple(value)  # the per-step case (GD units pass validated floats): no per-item calls
    return tuple(real(v, f"{name}[{i}]", **range_kw) for i, v in enumerate(value))


def divisible(embed_dim: int, num_heads: int, name: str = "embed_dim") -> None:
    if embed_dim % num_heads:
        raise ValueError(f"{name}: must be divisible by num_heads={num_heads}, got {embed_dim}")


# ----------------------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------------------


def tensor(t, name: str, *, ndim: int | None = None, layout: str = "", floating: bool = False):
    """A torch.Tensor of rank ``ndim`` (``layout`` names the axes in messages), floating if asked."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor{f' {layout}' if layout else ''}, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {layout}, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    return t


def non_empty(t, name: str, axes: Sequence[int], layout: str) -> None:
    """Every axis in ``axes`` of ``t`` has at least one element."""
    for a in axes:
        if t.shape[a] < 1:
            raise ValueError(f"{name}: expected a non-empty axis {a} in {layout}, got shape {tuple(t.shape)}")


def same_device(t, name: str, device, what: str) -> None:
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected {what}'s device {device}")


def module_dtype(t, name: str, param: torch.Tensor, what: str = "the module") -> None:
    """A floating input in the dtype of ``param`` (the module's weights), unless autocast runs."""
    if t.dtype != param.dtype and t.is_floating_point() and not torch.is_autocast_enabled(t.device.type):
        raise TypeError(
            f"{name}: dtype {t.dtype} differs from {what}'s parameters ({param.dtype}); convert the "
            f"input (x.to({param.dtype})) or the module (.to(dtype)), or run under torch.autocast"
        )


def dense_mask(mask, name: str, len_q: int, len_k: int, device) -> None:
    """An additive float attention mask of shape (Lq, Lk) (0 = visible, -inf = masked)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected an additive float tensor ({len_q}, {len_k}), got {type(mask).__name__}")
    if not mask.is_floating_point():
        raise TypeError(f"{name}: expected an additive float mask (0 visible, -inf masked), got {mask.dtype}")
    if tuple(mask.shape) != (len_q, len_k):
        raise ValueError(f"{name}: expected shape (Lq, Lk) = ({len_q}, {len_k}), got {tuple(mask.shape)}")
    same_device(mask, name, device, "query")


def finite_tensor(t, name: str, hint: str = "") -> None:
    """No NaN/inf in ``t`` (reads the tensor: a host sync on CUDA; callers document it)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf{hint}")


def generator(gen, name: str, device) -> None:
    """None, or a torch.Generator on ``device``'s type (CPU generators draw for CPU tensors only)."""
    if gen is None:
        return
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {_got(gen)}")
    dev_type = getattr(device, "type", str(device))
    if gen.device.type != dev_type:
        raise ValueError(f"{name}: a generator on {gen.device}, expected one on the inputs' device type {dev_type!r}")


def interpreter_dtype(dtype: torch.dtype, name: str, op: str) -> None:
    """The Triton CPU interpreter computes 16-bit dots wrongly (or fails inside): refuse them."""
    if dtype in SIXTEEN_BIT:
        raise TypeError(
            f"{name}: dtype {dtype} cannot run on the Triton CPU interpreter (TRITON_INTERPRET=1): "
            f"its 16-bit dot products give wrong results or internal errors; {op} runs fp32/fp64 "
            "there (convert with .float()) or use backend='reference'"
        )


def attention_scale(scale, head_dim: int, dtype: torch.dtype) -> float:
    """The score scale: None -> head_dim**-0.5; else a finite number >= 0 that fits the dtype's math
    (float32 for 16-bit and fp32 inputs, which fold scale·log2(e) into a float32 value)."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a finite float >= 0 or None, got {_got(scale)}")
    s = float(scale)
    if not (math.isfinite(s) and s >= 0.0):
        raise ValueError(f"scale: expected a finite float >= 0 or None, got {s}")
    limit = FP32_MAX / LOG2E
    if dtype != torch.float64 and s > limit:
        raise ValueError(
            f"scale: {s:g} is beyond float32's range for {dtype} inputs (at most {limit:.4g}; "
            "float64 inputs take any finite scale)"
        )
    return s


def scale_in_inputs(scale: float, dtype: torch.dtype) -> bool:
    """Whether the Triton path must multiply q by ``scale`` itself (in q's dtype, as the reference does)
    and give the kernels scale 1: float64 inputs (the kernels carry the scale as float32 parts) and
    scales below float32's normal range (0 included: the kernels' dK rescale would divide 0 by 0)."""
    return dtype == torch.float64 or scale < FP32_TINY


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


def require_keys(obj, keys: Sequence[str], where: str, exc=ValueError) -> None:
    """``obj`` is a mapping holding every key in ``keys``; the error names ``where`` and the missing keys."""
    if not isinstance(obj, Mapping):
        raise exc(f"{where}: expected a dict, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise exc(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")


def output_dir(path, name: str) -> pathlib.Path:
    """A folder that exists or can be created: neither it nor any existing parent is a file."""
    p = pathlib.Path(os.fspath(path))
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                what = "is an existing file" if part == p else f"is inside {str(part)!r}, an existing file"
                raise ValueError(f"{name}: {str(p)!r} {what}; expected a folder")
            break
    return p


def cli_type(parse, convert, what: str):
    """An argparse ``type`` from ``parse`` (int or float) and a check above: a bad value becomes an
    argparse error ("expected a positive integer, got '0'"), exit code 2."""

    def arg(text: str):
        try:
            return convert(parse(text), "value")
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    arg.__name__ = what
    return arg
