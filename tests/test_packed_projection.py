"""Packed q/k/v in-projection (dmd_fast.nn.packed_projection) against upstream's sliced F.linear."""

import pytest
import torch
import torch.nn.functional as F

from dmd_fast.bench.launches import count_launches
from dmd_fast.nn.packed_projection import packed_in_projection


def _inputs(E=10, Tq=7, Tk=9, B=3, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    return r(Tq, B, E), r(Tk, B, E), r(Tk, B, E), r(3 * E, E), (r(3 * E) if bias else None)


def _sliced(x_q, x_k, x_v, w, b):
    E = w.shape[1]
    return tuple(
        F.linear(x, w[i * E : (i + 1) * E], None if b is None else b[i * E : (i + 1) * E])
        for i, x in enumerate((x_q, x_k, x_v))
    )


def _clone(ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


@pytest.mark.parametrize("bias", [True, False])
def test_equals_sliced_linear(bias):
    a = _inputs(bias=bias)
    b = _clone(a)
    ours, ref = packed_in_projection(*a), _sliced(*b)
    gs = [torch.randn_like(o) for o in ref]
    for o, r in zip(ours, ref):
        assert torch.equal(o, r)  # the same F.linear calls
    torch.autograd.backward(ours, gs)
    torch.autograd.backward(ref, gs)
    for x, y in zip(a, b):
        if x is not None:
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-6)


def test_gradcheck_fp64():
    a = _inputs(E=4, Tq=3, Tk=2, B=2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: packed_in_projection(*t), a)


def test_autocast_bf16_matches_sliced_linear():
    a = _inputs()
    b = _clone(a)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = packed_in_projection(*a), _sliced(*b)
    for o, r in zip(ours, ref):
        assert o.dtype == r.dtype == torch.bfloat16 and torch.equal(o, r)
    gs = [torch.randn_like(o) for o in ref]
    torch.autograd.backward(ours, gs)
    torch.autograd.backward(ref, gs)
    for x, y in zip(a, b):
        assert x.grad.dtype == y.grad.dtype == torch.float32
        torch.testing.assert_close(x.grad, y.grad, rtol=2e-2, atol=2e-2)


def test_backward_launches_fewer_kernels():
    """3 × (dx, dW, db) kernels; upstream's slices add a zero fill + copy per slice and the sums."""
    counts = {}
    for name, fn in (("packed", packed_in_projection), ("sliced", _sliced)):
        a = _inputs()
        outs = fn(*a)
        gs = [torch.ones_like(o) for o in outs]
        with count_launches() as c:
            torch.autograd.grad(outs, [t for t in a], gs)
        counts[name] = c.total
    assert counts["packed"] == 9 and counts["sliced"] >= counts["packed"] + 10, counts


def test_bad_shapes():
    x_q, x_k, x_v, w, b = _inputs()
    with pytest.raises(ValueError, match=r"weight: expected \(3E, E\)"):
        packed_in_projection(x_q, x_k, x_v, w[:20], b)
    with pytest.raises(ValueError, match="bias: expected"):
        packed_in_projection(x_q, x_k, x_v, w, b[:5])
    with pytest.raises(ValueError, match="x_k: expected last dim E=10"):
        packed_in_projection(x_q, x_k[..., :4], x_v, w, b)
