"""Test configuration: without CUDA, run the Triton kernels on the CPU through the interpreter.

TRITON_INTERPRET must be set before any kernel module is imported.
"""
import os

import pytest

from tiers import FIXTURE_ENV, HAS_CUDA, fixture_path

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def upstream_fixture():
    import torch
    p = fixture_path()
    if not p.exists():
        pytest.fail(f"parity fixture not found at {p}; set {FIXTURE_ENV}")
    return torch.load(p, weights_only=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (GPU tier)")
    # the Triton 3.6 interpreter's own numpy deprecation notices, thousands per kernel run
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:triton.runtime.interpreter")
    config.addinivalue_line("markers", "slow: long CPU test")
