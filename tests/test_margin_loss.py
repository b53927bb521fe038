"""DMD's margin ("sim") loss on the Triton path (interpreter on the CPU) against the loop oracle."""

import pytest
import torch

from dmd_fast.bench.launches import count_launches
from dmd_fast.kernels import margin_loss as km
from dmd_fast.model.losses import margin_loss as vectorised
from dmd_fast.ops.margin_loss import MAX_ROWS, margin_loss
from dmd_fast.reference.margin import margin_loss_loop

DEV = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS = [(km, "margin_loss_fwd_kernel"), (km, "margin_loss_bwd_kernel")]


def _case(N, d, seed, dtype=torch.float64, classes=4):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(N, d, generator=g, dtype=torch.float64).to(DEV, dtype).requires_grad_()
    ids = (torch.randint(0, classes, (N, 1), generator=g) * 0.5 - 1.0).to(DEV, dtype)
    return ids, feats


@pytest.mark.parametrize("N, d", [(48, 50), (5, 3), (12, 100), (MAX_ROWS, 30), (17, 200)])
def test_value_and_gradient_equal_the_loop_oracle_fp64(N, d):
    ids, feats = _case(N, d, seed=N + d)
    got = margin_loss(ids, feats, backend="triton")
    (g_got,) = torch.autograd.grad(3.0 * got, feats)
    want = margin_loss_loop(ids, feats)
    (g_want,) = torch.autograd.grad(3.0 * want, feats)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g_got, g_want, rtol=1e-11, atol=1e-14)
    assert g_want.abs().sum() > 0


def test_fp32_close_to_the_vectorised_loss():
    ids, feats = _case(48, 50, seed=3, dtype=torch.float32)
    got = margin_loss(ids, feats, backend="triton")
    want = vectorised(ids, feats)
    (g_got,) = torch.autograd.grad(got, feats)
    (g_want,) = torch.autograd.grad(want, feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-7)


def test_no_anchor_gives_zero_with_zero_gradient():
    feats = torch.randn(6, 4, dtype=torch.float64, device=DEV, requires_grad=True)
    ids = torch.ones(6, 1, dtype=torch.float64, device=DEV)  # no negatives anywhere
    loss = margin_loss(ids, feats, backend="triton")
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, feats)[0].abs().max().item() == 0.0


def test_gradcheck():
    ids, feats = _case(7, 5, seed=11, classes=3)
    assert torch.autograd.gradcheck(lambda f: margin_loss(ids, f, backend="triton"), (feats,))


def test_one_launch_each_way_and_no_other_kernel():
    ids, feats = _case(48, 50, seed=2)
    with count_launches(*KERNELS) as c:
        loss = margin_loss(ids, feats, backend="triton")
        torch.autograd.grad(loss, feats)
    assert c.triton == ["margin_loss_fwd_kernel", "margin_loss_bwd_kernel"] and not c.syncs
    assert [op for op in c.aten_ops if not op.startswith("aten.ones_like")] == []  # the grad seed only


def test_torch_compile_fullgraph():
    ids, feats = _case(12, 8, seed=5)
    fn = lambda i, f: margin_loss(i, f, backend="triton")  # noqa: E731
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="eager")(ids, feats.detach())
    torch.testing.assert_close(got, fn(ids, feats.detach()), rtol=0, atol=0)


@pytest.mark.parametrize(
    "ids, feats, match",
    [
        (torch.zeros(4, 1), torch.zeros(4), r"feats"),
        (torch.zeros(3, 1), torch.zeros(4, 2), r"ids: expected shape \(4,\) or \(4, 1\)"),
        (torch.zeros(4, 1), torch.zeros(4, 2, dtype=torch.float16), "feats: expected float32 or float64"),
        (torch.zeros(MAX_ROWS + 1, 1), torch.zeros(MAX_ROWS + 1, 2), f"N <= {MAX_ROWS}"),
        (torch.zeros(0, 1), torch.zeros(0, 2), "at least one row"),
    ],
)
def test_bad_inputs_raise_clear_errors(ids, feats, match):
    with pytest.raises((TypeError, ValueError), match=match):
        margin_loss(ids.to(DEV), feats.to(DEV), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("N", (48, MAX_ROWS))
def test_gpu_parity_fp32(N):
    """CUDA, fp32 (DMD's 3 rows per sample at B=16, and the cap): loss and gradient within 2 × the fp32
    loop oracle's own error (+ 1e-6) of the fp64 oracle."""
    ids, feats = _case(N, 50, seed=N)
    exact = margin_loss_loop(ids, feats)
    (g_exact,) = torch.autograd.grad(exact, feats)
    res = {}
    for name, fn in (("ours", lambda i, f: margin_loss(i, f, backend="triton")), ("same", margin_loss_loop)):
        f32 = feats.detach().float().cuda().requires_grad_()
        loss = fn(ids.float().cuda(), f32)
        res[name] = (loss, torch.autograd.grad(loss, f32)[0])
    for k, x in ((0, exact), (1, g_exact)):
        err = (res["ours"][k].double().cpu() - x.cpu()).abs().max().item()
        base = (res["same"][k].double().cpu() - x.cpu()).abs().max().item()
        assert err <= 2 * base + 1e-6 * max(1.0, x.abs().max().item()), (k, err, base)
