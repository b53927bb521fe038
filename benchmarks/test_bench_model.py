"""pytest-benchmark: one DMD training step and one hetero-branch forward+backward.

GPU: MOSI unaligned preset, B=16, every dropout of the preset; backend 'reference' against
'triton'. CPU tier: the tiny preset with backend='reference' only (a model step with every kernel
in the Triton interpreter takes tens of seconds; the op-level benchmarks cover the kernels there).
"""

import pytest
import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.bench.suites import model as sm

CUDA = torch.cuda.is_available()


# model-level Triton is GPU tier: the interpreter takes tens of seconds per step
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("what", ["hetero", "step"])
def test_model(bench, benchmark, bench_device, what, backend):
    build = sm._build_model_step if what == "step" else sm._build_hetero_step
    try:
        fn, sets, samples, note = build(
            "ours" if backend == "triton" else "eager", torch.device(bench_device), quick=not CUDA
        )
    except bl.Unsupported as exc:
        pytest.skip(str(exc))
    benchmark.group = f"model {what}"
    benchmark.extra_info.update(backend=backend, samples_per_call=samples, note=note)
    out = bench(fn, *sets[0])
    outs = out if isinstance(out, (tuple, list)) else [out]
    assert all(torch.isfinite(t).all() for t in outs if t is not None)
