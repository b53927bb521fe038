"""pytest-benchmark: the graph-distillation (GD-unit) op, ours against the eager reference.

DMD's two units: homo (reprs d, g=64, L1) and hetero (reprs 2d, g=32, clamped cosine); B=16, d=50
on GPU, tiny on the CPU tier (kernel in the Triton interpreter, or ``backend='reference'`` when
TRITON_INTERPRET is off).
"""

import inspect

import pytest
import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.ops.backend import interpreter_enabled

CUDA = torch.cuda.is_available()
if CUDA:
    CASES = [bl.GDCase("homo", 16, 50, 64, "l1"), bl.GDCase("hetero", 16, 100, 32, "cosine")]
else:
    CASES = [bl.GDCase("homo", 4, 12, 16, "l1"), bl.GDCase("hetero", 4, 24, 8, "cosine")]


def _ours(case):
    try:
        from dmd_fast.ops.graph_distill import graph_distill
    except ImportError as exc:
        pytest.skip(f"dmd_fast.ops.graph_distill not importable ({exc})")
    backend = "triton" if (CUDA or interpreter_enabled()) else "reference"
    kw = dict(
        alpha=0.125,
        softmax_scope="joint",
        logit_metric="l1",
        repr_metric=case.repr_metric,
        w_losses=(1.0, 10.0),
        reg=10.0,
        backend=backend,
    )
    params = inspect.signature(graph_distill).parameters
    kw.update({n: False for n in ("check_finite", "check_prior") if n in params})
    return (lambda *inp: graph_distill(*inp, **kw)), backend


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("provider", ["ours", "eager"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.kind)
def test_graph_distill(bench, benchmark, bench_device, case, provider, mode):
    inputs = bl.make_gd_inputs(case, bench_device, n_sets=1)[0]
    if provider == "ours":
        fn, backend = _ours(case)
    else:
        fn, backend = bl.GD_PROVIDERS["eager"].build(case, bench_device, inputs).fn, "reference"
    benchmark.group = f"gd {case.name} {mode}"
    benchmark.extra_info.update(case.as_dict(), provider=provider, backend=backend, mode=mode)
    if mode == "fwd":
        res = bench(fn, *inputs)
        outs = bl.gd_losses(res)
    else:

        def fwdbwd(*inp):
            return torch.autograd.grad(bl.gd_losses(fn(*inp)), inp[:8], allow_unused=True)

        outs = [t for t in bench(fwdbwd, *inputs) if t is not None]
    assert all(torch.isfinite(t).all() for t in outs)
