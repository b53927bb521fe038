"""Cross-modal attention: Triton kernels (interpreter on CPU) and op vs the float64 reference.

CPU tier: small shapes, fp32/fp64, every mask mode, dropout, determinism, strides, grouping,
torch.compile, input errors. GPU tier (skipped without CUDA): DMD shapes in fp32/bf16/fp16.
Pass rule (FlashAttention's): error vs the fp64 reference <= 2 × the error of the PyTorch reference
run in the same dtype, plus a small atol.
"""

import math

import pytest
import torch

from dmd_fast.kernels import attention as ka
from dmd_fast.kernels import attention_dropout as kd
from dmd_fast.kernels import grouped
from dmd_fast.ops.attention import attention_weights, cross_modal_attention, cross_modal_attention_grouped
from dmd_fast.ops.backend import last_backend
from dmd_fast.reference import cross_modal_attention as reference

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"  # the CPU tier's small cases also run compiled on a GPU machine
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy >= 1.25 in Triton's interpreter
MASKS = {"none": (False, False), "causal": (True, False), "keylen": (False, True), "both": (True, True)}
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-3, torch.float16: 5e-4}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every kernel output starts as NaN (floats) or 2 (int8): unwritten elements show up."""

    def fill(t):
        return t.fill_(float("nan") if t.dtype.is_floating_point else 2)

    empty_like, empty = ka._empty_like, ka._empty
    monkeypatch.setattr(ka, "_empty_like", lambda t: fill(empty_like(t)))
    monkeypatch.setattr(ka, "_empty", lambda shape, dtype, device: fill(empty(shape, dtype, device)))


def make_inputs(B, H, Lq, Lk, D, dtype, seed, device=DEV, mask="none"):
    """Fresh random q, k, v (requires_grad), dO and key lengths for a mask mode."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for L in (Lq, Lk, Lk))
    do = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64)
    kl = None
    if MASKS[mask][1]:
        kl = torch.randint(1, Lk + 1, (B,), generator=g)
        kl[0] = max(1, Lk // 2)
        kl = kl.to(device)
    cast = lambda t: t.to(device=device, dtype=dtype).requires_grad_()  # noqa: E731
    return cast(q), cast(k), cast(v), do.to(device=device, dtype=dtype), kl


def run(fn, q, k, v, do, **kw):
    """Output and (dq, dk, dv) of fn(q, k, v, **kw) for upstream gradient do."""
    out = fn(q, k, v, **kw)
    return out.detach(), torch.autograd.grad(out, (q, k, v), do)


def ref64(q, k, v, do, **kw):
    up = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    return run(reference, up(q), up(k), up(v), do.double(), **kw)


def assert_rule(name, ours, same, exact, atol):
    """|ours − exact| <= 2 |same − exact| + atol, elementwise max; all finite."""
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    err = (ours.double() - exact).abs().max().item() if ours.numel() else 0.0
    base = (same.double() - exact).abs().max().item() if ours.numel() else 0.0
    assert err <= 2 * base + atol, f"{name}: error {err:.3g} > 2 x torch's {base:.3g} + {atol:g}"


def check_parity(B, H, Lq, Lk, D, dtype, mask, seed, device=DEV, **kw):
    causal, _ = MASKS[mask]
    q, k, v, do, kl = make_inputs(B, H, Lq, Lk, D, dtype, seed, device, mask)
    opts = dict(key_lengths=kl, offset_causal=causal, **kw)
    out, grads = run(cross_modal_attention, q, k, v, do, backend="triton", **opts)
    assert last_backend("cross_modal_attention") == "triton"
    out_s, grads_s = run(reference, q, k, v, do, **opts)
    out_x, grads_x = ref64(q, k, v, do, **opts)
    assert out.dtype == dtype and out.shape == (B, H, Lq, D)
    for name, a, s, x in zip(("O", "dq", "dk", "dv"), (out, *grads), (out_s, *grads_s), (out_x, *grads_x)):
        assert_rule(name, a, s, x, ATOL[dtype])


# ------------------------------------------------------------------------------------------------
# CPU tier: parity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("Lq,Lk", [(1, 1), (7, 13), (13, 7), (46, 371)])
def test_parity_masks(Lq, Lk, mask):
    check_parity(2, 2, Lq, Lk, 5, torch.float32, mask, seed=Lq * 1000 + Lk)


@pytest.mark.parametrize("D", [1, 5, 8, 10, 16, 64])
@pytest.mark.parametrize("Lq,Lk", [(13, 7), (46, 371)])
def test_parity_head_dims(D, Lq, Lk):
    check_parity(1, 2, Lq, Lk, D, torch.float32, "both", seed=D)


@pytest.mark.parametrize("mask", list(MASKS))
def test_parity_float64(mask):
    check_parity(2, 1, 46, 71, 10, torch.float64, mask, seed=7, scale=0.37)


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("Lq,Lk", [(71, 37), (37, 71), (33, 33)])
def test_kernel_small_blocks(Lq, Lk, mask):
    """Many 16-wide blocks: block skipping and the masked / unmasked split, with dropout."""
    causal, _ = MASKS[mask]
    q, k, v, do, kl = make_inputs(2, 2, Lq, Lk, 5, torch.float64, Lq + Lk, mask=mask)
    if mask == "keylen":
        kl = torch.tensor([0, Lk - 3], dtype=torch.int32, device=DEV)
    elif kl is not None:
        kl = kl.to(torch.int32)
    seed = torch.tensor([12345, 678], device=DEV)
    opts = dict(key_lengths=kl, offset_causal=causal, dropout_p=0.25, seed=seed, block_m=16, block_n=16)
    o, lse = ka.attention_fwd(q, k, v, **opts)
    dq, dk, dv = ka.attention_bwd(do, q, k, v, o, lse, **opts)
    keep = kd.attention_dropout_mask(seed, 2, 2, Lq, Lk, 0.25)
    out_x, grads_x = ref64(q, k, v, do, key_lengths=kl, offset_causal=causal, dropout_p=0.25, keep_mask=keep)
    for name, a, x in zip(("O", "dq", "dk", "dv"), (o, dq, dk, dv), (out_x, *grads_x)):
        assert_rule(name, a, x, x, 1e-12)


def test_zero_length_keys():
    """A sample with no visible key: O = 0, all its gradients exactly 0, everything finite."""
    for mask in ("keylen", "both"):
        q, k, v, do, _ = make_inputs(3, 2, 13, 29, 5, torch.float32, 11, mask=mask)
        kl = torch.tensor([0, 17, 0], device=DEV)
        out, (dq, dk, dv) = run(
            cross_modal_attention, q, k, v, do, key_lengths=kl, offset_causal=MASKS[mask][0], backend="triton"
        )
        for t in (out, dq, dk, dv):
            assert torch.isfinite(t).all()
            assert (t[0] == 0).all() and (t[2] == 0).all()
        assert (dk[1, :, 17:] == 0).all() and (dv[1, :, 17:] == 0).all()
        assert out[1].abs().sum() > 0
        check_parity(3, 2, 13, 29, 5, torch.float32, mask, seed=11)


def test_lse_saved():
    q, k, v, _, _ = make_inputs(2, 2, 13, 29, 5, torch.float64, 3)
    o, lse = ka.attention_fwd(q, k, v, key_lengths=torch.tensor([0, 9], dtype=torch.int32, device=DEV))
    s = (q @ k.transpose(-1, -2)).detach() * 5**-0.5
    want = torch.logsumexp(s[1, :, :, :9], -1) / math.log(2)
    assert torch.allclose(lse[1], want, atol=1e-12, rtol=0)
    assert torch.isinf(lse[0]).all() and (lse[0] > 0).all()


@pytest.mark.parametrize("mask", ["none", "both"])
def test_gradcheck(mask):
    causal, _ = MASKS[mask]
    q, k, v, _, kl = make_inputs(2, 1, 5, 7, 3, torch.float64, 5, mask=mask)

    def f(q, k, v):
        return cross_modal_attention(
            q,
            k,
            v,
            key_lengths=kl,
            offset_causal=causal,
            dropout_p=0.2,
            generator=torch.Generator().manual_seed(3),
            backend="triton",
        )

    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)


# ------------------------------------------------------------------------------------------------
# CPU tier: dropout
# ------------------------------------------------------------------------------------------------


def test_dropout_kept_fraction():
    q, k, v, _, _ = make_inputs(1, 1, 64, 512, 5, torch.float32, 1)
    for p in (0.1, 0.3, 0.5):
        _, keep = cross_modal_attention(
            q,
            k,
            v,
            dropout_p=p,
            return_keep_mask=True,
            backend="triton",
            generator=torch.Generator().manual_seed(int(p * 10)),
        )
        assert keep.shape == (1, 1, 64, 512) and keep.dtype == torch.bool
        assert set(keep.view(torch.int8).unique().tolist()) <= {0, 1}
        assert abs(keep.float().mean().item() - (1 - p)) <= 0.01


@pytest.mark.parametrize("mask", ["none", "both"])
def test_dropout_same_mask_fwd_bwd(mask):
    """Output and gradients equal the reference given the returned keep-mask."""
    causal, _ = MASKS[mask]
    q, k, v, do, kl = make_inputs(2, 2, 46, 71, 5, torch.float64, 21, mask=mask)
    gen = torch.Generator().manual_seed(99)
    out, keep = cross_modal_attention(
        q,
        k,
        v,
        key_lengths=kl,
        offset_causal=causal,
        dropout_p=0.3,
        generator=gen,
        return_keep_mask=True,
        backend="triton",
    )
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert 0.5 < keep.float().mean() < 0.9
    out_x, grads_x = ref64(q, k, v, do, key_lengths=kl, offset_causal=causal, dropout_p=0.3, keep_mask=keep)
    for name, a, x in zip(("O", "dq", "dk", "dv"), (out, *grads), (out_x, *grads_x)):
        assert_rule(name, a, x, x, 1e-12)


def test_dropout_seeds():
    q, k, v, _, _ = make_inputs(1, 2, 16, 64, 5, torch.float32, 2)
    f = lambda g: cross_modal_attention(q, k, v, dropout_p=0.3, generator=g, backend="triton")  # noqa: E731
    a, b = f(torch.Generator().manual_seed(1)), f(torch.Generator().manual_seed(1))
    c = f(torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = f(None)
    e = f(None)
    torch.manual_seed(5)
    assert torch.equal(d, f(None)) and not torch.equal(d, e)


def _philox4x32_10(c, key):
    """Reference Philox4x32-10 on uint64 arrays holding uint32 values; key = (lo, hi) of the seed."""
    mask = 0xFFFFFFFF
    c0, c1, c2, c3 = c
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & mask, (p0 >> 32) ^ c3 ^ k1, p0 & mask
        k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
    return c0, c1, c2, c3


def test_dropout_mask_matches_documented_philox():
    """Key j of row i, head b·H + h: byte j % 4 of Philox word (j % 16) // 4 at counter
    (j // 16, i, b·H + h, offset) < round(256 (1 − p))."""
    import numpy as np

    B, H, Lq, Lk, p = 2, 2, 5, 40, 0.3
    seed_v, off_v = 2**40 + 12345, 2**33 + 77
    keep = kd.attention_dropout_mask(torch.tensor([seed_v, off_v], device=DEV), B, H, Lq, Lk, p).cpu()
    bh, i, j = np.meshgrid(np.arange(B * H), np.arange(Lq), np.arange(Lk), indexing="ij")
    u = lambda x: np.asarray(x, dtype=np.uint64)  # noqa: E731
    words = _philox4x32_10(
        (u(j // 16), u(i), u(bh), u(np.full_like(j, off_v & 0xFFFFFFFF))), (u(seed_v & 0xFFFFFFFF), u(seed_v >> 32))
    )
    word = np.choose((j % 16) // 4, words)
    byte = (word >> u(8 * (j % 4))) & u(0xFF)
    want = torch.from_numpy(byte < round(256 * (1 - p))).view(B, H, Lq, Lk)
    assert torch.equal(keep, want)


def test_dropout_mask_independent_of_blocks():
    seed = torch.tensor([2**40 + 17, 3], device=DEV)
    a = kd.attention_dropout_mask(seed, 1, 2, 37, 80, 0.4)
    b = kd.attention_dropout_mask(seed, 1, 2, 37, 80, 0.4, block_m=16, block_n=32)
    c = kd.attention_dropout_mask(seed, 1, 2, 37, 80, 0.4, group_index=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0, 0], a[0, 1])  # heads differ


# ------------------------------------------------------------------------------------------------
# CPU tier: determinism, layouts, grouping, compile
# ------------------------------------------------------------------------------------------------


def test_determinism():
    q, k, v, do, kl = make_inputs(2, 2, 46, 71, 5, torch.float32, 4, mask="both")
    f = lambda: run(
        cross_modal_attention,
        q,
        k,
        v,
        do,
        key_lengths=kl,
        offset_causal=True,  # noqa: E731
        dropout_p=0.2,
        generator=torch.Generator().manual_seed(8),
        backend="triton",
    )
    first = f()
    for _ in range(3):
        again = f()
        assert torch.equal(first[0], again[0])
        assert all(torch.equal(a, b) for a, b in zip(first[1], again[1]))


def test_strided_mult_layout():
    """MulT's (T, B, E) viewed as (B, H, T, D) without a copy equals contiguous inputs, bitwise."""
    B, H, D, Tq, Tk = 2, 3, 5, 13, 29
    g = torch.Generator().manual_seed(6)
    xq = torch.randn(Tq, B, H * D, generator=g).to(DEV).requires_grad_()
    xkv = torch.randn(Tk, B, 2 * H * D, generator=g).to(DEV).requires_grad_()  # packed k|v as from in_proj
    view = lambda x, T: x.view(T, B, H, D).permute(1, 2, 0, 3)  # noqa: E731
    q, k, v = view(xq, Tq), view(xkv[..., : H * D], Tk), view(xkv[..., H * D :], Tk)
    assert not q.is_contiguous() and not k.is_contiguous()
    do = view(torch.randn(Tq, B, H * D, generator=g).to(DEV), Tq)  # a strided upstream gradient too
    kl = torch.tensor([29, 11], device=DEV)
    out, grads = run(cross_modal_attention, q, k, v, do, key_lengths=kl, offset_causal=True, backend="triton")
    assert out.stride() == q.stride()  # output keeps the (T, B, E) layout
    c = lambda t: t.detach().contiguous().requires_grad_()  # noqa: E731
    out_c, grads_c = run(
        cross_modal_attention, c(q), c(k), c(v), do.contiguous(), key_lengths=kl, offset_causal=True, backend="triton"
    )
    assert torch.equal(out, out_c)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_c))


def test_grouped_kernel_equals_separate():
    """One grouped launch == G separate launches bitwise, dropout included (problem g: offset + g)."""
    pairs = [(46, 71), (13, 7), (71, 46), (1, 1)]
    probs = [make_inputs(2, 2, a, b, 5, torch.float32, 30 + i, mask="both") for i, (a, b) in enumerate(pairs)]
    qs, ks, vs, dos = ([p[i].detach() for p in probs] for i in range(4))
    kls = [p[4].to(torch.int32) for p in probs]
    seed = torch.tensor([777, 2**33 + 5], device=DEV)
    opts = dict(offset_causal=True, dropout_p=0.3, scale=0.3)
    os_, lses = ka.attention_fwd_grouped(qs, ks, vs, key_lengths=kls, seed=seed, **opts)
    gq = ka.attention_bwd_grouped(dos, qs, ks, vs, os_, lses, key_lengths=kls, seed=seed, **opts)
    for g in range(len(pairs)):
        sg = seed + torch.tensor([0, g], device=DEV)
        o, lse = ka.attention_fwd(qs[g], ks[g], vs[g], key_lengths=kls[g], seed=sg, **opts)
        d = ka.attention_bwd(dos[g], qs[g], ks[g], vs[g], o, lse, key_lengths=kls[g], seed=sg, **opts)
        assert torch.equal(o, os_[g]) and torch.equal(lse, lses[g])
        assert all(torch.equal(a, b[g]) for a, b in zip(d, gq))


def test_grouped_op_equals_separate():
    pairs = [(46, 71), (7, 13), (71, 46)]
    probs = [make_inputs(2, 2, a, b, 5, torch.float32, 40 + i, mask="keylen") for i, (a, b) in enumerate(pairs)]
    kls = [probs[0][4], None, probs[2][4]]
    outs = cross_modal_attention_grouped([p[:3] for p in probs], key_lengths=kls, offset_causal=True, backend="triton")
    grads = torch.autograd.grad(outs, [t for p in probs for t in p[:3]], [p[3] for p in probs])
    for i, p in enumerate(probs):
        out, g = run(cross_modal_attention, *p[:4], key_lengths=kls[i], offset_causal=True, backend="triton")
        assert torch.equal(out, outs[i])
        assert all(torch.equal(a, b) for a, b in zip(g, grads[3 * i : 3 * i + 3]))
    # dropout: each problem equals the reference given its keep-mask
    outs, keeps = cross_modal_attention_grouped(
        [p[:3] for p in probs], key_lengths=kls, dropout_p=0.3, return_keep_mask=True, backend="triton"
    )
    assert not torch.equal(keeps[0][:, :, :7, :13], keeps[1])
    for p, kl, out, keep in zip(probs, kls, outs, keeps):
        want = reference(*p[:3], key_lengths=kl, dropout_p=0.3, keep_mask=keep)
        assert_rule("O", out, want, want.double(), ATOL[torch.float32])


def test_grouped_seed_argument():
    """A given [seed, offset] keys the grouped kernels' masks, draws nothing; another seed differs."""
    probs = [make_inputs(1, 2, a, b, 5, torch.float32, 60 + i)[:3] for i, (a, b) in enumerate([(16, 64), (9, 33)])]

    def f(pair):
        seed = torch.tensor(pair, dtype=torch.int64, device=DEV)
        return cross_modal_attention_grouped(probs, dropout_p=0.3, seed=seed, return_keep_mask=True, backend="triton")

    state = torch.get_rng_state()
    (a, keep_a), (b, _), (_, keep_c) = f([3, 4]), f([3, 4]), f([5, 4])
    assert torch.equal(torch.get_rng_state(), state), "a given seed draws nothing from torch's generator"
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(keep_a[0], keep_c[0])
    for p, out, keep in zip(probs, a, keep_a):
        want = reference(*p, dropout_p=0.3, keep_mask=keep)
        assert_rule("O", out, want, want.double(), ATOL[torch.float32])
    with pytest.raises(ValueError, match=r"seed: expected .* shape \(2,\).* got shape \(3,\)"):
        cross_modal_attention_grouped(probs, dropout_p=0.3, seed=torch.zeros(3, dtype=torch.int64), backend="triton")


def test_torch_compile_fullgraph():
    q, k, v, do, kl = make_inputs(2, 2, 13, 29, 5, torch.float32, 50, mask="both")

    def f(q, k, v, kl):
        return cross_modal_attention(q, k, v, key_lengths=kl, offset_causal=True, backend="triton").tanh()

    def f_drop(q, k, v):
        return cross_modal_attention(q, k, v, dropout_p=0.3, backend="triton") * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    out, grads = run(compiled, q, k, v, do, kl=kl)
    out_e, grads_e = run(f, q, k, v, do, kl=kl)
    assert torch.allclose(out, out_e, atol=1e-6, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(grads, grads_e))
    out_d, grads_d = run(torch.compile(f_drop, fullgraph=True), q, k, v, do)
    assert all(torch.isfinite(t).all() for t in (out_d, *grads_d))
    assert (out_d != 0).any()


def test_reference_backend_and_weights():
    q, k, v, do, kl = make_inputs(2, 2, 13, 29, 5, torch.float64, 60, mask="both")
    out = cross_modal_attention(q, k, v, key_lengths=kl, offset_causal=True, backend="reference")
    assert last_backend("cross_modal_attention") == "reference"
    assert torch.allclose(out, reference(q, k, v, key_lengths=kl, offset_causal=True), atol=1e-14)
    w = attention_weights(q, k, v, key_lengths=kl, offset_causal=True)
    assert w.shape == (2, 2, 13, 29)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 13, dtype=torch.float64, device=DEV))
    assert torch.allclose(
        w @ v, cross_modal_attention(q, k, v, key_lengths=kl, offset_causal=True, backend="triton"), atol=1e-12
    )
    _, keep = cross_modal_attention(q, k, v, dropout_p=0.5, return_keep_mask=True, backend="reference")
    assert keep.shape == (2, 2, 13, 29)


# ------------------------------------------------------------------------------------------------
# CPU tier: input errors
# ------------------------------------------------------------------------------------------------


def _bad_cases():
    f32 = lambda *s, dt=torch.float32: torch.randn(*s).to(dt)  # noqa: E731
    q, k, v = f32(2, 3, 5, 4), f32(2, 3, 7, 4), f32(2, 3, 7, 4)
    return [
        ((q[0], k, v), {}, ValueError, "q: expected a 4-D"),
        ((q, k, v[..., :3]), {}, ValueError, "v: expected the shape of k"),
        ((q, f32(2, 2, 7, 4), v), {}, ValueError, "k: expected shape"),
        ((q, f32(3, 3, 7, 4), f32(3, 3, 7, 4)), {}, ValueError, "k: expected shape"),
        ((q, f32(2, 3, 7, 5), f32(2, 3, 7, 5)), {}, ValueError, "k: expected shape"),
        ((q, k, f32(2, 3, 6, 4)), {}, ValueError, "v: expected the shape of k"),
        ((q, k.double(), v), {}, TypeError, "k: dtype torch.float64 differs"),
        ((q.long(), k, v), {}, TypeError, "q: expected a floating dtype"),
        (([1.0], k, v), {}, TypeError, "q: expected a torch.Tensor"),
        ((f32(2, 3, 5, 129), f32(2, 3, 7, 129), f32(2, 3, 7, 129)), {}, ValueError, "head_dim"),
        ((q, k, v), dict(key_lengths=torch.tensor([1.0, 2.0])), TypeError, "key_lengths: expected an integer"),
        ((q, k, v), dict(key_lengths=torch.tensor([1, 2, 3])), ValueError, "key_lengths: expected shape (2,)"),
        ((q, k, v), dict(key_lengths=torch.tensor([-1, 2])), ValueError, "key_lengths: values must lie"),
        ((q, k, v), dict(key_lengths=torch.tensor([8, 2])), ValueError, "key_lengths: values must lie"),
        ((q, k, v), dict(key_lengths=[3, 4]), TypeError, "key_lengths: expected an integer tensor"),
        ((q, k, v), dict(dropout_p=1.0), ValueError, "dropout_p"),
        ((q, k, v), dict(dropout_p=-0.1), ValueError, "dropout_p"),
        ((q, k, v), dict(dropout_p="0.1"), TypeError, "dropout_p"),
        ((q, k, v), dict(input_precision="fp8"), ValueError, "input_precision"),
        ((q, k, v), dict(backend="cuda"), ValueError, "backend"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    args, kw, exc, msg = _bad_cases()[case]
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        cross_modal_attention(*args, **kw)


def test_bad_grouped_inputs():
    a = tuple(torch.randn(2, 3, 5, 4) for _ in range(3))
    b = tuple(torch.randn(2, 2, 5, 4) for _ in range(3))
    with pytest.raises(ValueError, match=r"problems\[1\]"):
        cross_modal_attention_grouped([a, b])
    with pytest.raises(TypeError, match="problems"):
        cross_modal_attention_grouped([])
    with pytest.raises(TypeError, match="key_lengths"):
        cross_modal_attention_grouped([a, a], key_lengths=[None])


# ------------------------------------------------------------------------------------------------
# GPU tier: DMD shapes (B=16), fp32 / bf16 / fp16
# ------------------------------------------------------------------------------------------------

GPU_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GPU_SHAPES = [(46, 496), (496, 371), (500, 500), (498, 46), (371, 498)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("H,D", [(10, 5), (6, 5), (6, 10)])
@pytest.mark.parametrize("Lq,Lk", GPU_SHAPES)
@pytest.mark.parametrize("mask", ["none", "both"])
def test_gpu_parity(dtype, H, D, Lq, Lk, mask):
    check_parity(16, H, Lq, Lk, D, dtype, mask, seed=Lq + Lk + D, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("D", [1, 16, 32, 64, 100, 128])
def test_gpu_parity_head_dims(D):
    for dtype in GPU_DTYPES:
        check_parity(2, 2, 130, 257, D, dtype, "both", seed=D, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_dropout(dtype):
    q, k, v, do, kl = make_inputs(16, 6, 496, 371, 5, dtype, 70, "cuda", mask="both")
    out, keep = cross_modal_attention(q, k, v, key_lengths=kl, offset_causal=True, dropout_p=0.3, return_keep_mask=True)
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert abs(keep.float().mean().item() - 0.7) <= 0.01
    opts = dict(key_lengths=kl, offset_causal=True, dropout_p=0.3, keep_mask=keep)
    out_s, grads_s = run(reference, q, k, v, do, **opts)
    out_x, grads_x = ref64(q, k, v, do, **opts)
    for name, a, s, x in zip(("O", "dq", "dk", "dv"), (out, *grads), (out_s, *grads_s), (out_x, *grads_x)):
        assert_rule(name, a, s, x, ATOL[dtype])


@pytest.mark.gpu
def test_gpu_determinism_and_layout():
    B, H, D, Tq, Tk = 16, 6, 5, 496, 371
    xq = torch.randn(Tq, B, H * D, device="cuda", requires_grad=True)
    xk = torch.randn(Tk, B, H * D, device="cuda", requires_grad=True)
    xv = torch.randn(Tk, B, H * D, device="cuda", requires_grad=True)
    view = lambda x, T: x.view(T, B, H, D).permute(1, 2, 0, 3)  # noqa: E731
    q, k, v = view(xq, Tq), view(xk, Tk), view(xv, Tk)
    do = torch.randn(B, H, Tq, D, device="cuda")
    kl = torch.randint(0, Tk + 1, (B,), device="cuda")
    f = lambda q, k, v: run(
        cross_modal_attention,
        q,
        k,
        v,
        do,
        key_lengths=kl,
        offset_causal=True,  # noqa: E731
        dropout_p=0.1,
        generator=torch.Generator("cuda").manual_seed(3),
    )
    first = f(q, k, v)
    for _ in range(20):
        again = f(q, k, v)
        assert torch.equal(first[0], again[0]) and all(torch.equal(a, b) for a, b in zip(first[1], again[1]))
    c = lambda t: t.detach().contiguous().requires_grad_()  # noqa: E731
    cont = f(c(q), c(k), c(v))
    assert torch.equal(first[0], cont[0]) and all(torch.equal(a, b) for a, b in zip(first[1], cont[1]))


@pytest.mark.gpu
def test_gpu_no_recompile_across_lengths():
    def n_compiled():
        return sum(len(c[0]) for c in ka.attention_fwd_kernel.device_caches.values())

    q, k, v, do, kl = make_inputs(16, 6, 46, 496, 5, torch.float32, 80, "cuda", mask="both")
    run(cross_modal_attention, q, k, v, do, key_lengths=kl, offset_causal=True)
    before = n_compiled()
    for Lq, Lk in [(371, 496), (498, 500), (500, 46), (46, 46), (1, 375)]:
        q, k, v, do, kl = make_inputs(16, 6, Lq, Lk, 5, torch.float32, 81, "cuda", mask="both")
        run(cross_modal_attention, q, k, v, do, key_lengths=kl, offset_causal=True)
    assert n_compiled() == before


@pytest.mark.gpu
def test_gpu_grouped_six_pairs():
    lens = {"t": 46, "a": 375, "v": 500}
    pairs = [(a, b) for a in lens for b in lens if a != b]
    probs = [
        make_inputs(16, 6, lens[a], lens[b], 5, torch.float32, i, "cuda", mask="both") for i, (a, b) in enumerate(pairs)
    ]
    kls = [p[4] for p in probs]
    outs = cross_modal_attention_grouped([p[:3] for p in probs], key_lengths=kls, offset_causal=True)
    grads = torch.autograd.grad(outs, [t for p in probs for t in p[:3]], [p[3] for p in probs])
    for i, p in enumerate(probs):
        out, g = run(cross_modal_attention, *p[:4], key_lengths=kls[i], offset_causal=True)
        assert torch.equal(out, outs[i])
        assert all(torch.equal(a, b) for a, b in zip(g, grads[3 * i : 3 * i + 3]))


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    """fwd + bwd with dropout captured in a CUDA graph: replays draw fresh masks, p=0 equals eager."""
    q, k, v, do, kl = make_inputs(16, 6, 496, 371, 5, torch.float32, 90, "cuda", mask="both")
    for p in (0.0, 0.3):
        f = lambda: run(
            cross_modal_attention,
            q,
            k,
            v,
            do,
            key_lengths=kl,
            offset_causal=True,  # noqa: E731
            dropout_p=p,
        )
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            eager = f()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, grads = f()
        graph.replay()
        first = out.clone()
        graph.replay()
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        if p == 0:
            assert torch.equal(first, eager[0]) and torch.equal(out, eager[0])
        else:
            assert not torch.equal(first, out)


@pytest.mark.gpu
def test_gpu_grouped_cuda_graph_capture_survives_cache_eviction():
    """Grouped fwd + bwd captured in a CUDA graph: the descriptor tables built while capturing (pinned
    arena, no host allocation) stay valid after the eager cache has evicted everything; replay equals
    eager at p = 0."""
    lens = {"t": 46, "a": 375, "v": 500}
    pairs = [(a, b) for a in lens for b in lens if a != b]
    probs = [
        make_inputs(16, 6, lens[a], lens[b], 5, torch.float32, 40 + i, "cuda", mask="both")
        for i, (a, b) in enumerate(pairs)
    ]

    def f():
        outs = cross_modal_attention_grouped(
            [p[:3] for p in probs], key_lengths=[p[4] for p in probs], offset_causal=True
        )
        return outs, torch.autograd.grad(outs, [t for p in probs for t in p[:3]], [p[3] for p in probs])

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        eager = f()  # warm-up: compiles, allocates the pinned arena
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs, grads = f()
    warm_keys = grouped.cached_tables()
    alive = []  # distinct live tensors: distinct addresses, so every call makes a new table
    for _ in range(grouped.CACHE_SIZE + 8):
        q, k, v = (torch.randn(1, 1, 16, 5, device="cuda") for _ in range(3))
        alive.append((q, k, v))
        cross_modal_attention_grouped([(q, k, v), (q, k, v)], offset_causal=True)
    assert warm_keys and not warm_keys & grouped.cached_tables()  # the eager tables really were evicted
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(outs, eager[0]))
    assert all(torch.equal(a, b) for a, b in zip(grads, eager[1]))


@pytest.mark.gpu
def test_gpu_torch_compile():
    q, k, v, do, kl = make_inputs(16, 6, 46, 496, 5, torch.bfloat16, 95, "cuda", mask="both")
    f = lambda q, k, v: cross_modal_attention(q, k, v, key_lengths=kl, offset_causal=True)  # noqa: E731
    out, grads = run(torch.compile(f, fullgraph=True), q, k, v, do)
    out_e, grads_e = run(f, q, k, v, do)
    assert torch.equal(out, out_e) and all(torch.equal(a, b) for a, b in zip(grads, grads_e))


def test_grouped_per_problem_dropout():
    """One launch, each problem its own p (p = 0 included): equals separate launches bitwise, and the
    op equals the reference given each problem's keep-mask."""
    pairs, ps = [(46, 71), (13, 7), (71, 46)], [0.3, 0.0, 0.1]
    probs = [make_inputs(2, 2, a, b, 5, torch.float32, 50 + i, mask="both") for i, (a, b) in enumerate(pairs)]
    qs, ks, vs, dos = ([p[i].detach() for p in probs] for i in range(4))
    seed = torch.tensor([123, 2**40 + 9], device=DEV)
    opts = dict(offset_causal=True, scale=0.3)
    os_, lses = ka.attention_fwd_grouped(qs, ks, vs, seed=seed, dropout_p=ps, **opts)
    gq = ka.attention_bwd_grouped(dos, qs, ks, vs, os_, lses, seed=seed, dropout_p=ps, **opts)
    for g, p in enumerate(ps):
        sg = seed + torch.tensor([0, g], device=DEV)
        o, lse = ka.attention_fwd(qs[g], ks[g], vs[g], seed=sg, dropout_p=p, **opts)
        d = ka.attention_bwd(dos[g], qs[g], ks[g], vs[g], o, lse, seed=sg, dropout_p=p, **opts)
        assert torch.equal(o, os_[g]) and torch.equal(lse, lses[g])
        assert all(torch.equal(a, b[g]) for a, b in zip(d, gq))
    outs, keeps = cross_modal_attention_grouped(
        [p[:3] for p in probs], offset_causal=True, dropout_p=ps, return_keep_mask=True, backend="triton"
    )
    assert keeps[1].all() and not keeps[0].all()
    for p, out, keep, pg in zip(probs, outs, keeps, ps):
        want = reference(*p[:3], offset_causal=True, dropout_p=pg, keep_mask=keep)
        assert_rule("O", out, want, want.double(), ATOL[torch.float32])
    with pytest.raises(ValueError, match="dropout_p"):
        cross_modal_attention_grouped([p[:3] for p in probs], dropout_p=[0.1, 0.2], backend="triton")


def test_grouped_torch_compile_fullgraph():
    """The grouped custom op (per-problem dropout) traces whole and matches eager for the same seed."""
    probs = [
        make_inputs(1, 2, a, b, 5, torch.float32, 60 + i, mask="causal")[:3]
        for i, (a, b) in enumerate(((7, 13), (13, 7)))
    ]

    def f(*ts):
        return cross_modal_attention_grouped(
            [ts[:3], ts[3:]], offset_causal=True, dropout_p=[0.2, 0.0], backend="triton"
        )

    flat = [t for p in probs for t in p]
    torch.manual_seed(1)
    eager = f(*flat)
    torch.manual_seed(1)
    compiled = torch.compile(f, fullgraph=True)(*flat)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    sum(o.sum() for o in compiled).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in flat)
