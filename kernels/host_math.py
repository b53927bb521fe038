"""Integer helpers for launchers, in plain Python.

``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions in Triton 3.6: called from
host code each costs microseconds of argument unwrapping, per launch. These are the same formulas.
"""
from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for a >= 0, b > 0."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
