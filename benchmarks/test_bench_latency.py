"""pytest-benchmark: DMD inference latency (DMD.predict) per provider and batch size.

GPU: mosi-unaligned at every batch size of the latency suite, every provider. CPU tier: the tiny
preset at B=1 for the providers that run without a long compile: ref_eager, ours_eager (Triton
interpreter) and the exported program; torch.compile and CUDA-graph providers are GPU-tier only.
"""

import pytest
import torch

from dmd_fast.bench.suites import latency as lt

CUDA = torch.cuda.is_available()
BATCHES = lt.BATCH_SIZES if CUDA else (1,)
CPU_PROVIDERS = ("ref_eager", "ours_eager", "exported")


@pytest.fixture(scope="module")
def models():
    device = torch.device("cuda" if CUDA else "cpu")
    cfg = lt.latency_config(quick=not CUDA)
    return cfg, lt.Models(cfg, device), device


@pytest.mark.parametrize("B", BATCHES)
# the other providers are GPU tier (CUDA graphs, or a torch.compile per batch size)
@pytest.mark.parametrize(
    "provider", [p if p in CPU_PROVIDERS else pytest.param(p, marks=pytest.mark.gpu) for p in lt.PROVIDERS]
)
def test_latency(bench, benchmark, models, provider, B):
    cfg, m, device = models
    sets = lt._inputs(cfg, B, device)
    built = lt.build(provider, m, cfg, B, device, sets)
    benchmark.group = f"inference B={B}"
    benchmark.extra_info.update(provider=provider, preset=cfg.name, batch=B)
    out = bench(built.fn, *sets[0])
    torch.testing.assert_close(out.float(), m.ref.predict(*sets[0]).float(), rtol=1e-4, atol=1e-5)
