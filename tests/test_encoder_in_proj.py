"""Fused LN0 + q/k/v in-projection: Triton kernels (interpreter on CPU) and op vs the float64 reference.

CPU tier: float64 parity of outputs and every gradient for E in {30, 50, 60, 100}, Tq != Tk both ways,
self-attention and cross-modal problems mixed in one group, strided inputs, missing output gradients,
gradcheck, launch counts, determinism, fp32 tolerance, input errors.
"""

import pytest
import torch

from dmd_fast.kernels import encoder_in_proj as kp
from dmd_fast.ops.backend import last_backend
from dmd_fast.ops.encoder_in_proj import OP, encoder_in_projection_grouped
from dmd_fast.reference.encoder_in_proj import encoder_in_projection as reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy >= 1.25 in Triton's interpreter
EMBED_DIMS = (30, 50, 60, 100)
PARAM_NAMES = ("x", "source", "ln_w", "ln_b", "in_w", "in_b")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every kernel output starts as NaN: unwritten elements show up."""
    empty = kp._empty
    monkeypatch.setattr(kp, "_empty", lambda shape, dtype, device: empty(shape, dtype, device).fill_(float("nan")))


def make_problem(E, Tq, Tk, B, seed, dtype=torch.float64, device=DEV, strided=False):
    """Fresh random (x, source or None, ln_w, ln_b, in_w, in_b); Tk None → self-attention.
    ``strided``: x and the source are (T, B, E) views of (B, T, E) tensors."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731

    def seq(T):
        t = rnd(B, T, E).transpose(0, 1) if strided else rnd(T, B, E)
        return t * 2 + 0.5

    x = seq(Tq)
    s = None if Tk is None else seq(Tk)
    ts = (x, s, 1 + 0.3 * rnd(E), 0.3 * rnd(E), rnd(3 * E, E) / E**0.5, 0.3 * rnd(3 * E))
    return tuple(None if t is None else t.to(device=device, dtype=dtype) for t in ts)


def group(problems):
    """Lists (xs, sources, ln_ws, ln_bs, in_ws, in_bs) of a group of problems."""
    return [list(col) for col in zip(*problems)]


# (Tq, Tk) per problem: cross with Tq < Tk and Tq > Tk, and self-attention (Tk None)
MIXED = ((5, 9, 3), (7, None, 2), (11, 4, 3), (3, None, 1))


def mixed_group(E, seed, **kw):
    return [make_problem(E, Tq, Tk, B, seed + i, **kw) for i, (Tq, Tk, B) in enumerate(MIXED)]


# ------------------------------------------------------------------------------------------------
# kernels: forward
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("E", EMBED_DIMS)
def test_forward_single_problem(E):
    for Tk in (None, 9):
        p = make_problem(E, 6, Tk, 2, seed=E)
        qs, ks, vs, stats = kp.in_proj_fwd_grouped(*group([p]))
        for name, ours, ref in zip("qkv", (qs[0], ks[0], vs[0]), reference(*p)):
            assert ours.is_contiguous() and ours.shape == ref.shape
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12, msg=f"{name}, Tk={Tk}")
        x = p[0]
        mean = x.mean(-1).reshape(-1)
        torch.testing.assert_close(stats[: mean.numel(), 0], mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("E", EMBED_DIMS)
def test_forward_grouped_mixed(E):
    problems = mixed_group(E, seed=10 * E, strided=E == 50)
    qs, ks, vs, _ = kp.in_proj_fwd_grouped(*group(problems))
    for g, p in enumerate(problems):
        for name, ours, ref in zip("qkv", (qs[g], ks[g], vs[g]), reference(*p)):
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12, msg=f"problem {g} {name}")


# ------------------------------------------------------------------------------------------------
# op: gradients (the kernels' backward through autograd)
# ------------------------------------------------------------------------------------------------


def leaves_of(problems, dtype=None):
    """Copies of the problems' tensors as fresh leaves requiring grad (optionally cast)."""
    return [tuple(None if t is None else t.detach().to(dtype or t.dtype).requires_grad_() for t in p) for p in problems]


def run_op(problems, douts, backend, dtype=None):
    """Outputs and the gradients of every input tensor for upstream gradients ``douts`` (G × (dq, dk, dv),
    None entries: that output takes no gradient). Unreached inputs get zeros."""
    leaves = leaves_of(problems, dtype)
    outs = encoder_in_projection_grouped(*group(leaves), backend=backend)
    pairs = [(o, d) for out, ds in zip(outs, douts) for o, d in zip(out, ds) if d is not None]
    flat = [t for p in leaves for t in p if t is not None]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], flat, [d.to(o.dtype) for o, d in pairs], allow_unused=True, materialize_grads=True
    )
    return [t.detach() for out in outs for t in out], list(grads)


def random_douts(problems, seed, drop=()):
    """Upstream (dq, dk, dv) per problem, fp64; (g, j) in ``drop``: None."""
    g_ = torch.Generator().manual_seed(seed)
    out = []
    for g, p in enumerate(problems):
        shapes = (p[0].shape, (p[0] if p[1] is None else p[1]).shape)
        ds = [torch.randn(shapes[min(j, 1)], generator=g_, dtype=torch.float64).to(p[0].device) for j in range(3)]
        out.append(tuple(None if (g, j) in drop else d for j, d in enumerate(ds)))
    return out


# (problem, output) pairs without an upstream gradient: q of a cross problem, k of a self one, k and v of another
DROPPED = ((0, 0), (1, 1), (2, 1), (2, 2))


@pytest.mark.parametrize("E", EMBED_DIMS)
@pytest.mark.parametrize("drop", [(), DROPPED], ids=["all", "some-none"])
def test_op_gradients_float64(E, drop):
    problems = mixed_group(E, seed=E + 7, strided=E == 60)
    douts = random_douts(problems, seed=E, drop=drop)
    outs, grads = run_op(problems, douts, "triton")
    assert last_backend(OP) == "triton"
    outs_r, grads_r = run_op(problems, douts, "reference")
    for i, (a, b) in enumerate(zip(outs, outs_r)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"output {i}")
    names = [f"p{g}.{n}" for g, p in enumerate(problems) for n, t in zip(PARAM_NAMES, p) if t is not None]
    for name, a, b in zip(names, grads, grads_r):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("E", (30, 100))
def test_backward_multi_block_programs(E):
    """Row programs that own several row blocks (steps > 1) and a ragged last block sum like one block."""
    problems = mixed_group(E, seed=3 * E)
    xs, ss, gs, bs, ws, _ = group(problems)
    _, _, _, stats = kp.in_proj_fwd_grouped(*group(problems))
    douts = random_douts(problems, seed=1, drop=DROPPED)
    d_one = kp.in_proj_bwd_grouped(*zip(*douts), xs, ss, gs, bs, ws, stats)
    d_many = kp.in_proj_bwd_grouped(*zip(*douts), xs, ss, gs, bs, ws, stats, block_m=16, block_n=16, steps=2)
    for a, b in zip(d_one, d_many):
        for ta, tb in zip(a, b):
            if ta is not None:
                torch.testing.assert_close(ta, tb, rtol=0, atol=1e-12)


def test_gradcheck():
    problems = [make_problem(6, 3, 4, 2, seed=1), make_problem(6, 2, None, 1, seed=2)]
    leaves = leaves_of(problems)
    flat = [t for p in leaves for t in p if t is not None]

    def f(*flat):
        it = iter(flat)
        ps = [tuple(None if t is None else next(it) for t in p) for p in leaves]
        return tuple(t for out in encoder_in_projection_grouped(*group(ps), backend="triton") for t in out)

    assert torch.autograd.gradcheck(f, flat, fast_mode=True)


def test_deterministic():
    problems = mixed_group(50, seed=5)
    douts = random_douts(problems, seed=2)
    a, b = run_op(problems, douts, "triton"), run_op(problems, douts, "triton")
    for ta, tb in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(ta, tb)


def test_float32_within_twice_torch_error():
    """fp32 kernel error vs the fp64 reference <= 2 × the fp32 reference's error + a small atol."""
    problems = mixed_group(60, seed=11)
    douts = random_douts(problems, seed=3, drop=DROPPED)
    exact = run_op(problems, douts, "reference")
    ours = run_op(problems, douts, "triton", dtype=torch.float32)
    same = run_op(problems, douts, "reference", dtype=torch.float32)
    for kind in (0, 1):
        for i, (a, b, x) in enumerate(zip(ours[kind], same[kind], exact[kind])):
            assert a.dtype == torch.float32
            err, base = (a.double() - x).abs().max().item(), (b.double() - x).abs().max().item()
            assert err <= 2 * base + 2e-6, f"{'grad' if kind else 'output'} {i}: {err:.3g} > 2 x {base:.3g}"
