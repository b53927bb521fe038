"""Fused loss terms (l1, mse, clamped cosine, values; group sums; weighted total): kernels vs the reference,
and DMD's losses on the fused path against upstream's term-by-term code."""

import pytest
import torch

from dmd_fast.bench.launches import count_launches
from dmd_fast.kernels import loss_terms as kl
from dmd_fast.model.config import get_preset
from dmd_fast.model.losses import dmd_losses
from dmd_fast.model.system import DMDSystem
from dmd_fast.ops.loss_terms import loss_terms

DEV = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS = [(kl, n) for n in ("loss_terms_partial_kernel", "loss_terms_reduce_kernel", "loss_terms_bwd_kernel")]


def _inputs(dtype=torch.float64, B=5, seed=0, grad=True):
    """DMD-like terms: (B, 1) predictions vs labels, (B, d, T) pairs, permuted (T, B, d) views, a 0-d value."""
    g = torch.Generator().manual_seed(seed)

    def mk(*shape, req=grad):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEV, dtype).requires_grad_(req)

    pred, label = mk(B, 1), mk(B, 1, req=False)
    recon, origin = mk(B, 4, 7), mk(B, 4, 7)
    s, c = mk(B, 3, 6), mk(B, 3, 6)
    value = mk(())
    terms = [
        ("l1", pred, label),
        ("mse", recon, origin),
        ("mse", s.permute(0, 2, 1), c.permute(0, 2, 1)),  # strided views, no copies
        ("cosine", s.permute(2, 0, 1), c.permute(2, 0, 1)),  # DMD's (T', B, d): cosine over the batch
        ("value", value, None),
    ]
    return terms, [t for t in (pred, recon, origin, s, c, value) if t.requires_grad]


WEIGHTS, GROUPS = [1.0, 0.1, 0.1, 0.01, 0.05], [0, 1, 1, 2, -1]


def _run(terms, leaves, backend, probe):
    values, total = loss_terms(terms, weights=WEIGHTS, groups=GROUPS, n_groups=3, backend=backend)
    loss = probe(values, total)
    return values, total, torch.autograd.grad(loss, leaves, allow_unused=True)


@pytest.mark.parametrize(
    "probe",
    [
        lambda v, t: t,  # the total only (the training case)
        lambda v, t: (v * torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)).sum(),  # terms, groups
        lambda v, t: 3.0 * t - v[3] + v[-1],  # both
    ],
)
def test_values_and_gradients_equal_the_reference_fp64(probe):
    terms, leaves = _inputs()
    ref = _run(terms, leaves, "reference", probe)
    got = _run(terms, leaves, "triton", probe)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-13, atol=1e-14)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_fp32_close_to_fp64_reference():
    terms64, leaves64 = _inputs(torch.float64, B=16, seed=3)
    terms32, leaves32 = _inputs(torch.float32, B=16, seed=3)
    ref = _run(terms64, leaves64, "reference", lambda v, t: t)
    got = _run(terms32, leaves32, "triton", lambda v, t: t)
    torch.testing.assert_close(got[0].double(), ref[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6)


def test_gradcheck():
    terms, leaves = _inputs(B=3, seed=1)

    def fn(*xs):
        pred, recon, origin, s, c, value = xs
        ts = [("l1", pred, terms[0][2]), ("mse", recon, origin), ("cosine", s.permute(2, 0, 1), c.permute(2, 0, 1)),
              ("value", value, None)]  # fmt: skip
        v, t = loss_terms(ts, weights=[1.0, 0.5, 0.25, 2.0], groups=[0, 0, 1, -1], n_groups=2, backend="triton")
        return v, t

    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7)


def test_blocks_beyond_one_and_cosine_gate():
    """Terms longer than a block (several partial sums) and cosines on both sides of the clamp."""
    g = torch.Generator().manual_seed(7)
    n = kl.blocks()[0] * 2 + 17
    a = torch.randn(n, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
    b = torch.randn(n, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
    s = torch.randn(3, 8, kl.blocks()[2] + 5, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
    c = (torch.randn(3, 8, kl.blocks()[2] + 5, generator=g, dtype=torch.float64).to(DEV) - s.detach()).requires_grad_()
    terms = [("mse", a, b), ("l1", a, b), ("cosine", s, c)]
    out = {}
    for backend in ("reference", "triton"):
        v, t = loss_terms(terms, weights=[1.0, 2.0, 3.0], backend=backend)
        out[backend] = (v, t, torch.autograd.grad(t, [a, b, s, c]))
    torch.testing.assert_close(out["triton"][0], out["reference"][0], rtol=1e-12, atol=1e-14)
    for x, y in zip(out["triton"][2], out["reference"][2]):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-14)
    assert out["reference"][2][2].abs().sum() > 0  # some cosines pass the clamp


def test_launches_two_forward_one_backward_and_only_needed_gradients():
    terms, leaves = _inputs()
    terms[1] = ("mse", terms[1][1], terms[1][2].detach())  # origin: no gradient wanted
    with count_launches(*KERNELS) as c:
        values, total = loss_terms(terms, weights=WEIGHTS, groups=GROUPS, n_groups=3, backend="triton")
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
    assert c.triton == ["loss_terms_partial_kernel", "loss_terms_reduce_kernel", "loss_terms_bwd_kernel"]
    assert grads[2] is None  # origin
    assert all(g is not None for i, g in enumerate(grads) if i != 2)


def test_torch_compile_fullgraph():
    terms, _ = _inputs(grad=False)

    def fn(*ts):
        pred, label, recon, origin = ts
        return loss_terms([("l1", pred, label), ("mse", recon, origin)], weights=[1.0, 1.0], backend="triton")

    args = (terms[0][1], terms[0][2], terms[1][1], terms[1][2])
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="eager")(*args)
    want = fn(*args)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t: [], "terms: expected a non-empty list"),
        (lambda t: [("huber", t[0][1], t[0][2])], "kind: expected one of"),
        (lambda t: [("l1", t[0][1], t[1][1])], r"b: expected a's shape \(5, 1\)"),
        (lambda t: [("value", t[1][1], None)], "one-element tensor"),
        (lambda t: [("value", t[4][1], t[4][1])], "b=None"),
        (lambda t: [("cosine", t[0][1], t[0][2])], r"\(D0, D1, D2\)"),
        (lambda t: [("l1", t[0][1], t[0][2].float())], "expected a floating tensor"),
        (lambda t: [("l1", t[0][1], "x")], "expected a torch.Tensor"),
        (lambda t: [("mse", t[0][1][:0], t[0][2][:0])], "at least one element"),
    ],
)
def test_bad_terms_raise_clear_errors(change, match):
    terms, _ = _inputs(grad=False)
    bad = change(terms)
    with pytest.raises((TypeError, ValueError), match=match):
        loss_terms(bad, weights=[1.0] * len(bad), backend="triton")


def test_bad_weights_and_groups_raise_clear_errors():
    terms, _ = _inputs(grad=False)
    with pytest.raises(ValueError, match="weights: expected 5"):
        loss_terms(terms, weights=[1.0], backend="triton")
    with pytest.raises(ValueError, match="weights"):
        loss_terms(terms, weights=[1.0, float("nan"), 1.0, 1.0, 1.0], backend="triton")
    with pytest.raises(ValueError, match=r"groups: expected indices in \[-1, 2\)"):
        loss_terms(terms, weights=WEIGHTS, groups=GROUPS, n_groups=2, backend="triton")
    with pytest.raises(ValueError, match="groups: expected 5 group indices"):
        loss_terms(terms, weights=WEIGHTS, groups=[0], n_groups=1, backend="triton")


# ----------------------------------------------------------------------------------------------
# DMD's losses on the fused path
# ----------------------------------------------------------------------------------------------


def _dmd_outputs(cfg, B=4, seed=0):
    torch.manual_seed(seed)
    system = DMDSystem(cfg, backend="reference").to(DEV).eval()
    g = torch.Generator().manual_seed(seed)
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    x = [torch.randn(B, t, d, generator=g).to(DEV) for t, d in ((tl, dl), (ta, da), (tv, dv))]
    labels = torch.tensor([[0.5], [-1.0], [0.5], [2.0]], device=DEV)[:B]
    return system, system.dmd(*x), labels


@pytest.mark.parametrize("ort", ["torch19", "per_sample"])
def test_dmd_losses_fused_equal_upstream_terms(ort):
    """Every loss term, the group sums and the total, and every parameter gradient: fused = upstream's
    term-by-term code (fp32, as dmd_losses computes; the fused sums run in another order)."""
    system, outputs, labels = _dmd_outputs(get_preset("tiny"))
    params = [p for p in system.parameters() if p.requires_grad]
    res = {}
    for backend in ("reference", "triton"):
        L = dmd_losses(outputs, labels, system.gd_homo, system.gd_hetero, ort_semantics=ort, backend=backend)
        grads = torch.autograd.grad(L["total"], params, retain_graph=True, allow_unused=True)
        res[backend] = (L, grads)
    (ref, g_ref), (got, g_got) = res["reference"], res["triton"]
    assert set(got) == set(ref)
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=2e-6, atol=1e-7, msg=key)
    for a, b in zip(g_got, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dmd_losses_fused_launches():
    """The fused losses: 2 forward + 1 backward loss-terms launches beside the GD units' (1 + 1 each)."""
    system, outputs, labels = _dmd_outputs(get_preset("tiny"))
    with count_launches(*KERNELS) as c:
        L = dmd_losses(outputs, labels, system.gd_homo, system.gd_hetero, backend="triton")
        L["total"].backward()
    assert c.triton == ["loss_terms_partial_kernel", "loss_terms_reduce_kernel", "loss_terms_bwd_kernel"]


@pytest.mark.gpu
def test_gpu_parity_at_dmd_shapes():
    """CUDA, fp32, DMD's mosi-unaligned loss shapes at B=16: values and gradients within 2 × the fp32
    reference's own error (+ 1e-6 of the largest value) of the fp64 reference."""
    g = torch.Generator().manual_seed(0)

    def mk(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).cuda()

    B, d = 16, 50
    pairs = [("l1", mk(B, 1), mk(B, 1))] * 8
    pairs += [("mse", mk(B, d, T), mk(B, d, T)) for T in (46, 371, 496)] * 2
    pairs += [("cosine", mk(B, d, T).permute(2, 0, 1), mk(B, d, T).permute(2, 0, 1)) for T in (46, 371, 496)]
    pairs += [("value", mk(()), None)] * 3
    weights = [1.0] * 8 + [0.1] * 6 + [0.01] * 3 + [0.01, 0.05, 0.05]
    groups = [0] * 8 + [1] * 3 + [2] * 3 + [3] * 3 + [-1] * 3

    def run(dtype, backend):
        leaf = lambda t: None if t is None else t.detach().to(dtype).clone().requires_grad_()  # noqa: E731
        leaves = [(leaf(a), leaf(b)) for _, a, b in pairs]
        terms = [(k, a, b) for (k, _, _), (a, b) in zip(pairs, leaves)]
        values, total = loss_terms(terms, weights=weights, groups=groups, n_groups=4, backend=backend)
        flat = [t for ab in leaves for t in ab if t is not None]
        return values, torch.autograd.grad(total, flat)

    exact, ours, same = run(torch.float64, "reference"), run(torch.float32, "triton"), run(torch.float32, "reference")
    for kind in (0, 1):
        xs = [exact[0]] if kind == 0 else exact[1]
        os_ = [ours[0]] if kind == 0 else ours[1]
        ss = [same[0]] if kind == 0 else same[1]
        for i, (a, b, x) in enumerate(zip(os_, ss, xs)):
            err, base = (a.double() - x).abs().max().item(), (b.double() - x).abs().max().item()
            tol = 2 * base + 1e-6 * max(1.0, x.abs().max().item())
            assert err <= tol, f"{'grad' if kind else 'values'} {i}: {err:.3g} > {tol:.3g} (torch {base:.3g})"
