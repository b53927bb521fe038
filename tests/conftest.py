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


def pytest_collection_modifyitems(config, items):
    """The GPU tier is the ``gpu`` marker (registered in pyproject.toml): skipped without CUDA."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="GPU tier (marker gpu): needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
