"""Benchmark configuration: without CUDA, run the Triton kernels on the CPU through the interpreter.

TRITON_INTERPRET must be set before any kernel module is imported (as in tests/conftest.py).
"""

import os

import pytest

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    HAS_CUDA = False
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """CPU tier: one intra-op thread while a benchmark runs (spinning OpenMP threads on a shared
    2-core machine turn milliseconds into seconds); restored afterwards."""
    if HAS_CUDA:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bench_device():
    """'cuda' when a GPU is present, else 'cpu' (kernels then run in the Triton interpreter)."""
    return "cuda" if HAS_CUDA else "cpu"


def _timed(fn, device):
    """Wrap ``fn`` so that each call waits for the device (what the benchmark fixture times)."""
    if device == "cuda":

        def call(*a):
            out = fn(*a)
            torch.cuda.synchronize()
            return out

        return call
    return fn


def _rounds(device) -> dict:
    """pedantic() settings: enough rounds for a median on GPU, few on the CPU tier."""
    if device == "cuda":
        return dict(rounds=30, iterations=1, warmup_rounds=3)
    return dict(rounds=2, iterations=1, warmup_rounds=1)


@pytest.fixture
def bench(benchmark, bench_device):
    """``bench(fn, *args)``: time ``fn(*args)`` with pytest-benchmark (device-synchronised on CUDA)."""

    def run(fn, *args):
        return benchmark.pedantic(_timed(fn, bench_device), args=args, **_rounds(bench_device))

    return run
