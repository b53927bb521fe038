"""Test configuration: without CUDA, run the Triton kernels on the CPU through the interpreter.

TRITON_INTERPRET must be set before any kernel module is imported.
"""
import os
import pathlib

import pytest

try:
    import torch
    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

FIXTURE = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "upstream_dmd_mosei_aligned.pt"
FIXTURE_ENV = "DMD_FAST_FIXTURE"


def fixture_path():
    """Path of the upstream parity fixture (env DMD_FAST_FIXTURE overrides ../shared/fixtures)."""
    p = os.environ.get(FIXTURE_ENV)
    return pathlib.Path(p) if p else FIXTURE


@pytest.fixture(scope="session")
def upstream_fixture():
    import torch
    p = fixture_path()
    if not p.exists():
        pytest.fail(f"parity fixture not found at {p}; set {FIXTURE_ENV}")
    return torch.load(p, weights_only=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (GPU tier)")
    config.addinivalue_line("markers", "slow: long CPU test")


requires_cuda = pytest.mark.skipif(not _HAS_CUDA, reason="GPU tier: needs CUDA")
