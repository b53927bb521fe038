"""pytest-benchmark: the cross-modal attention core, ours against eager MulT/DMD and SDPA.

CPU tier (CI): tiny shapes in fp32, our kernels in the Triton interpreter (``backend='reference'``
when TRITON_INTERPRET is off). GPU: DMD's shapes (B=16, H=10; 46x496 and 496x371 at head dim 5,
496x496 at head dim 10, aligned 46x46), fp32 and bf16. Offset-causal mask and dropout 0.3 always.
The full comparison (compiled, flash, flex, CUDA graphs, floors) is ``dmd-fast bench --suite attention``.
"""

import pytest
import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.ops.backend import interpreter_enabled

CUDA = torch.cuda.is_available()
if CUDA:
    CASES = [
        bl.AttnCase(16, 10, lq, lk, d, dt)
        for dt in ("fp32", "bf16")
        for lq, lk, d in ((46, 496, 5), (496, 371, 5), (496, 496, 10), (46, 46, 5))
    ]
else:
    CASES = [bl.AttnCase(2, 2, 6, 10, 5), bl.AttnCase(2, 2, 10, 7, 5)]
PROVIDERS = ("ours", "eager", "sdpa")


def _ours(case):
    try:
        from dmd_fast.ops.attention import cross_modal_attention
    except ImportError as exc:
        pytest.skip(f"dmd_fast.ops.attention not importable ({exc})")
    backend = "triton" if (CUDA or interpreter_enabled()) else "reference"
    kw = dict(offset_causal=case.offset_causal, dropout_p=case.dropout_p, backend=backend)
    return (lambda q, k, v: cross_modal_attention(q, k, v, **kw)), backend


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name.replace(" ", "-"))
def test_attention(bench, benchmark, bench_device, case, provider, mode):
    q, k, v, g = bl.make_attention_inputs(case, bench_device, n_sets=1)[0]
    if provider == "ours":
        fn, backend = _ours(case)
    else:
        built = bl.ATTENTION_PROVIDERS[provider].build(case, bench_device, (q, k, v, g))
        fn, backend = built.fn, provider
        if built.extra:
            benchmark.extra_info.update(built.extra)
    benchmark.group = f"attention {case.name} {mode}"
    benchmark.extra_info.update(case.as_dict(), provider=provider, backend=backend, mode=mode)
    if mode == "fwd":
        out = bench(fn, q, k, v)
        assert out.shape == q.shape
        outs = [out]
    else:
        outs = bench(lambda q, k, v, g: torch.autograd.grad(fn(q, k, v), (q, k, v), g), q, k, v, g)
    assert all(torch.isfinite(t).all() for t in outs)
