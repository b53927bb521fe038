"""Fused LN0 + q/k/v in-projection: Triton kernels (interpreter on CPU) and op vs the float64 reference.

CPU tier: float64 parity of outputs and every gradient for E in {30, 50, 60, 100}, Tq != Tk both ways,
self-attention and cross-modal problems mixed in one group, strided inputs, missing output gradients,
gradcheck, launch counts, determinism, fp32 tolerance, input errors.
"""

import re

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
        qs, ks, vs, stats, _, _ = kp.in_proj_fwd_grouped(*group([p]))
        for name, ours, ref in zip("qkv", (qs[0], ks[0], vs[0]), reference(*p)):
            assert ours.is_contiguous() and ours.shape == ref.shape
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12, msg=f"{name}, Tk={Tk}")
        x = p[0]
        mean = x.mean(-1).reshape(-1)
        torch.testing.assert_close(stats[: mean.numel(), 0], mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("E", EMBED_DIMS)
def test_forward_grouped_mixed(E):
    problems = mixed_group(E, seed=10 * E, strided=E == 50)
    qs, ks, vs, _, _, _ = kp.in_proj_fwd_grouped(*group(problems))
    for g, p in enumerate(problems):
        for name, ours, ref in zip("qkv", (qs[g], ks[g], vs[g]), reference(*p)):
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12, msg=f"problem {g} {name}")


@pytest.mark.parametrize("which", ["all", "some"])
def test_non_unit_last_stride(which):
    """Inputs whose E axis has stride 2: every one ("all": the kernels read the stride) or some (copied)."""
    problems = mixed_group(50, seed=21)
    odd = []
    for g, p in enumerate(problems):
        if which == "all" or g % 2:
            p = tuple(t if i > 1 or t is None else torch.stack([t, t + 1], -1).flatten(-2)[..., ::2] for i, t in
                      enumerate(p))  # fmt: skip
            assert p[0].stride(2) == 2
        odd.append(p)
    douts = random_douts(odd, seed=9)
    outs, grads = run_op(odd, douts, "triton")
    outs_r, grads_r = run_op(odd, douts, "reference")
    for a, b in zip(outs + grads, outs_r + grads_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


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
    _, _, _, stats, _, _ = kp.in_proj_fwd_grouped(*group(problems))
    douts = random_douts(problems, seed=1, drop=DROPPED)
    d_one = kp.in_proj_bwd_grouped(*zip(*douts), xs, ss, gs, bs, ws, stats)
    d_many = kp.in_proj_bwd_grouped(*zip(*douts), xs, ss, gs, bs, ws, stats, block_m=16, block_n=16, steps=2)
    for a, b in zip(d_one, d_many):
        for ta, tb in zip(a, b):
            if ta is not None:
                torch.testing.assert_close(ta, tb, rtol=0, atol=1e-12)


def test_empty_problems_in_a_group():
    """Tq = 0 and Tk = 0 problems beside a non-empty one: empty outputs, zero parameter gradients."""
    problems = [make_problem(30, Tq, Tk, 2, seed=i) for i, (Tq, Tk) in enumerate(((0, 4), (3, None), (3, 0)))]
    douts = random_douts(problems, seed=1)
    outs, grads = run_op(problems, douts, "triton")
    outs_r, grads_r = run_op(problems, douts, "reference")
    for a, b in zip(outs + grads, outs_r + grads_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


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


# ------------------------------------------------------------------------------------------------
# op: launches, torch.compile, input errors
# ------------------------------------------------------------------------------------------------

KERNELS = [(kp, n) for n in ("encoder_in_proj_fwd_kernel", "encoder_in_proj_bwd_kernel",
                             "encoder_in_proj_bwd_reduce_kernel")]  # fmt: skip


def test_launch_counts_group_of_three():
    """G = 3 (two cross-modal, one self-attention): 1 Triton launch forward, 2 backward, no other kernel."""
    from dmd_fast.bench.launches import count_launches

    problems = mixed_group(30, seed=4)[:3]
    leaves = leaves_of(problems)
    with count_launches(*KERNELS) as fwd:
        outs = encoder_in_projection_grouped(*group(leaves), backend="triton")
    loss_terms = [t for out in outs for t in out]
    douts = [torch.randn_like(t) for t in loss_terms]
    flat = [t for p in leaves for t in p if t is not None]
    with count_launches(*KERNELS) as bwd:
        torch.autograd.grad(loss_terms, flat, douts)
    poison_fills = "aten.fill_.Scalar"  # the poison fixture's
    assert fwd.triton == ["encoder_in_proj_fwd_kernel"] and not fwd.syncs
    assert [op for op in fwd.aten_ops if op != poison_fills] == []
    assert bwd.triton == ["encoder_in_proj_bwd_kernel", "encoder_in_proj_bwd_reduce_kernel"] and not bwd.syncs
    assert [op for op in bwd.aten_ops if op != poison_fills] == []


@pytest.mark.parametrize("E", (30, 60))
def test_return_x_copies_and_residual_gradient_added_in_kernel(E):
    """return_x / return_sources: copies of xs and of the sources written by the forward launch
    (bitwise), and further uses of them (q + 2·x copy, k + 3·source copy) get the reference's gradients
    with those uses' gradients added inside the backward kernel: the launches stay 1 + 2 and no ATen
    kernel adds gradients."""
    from dmd_fast.bench.launches import count_launches

    problems = mixed_group(E, seed=E + 3, strided=E == 60)
    douts = random_douts(problems, seed=E + 1)
    res = {}
    for backend in ("triton", "reference"):
        leaves = leaves_of(problems)
        flat = [t for p in leaves for t in p if t is not None]
        with count_launches(*KERNELS) as c:
            qkv, copies, src_copies = encoder_in_projection_grouped(
                *group(leaves), return_x=True, return_sources=True, backend=backend
            )
            outs = [
                (q + 2.0 * x_res, k if s is None else k + 3.0 * s, v)
                for (q, k, v), x_res, s in zip(qkv, copies, src_copies)
            ]
            pairs = [(o, d) for out, ds in zip(outs, douts) for o, d in zip(out, ds)]
            grads = torch.autograd.grad([o for o, _ in pairs], flat, [d for _, d in pairs], allow_unused=True,
                                        materialize_grads=True)  # fmt: skip
        res[backend] = (copies, grads, c)
        if backend == "triton":
            for x_res, src, p in zip(copies, src_copies, leaves):
                assert torch.equal(x_res, p[0]) and x_res.is_contiguous()
                assert (src is None) == (p[1] is None) and (src is None or torch.equal(src, p[1]))
            assert c.triton == ["encoder_in_proj_fwd_kernel", "encoder_in_proj_bwd_kernel",
                                "encoder_in_proj_bwd_reduce_kernel"]  # fmt: skip
            adds = [op for op in c.aten_ops if op.startswith("aten.add")]
            n_cross = sum(p[1] is not None for p in problems)
            assert len(adds) == len(problems) + n_cross  # the forward's uses; none in the backward
    for a, b in zip(res["triton"][1], res["reference"][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_torch_compile_fullgraph():
    problems = mixed_group(30, seed=8)[:2]
    douts = random_douts(problems, seed=4, drop=((0, 0),))

    def f(*flat):
        xs, ss, gs, bs, ws, b_s = (list(flat[i::6]) for i in range(6))
        return [t for out in encoder_in_projection_grouped(xs, ss, gs, bs, ws, b_s, backend="triton") for t in out]

    compiled = torch.compile(f, fullgraph=True)
    leaves = leaves_of(problems)
    flat = [t for p in leaves for t in p]
    # compile afresh: the on-disk caches key on the graph, not on the op's fake kernel
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        outs = compiled(*flat)
    pairs = [(o, d) for o, d in zip(outs, [d for ds in douts for d in ds]) if d is not None]
    used = [t for t in flat if t is not None]
    grads = torch.autograd.grad([o for o, _ in pairs], used, [d for _, d in pairs], materialize_grads=True)
    outs_r, grads_r = run_op(problems, douts, "reference")
    for a, b in zip([o.detach() for o in outs] + list(grads), outs_r + grads_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def _bad_cases():
    E = 8
    x, s = torch.randn(3, 2, E), torch.randn(4, 2, E)
    g, b, w, wb = torch.ones(E), torch.zeros(E), torch.randn(3 * E, E), torch.zeros(3 * E)
    ok = dict(xs=[x], sources=[s], ln_w=[g], ln_b=[b], in_w=[w], in_b=[wb])

    def case(msg, exc=ValueError, **over):
        return ({**ok, **over}, exc, msg)

    return [
        case("xs: expected a non-empty list", TypeError, xs=x),
        case("xs: expected a non-empty list", xs=[]),
        case("sources: expected 1 entries", sources=[s, s]),
        case("ln_w: expected a list of 1 entries", TypeError, ln_w=g),
        case("xs[0]: expected a (T, B, E) tensor", xs=[torch.randn(3, E)]),
        case("xs[0]: expected a floating dtype", TypeError, xs=[x.long()]),
        case(
            "xs[1]: expected shape (T, B, E=8)",
            xs=[x, torch.randn(3, 2, 9)],
            sources=[s, None],
            ln_w=[g, g],
            ln_b=[b, b],
            in_w=[w, w],
            in_b=[wb, wb],
        ),  # fmt: skip
        case("sources[0]: expected shape (Tk, B=2, E=8)", sources=[torch.randn(4, 3, E)]),
        case("sources[0]: expected shape (Tk, B=2, E=8)", sources=[torch.randn(4, 2, E + 1)]),
        case("sources[0]: expected a torch.Tensor", TypeError, sources=[[1.0]]),
        case("sources[0]: dtype torch.float64 differs", TypeError, sources=[s.double()]),
        case("sources[0]: on device meta, expected xs[0]'s device cpu", sources=[s.to("meta")]),
        case("ln_w[0]: expected shape (8,)", ln_w=[torch.ones(E + 1)]),
        case("ln_b[0]: dtype torch.float64 differs", TypeError, ln_b=[b.double()]),
        case("in_w[0]: expected shape (3E, E) = (24, 8)", in_w=[torch.randn(E, 3 * E)]),
        case("in_b[0]: expected shape (3E,) = (24,)", in_b=[torch.zeros(E)]),
        case("eps", eps=0.0),
        case("eps", TypeError, eps="1e-5"),
        case(
            "xs[0]: the Triton path takes E <= 128",
            xs=[torch.randn(2, 1, 129)],
            sources=[None],
            ln_w=[torch.ones(129)],
            ln_b=[torch.zeros(129)],
            in_w=[torch.randn(387, 129)],
            in_b=[torch.zeros(387)],
        ),  # fmt: skip
        case("backend", backend="cuda"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    kw, exc, msg = _bad_cases()[case]
    backend = kw.pop("backend", "triton")
    args = [kw.pop(n) for n in ("xs", "sources", "ln_w", "ln_b", "in_w", "in_b")]
    with pytest.raises(exc, match=re.escape(msg)):
        encoder_in_projection_grouped(*args, backend=backend, **kw)


@pytest.mark.skipif(DEV != "cpu", reason="the interpreter's 16-bit refusal")
def test_interpreter_refuses_bf16_and_reference_runs_it():
    p = make_problem(8, 3, 4, 2, seed=0, dtype=torch.bfloat16)
    msg = "xs[0]: dtype torch.bfloat16 cannot run on the Triton CPU interpreter"
    with pytest.raises(TypeError, match=re.escape(msg)):
        encoder_in_projection_grouped(*group([p]), backend="triton")
    q, k, v = encoder_in_projection_grouped(*group([p]), backend="reference")[0]
    assert q.dtype == torch.bfloat16 and k.shape == (4, 2, 8)


# ------------------------------------------------------------------------------------------------
# GPU tier: DMD shapes (B=16), fp32 / bf16 / fp16
# ------------------------------------------------------------------------------------------------

GPU_ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}  # × the tensor's max |exact|
# a layer group of DMD's widths: cross-modal pairs (Tq, Tk) and self-attention encoders (Tq, None)
GPU_GROUP = ((50, 375), (375, 500), (500, 50), (50, None), (500, None), (375, 375))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("E", (30, 50, 60, 100, 128))
def test_gpu_parity(dtype, E):
    """Kernel error vs the fp64 reference <= 2 × the same-dtype reference's error + GPU_ATOL · max|exact|."""
    problems = [make_problem(E, Tq, Tk, 16, seed=E + i, device="cuda") for i, (Tq, Tk) in enumerate(GPU_GROUP)]
    douts = random_douts(problems, seed=E, drop=((0, 0), (3, 1)))
    exact = run_op(problems, douts, "reference")
    ours = run_op(problems, douts, "triton", dtype=dtype)
    same = run_op(problems, douts, "reference", dtype=dtype)
    for kind in (0, 1):
        for i, (a, b, x) in enumerate(zip(ours[kind], same[kind], exact[kind])):
            assert a.dtype == dtype and torch.isfinite(a).all()
            err, base = (a.double() - x).abs().max().item(), (b.double() - x).abs().max().item()
            tol = 2 * base + GPU_ATOL[dtype] * max(1.0, x.abs().max().item())
            assert err <= tol, f"{'grad' if kind else 'output'} {i}: {err:.3g} > {tol:.3g} (torch {base:.3g})"


@pytest.mark.parametrize("E", (30, 100))
def test_separate_key_and_value_sources(E):
    """A source pair (s_k, s_v), upstream's separately embedded (dropped-out) key and value streams: k from
    LN0(s_k), v from LN0(s_v); outputs and every gradient, beside shared-source and self problems."""
    problems = mixed_group(E, seed=4 * E)
    x, s, *rest = problems[0]
    s_v = s.flip(0) * 0.7 + 0.1
    leaves = [[t.detach().clone().requires_grad_() for t in (x, s, s_v, *rest)]]
    leaves += [[None if t is None else t.detach().clone().requires_grad_() for t in p] for p in problems[1:]]

    def run(backend):
        ps = [(lv[0], (lv[1], lv[2]), *lv[3:]) for lv in leaves[:1]] + [tuple(lv) for lv in leaves[1:]]
        outs = encoder_in_projection_grouped(*group(ps), backend=backend)
        flat_outs = [t for out in outs for t in out]
        gen = torch.Generator().manual_seed(E)
        douts = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in flat_outs]
        flat = [t for lv in leaves for t in lv if t is not None]
        return flat_outs, torch.autograd.grad(flat_outs, flat, douts, allow_unused=True, materialize_grads=True)

    outs, grads = run("triton")
    outs_r, grads_r = run("reference")
    for a, b in zip(outs, outs_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(grads, grads_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    k_ref = reference(x, s_v, *rest)[1]  # a pair is not the same as one source
    assert not torch.allclose(outs[1], k_ref)
