"""Shared test-tier facts: is CUDA here, and where is the upstream parity fixture."""
import os
import pathlib

import pytest

try:
    import torch
    HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    HAS_CUDA = False

FIXTURE_ENV = "DMD_FAST_FIXTURE"
FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "upstream_dmd_mosei_aligned.pt"
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="GPU tier: needs CUDA")


def fixture_path() -> pathlib.Path:
    """The upstream parity fixture (env DMD_FAST_FIXTURE overrides ../shared/fixtures)."""
    p = os.environ.get(FIXTURE_ENV)
    return pathlib.Path(p) if p else FIXTURE
