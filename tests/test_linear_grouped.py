"""Grouped linear layers (DMD's heads, level by level): kernels vs F.linear, and the heads on the fused path."""

import pytest
import torch
import torch.nn.functional as F

from dmd_fast.bench.launches import count_launches
from dmd_fast.kernels import linear_grouped as kn
from dmd_fast.ops.linear_grouped import linear_grouped

DEV = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS = [(kn, "linear_fwd_kernel"), (kn, "linear_bwd_kernel")]
# DMD-like problems: (M, K, N): K from T'·d, N from 1 to T'·d, one strided x, batches below a block
SHAPES = ((16, 300, 50), (16, 50, 300), (16, 300, 1), (5, 7, 9), (3, 600, 20), (16, 70, 70))


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    empty = kn._empty
    monkeypatch.setattr(kn, "_empty", lambda shape, dtype, device: empty(shape, dtype, device).fill_(float("nan")))


def _problems(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def mk(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(DEV, dtype)

    xs = [mk(M, K) for M, K, _ in SHAPES]
    xs[1] = mk(SHAPES[1][1], SHAPES[1][0]).t()  # (M, K) view of (K, M) storage
    ws = [mk(N, K) / K**0.5 for _, K, N in SHAPES]
    bs = [mk(N) for *_, N in SHAPES]
    return [t.requires_grad_() for t in xs], [t.requires_grad_() for t in ws], [t.requires_grad_() for t in bs]


def test_outputs_and_gradients_equal_f_linear_fp64():
    xs, ws, bs = _problems()
    ys = linear_grouped(xs, ws, bs, backend="triton")
    rs = [F.linear(x, w, b) for x, w, b in zip(xs, ws, bs)]
    dys = [torch.randn_like(r) for r in rs]
    leaves = xs + ws + bs
    got = torch.autograd.grad(ys, leaves, dys)
    want = torch.autograd.grad(rs, leaves, dys)
    for a, b in zip(ys, rs):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_output_gradients_of_any_row_stride_are_read_in_place():
    """Outputs concatenated (the gates before their sigmoid): each dy is a column slice of one gradient,
    (M, N) with row stride ΣN, and a broadcast dy has row stride 0; read in place, no copy kernel."""
    xs, ws, bs = _problems(seed=2)
    ys = linear_grouped(xs, ws, bs, backend="triton")
    rs = [F.linear(x, w, b) for x, w, b in zip(xs, ws, bs)]
    leaves = xs + ws + bs
    M = 16
    live = [i for i, (m, _, _) in enumerate(SHAPES) if m == M]
    cat_w = torch.randn(M, sum(SHAPES[i][2] for i in live), dtype=torch.float64, device=DEV)
    row_w = torch.randn(SHAPES[4][2], dtype=torch.float64, device=DEV)  # problem 4's dy: row_w broadcast

    def loss(outs):
        return (torch.cat([outs[i] for i in live], dim=1) * cat_w).sum() + (outs[4] * row_w).sum()

    with count_launches(*KERNELS) as c:
        got = torch.autograd.grad(loss(ys), leaves, allow_unused=True)
    want = torch.autograd.grad(loss(rs), leaves, allow_unused=True)
    assert "aten.clone.default" not in map(str, c.aten_ops) and "aten.copy_.default" not in map(str, c.aten_ops)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_problems_without_an_output_gradient_get_none_and_one_launch_each_way():
    xs, ws, bs = _problems(seed=1)
    with count_launches(*KERNELS) as c:
        ys = linear_grouped(xs, ws, bs, backend="triton")
        grads = torch.autograd.grad(ys[:-1], xs + ws + bs, [torch.ones_like(y) for y in ys[:-1]], allow_unused=True)
    assert c.triton == ["linear_fwd_kernel", "linear_bwd_kernel"] and not c.syncs
    G = len(SHAPES)
    assert all(g is None for g in (grads[G - 1], grads[2 * G - 1], grads[3 * G - 1]))  # the last problem's
    assert all(g is not None for i, g in enumerate(grads) if i % G != G - 1)


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    ts = [
        torch.randn(*s, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
        for s in ((3, 4), (2, 5), (6, 4), (3, 5), (6,), (3,))
    ]
    fn = lambda x1, x2, w1, w2, b1, b2: linear_grouped([x1, x2], [w1, w2], [b1, b2], backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(ts))


def test_fp32_close_to_fp64():
    xs, ws, bs = _problems(torch.float32, seed=3)
    ys = linear_grouped(xs, ws, bs, backend="triton")
    for y, x, w, b in zip(ys, xs, ws, bs):
        torch.testing.assert_close(y.double(), F.linear(x.double(), w.double(), b.double()), rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph():
    xs, ws, bs = (list(t.detach() for t in ts) for ts in _problems(seed=4))
    fn = lambda *a: linear_grouped(list(a[:2]), list(a[2:4]), list(a[4:]), backend="triton")  # noqa: E731
    args = (*xs[:2], *ws[:2], *bs[:2])
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="eager")(*args)
    for a, b in zip(got, fn(*args)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "xs, ws, bs, match",
    [
        ([], [], [], "xs: expected a non-empty list"),
        ([torch.zeros(2, 3)], [torch.zeros(4, 5)], [torch.zeros(4)], r"expected \(N, K=3\)"),
        ([torch.zeros(2, 3)], [torch.zeros(4, 3)], [torch.zeros(5)], r"expected \(N, K=3\) and \(N,\)"),
        (
            [torch.zeros(2, 3)],
            [torch.zeros(4, 3, dtype=torch.float64)],
            [torch.zeros(4)],
            "ws\\[0\\]: expected a floating",
        ),
        ([torch.zeros(2, 3)], [torch.zeros(4, 3)], [torch.zeros(4), torch.zeros(4)], "one entry per problem"),
        ([torch.zeros(0, 3)], [torch.zeros(4, 3)], [torch.zeros(4)], "non-empty"),
        ([torch.zeros(3)], [torch.zeros(4, 3)], [torch.zeros(4)], "xs\\[0\\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(xs, ws, bs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        linear_grouped([t.to(DEV) for t in xs], [t.to(DEV) for t in ws], [t.to(DEV) for t in bs], backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_parity(dtype):
    """CUDA: within 2 × the same-dtype torch error (+ 1e-5 / 2e-2 of the largest value) of fp64."""
    xs, ws, bs = _problems(torch.float64, seed=5)
    exact = [F.linear(x, w, b) for x, w, b in zip(xs, ws, bs)]
    cast = [[t.detach().to(dtype) for t in ts] for ts in (xs, ws, bs)]
    ours = linear_grouped(*cast, backend="triton")
    same = [F.linear(x, w, b) for x, w, b in zip(*cast)]
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b, x in zip(ours, same, exact):
        err, base = (a.double() - x).abs().max().item(), (b.double() - x).abs().max().item()
        assert err <= 2 * base + atol * max(1.0, x.abs().max().item()), (err, base)
