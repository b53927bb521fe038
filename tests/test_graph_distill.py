"""GD-unit op: fused Triton kernel (interpreter on CPU) vs the float64 reference, module, upstream fixture."""

import itertools
import math

import pytest
import torch

from dmd_fast.nn.graph_distill import GDUnit, hetero_gd, homo_gd, prior_from_logits
from dmd_fast.ops.graph_distill import graph_distill
from dmd_fast.reference.graph_distill import edge_names
from dmd_fast.train.edges import aggregate_edges, edge_readout, format_edge_table

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU tier's small cases also run compiled on a GPU
PARAMS = ("logits", "reprs", "w_logit", "b_logit", "w_repr", "b_repr", "w_edge", "b_edge")
TERMS = ("loss_logit", "loss_repr", "loss_reg")


def make_inputs(M, B, C, R, G, *, seed, scope="joint", prior="softmax", dtype=torch.float64, device=DEV):
    """Fresh random GD inputs (dict of leaf tensors requiring grad) and a prior (E,) (fp64 or fp32)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    t = dict(
        logits=rnd(M, B, C),
        reprs=rnd(M, B, R),
        w_logit=rnd(G, C) * 0.5,
        b_logit=rnd(G) * 0.5,
        w_repr=rnd(G, R) / math.sqrt(R),
        b_repr=rnd(G) * 0.5,
        w_edge=rnd(1, 4 * G) * 4 / math.sqrt(G),
        b_edge=rnd(1),
    )
    E = M * (M - 1)
    if prior == "softmax":
        p = torch.softmax(rnd(E), 0) if scope == "joint" else torch.softmax(rnd(M, M - 1), 1).reshape(-1)
    elif prior == "dmd":
        p = prior_from_logits([0, 0, 1, 0, 1, 0]).double()
    else:  # arbitrary constants, not a distribution (check_prior=False)
        p = rnd(E).abs() * 0.3
    t = {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in t.items()}
    return t, p.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)


def run(t, prior, backend, **kw):
    return graph_distill(*(t[k] for k in PARAMS), prior, backend=backend, **kw)


def grads_of(res, t, wts, g_edges=None, g_scores=None):
    """Gradients of Σ wts·(logit, repr, reg[, total]) (+ edge/score terms)."""
    total = sum(w * getattr(res, n) for w, n in zip(wts, (*TERMS, "loss_total")))
    if g_edges is not None:
        total = total + (res.edges * g_edges).sum() + (res.edge_scores * g_scores).sum()
    gs = torch.autograd.grad(total, [t[k] for k in PARAMS], allow_unused=True)
    return [torch.zeros_like(t[k]) if g is None else g for k, g in zip(PARAMS, gs)]


def detached_copy(t):
    return {k: v.detach().clone().requires_grad_() for k, v in t.items()}


def assert_parity(t, prior, *, rtol=1e-9, atol=1e-11, edge_grads=False, seed=0, ref_t=None, **kw):
    """Loss terms, their total, edges, scores and the gradients of a random mix of the terms and the
    total, triton vs reference. total_weights: random with one zero unless given."""
    gen = torch.Generator().manual_seed(seed + 7)
    wts = torch.randn(4, generator=gen, dtype=torch.float64).tolist()
    if "total_weights" not in kw:
        tw = [round(x * 8) / 8 for x in torch.randn(3, generator=gen).tolist()]  # exact in fp32 (kernel scalars)
        tw[seed % 3] = 0.0
        kw["total_weights"] = tw
    ref_t = detached_copy(t) if ref_t is None else ref_t
    ours = run(t, prior, "triton", **kw)
    ref = run(ref_t, prior, "reference", **kw)
    for name in (*TERMS, "loss_total", "edges", "edge_scores", "edge_means"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    E, B = ref.edges.shape
    g_e = g_s = None
    if edge_grads:
        g_e = torch.randn(E, B, generator=gen, dtype=torch.float64).to(ref.edges)
        g_s = torch.randn(B, E, generator=gen, dtype=torch.float64).to(ref.edges)
    g_ref = grads_of(ref, ref_t, wts, g_e, g_s)
    scale = max(1.0, *(g.abs().max().item() for g in g_ref))  # global: bias grads are ~0 (shift invariance)
    for name, a, b in zip(PARAMS, grads_of(ours, t, wts, g_e, g_s), g_ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"grad {name}: {m}")


# Covering set over B {1, 5, 16} x M {2, 3, 5} x C {1, 2} x scope x logit metric x repr metric x prior.
def _cases():
    cases = []
    scopes, lms, rms = ("joint", "target"), ("l1", "l2"), ("l1", "l2", "cosine")
    for n, (M, B) in enumerate(itertools.product((2, 3, 5), (1, 5, 16))):
        for r in range(2):
            k = 2 * n + r
            scope = scopes[k % 2]
            prior = ("softmax", "const", "dmd")[k % 3] if (M == 3 and scope == "joint") else ("softmax", "const")[k % 2]
            cases.append(
                (M, B, 1 + (n + r) % 2, (5, 37, 70)[k % 3], (4, 16)[r], scope, lms[(k // 2) % 2], rms[k % 3], prior)
            )
    return cases


@pytest.mark.parametrize("M,B,C,R,G,scope,lm,rm,prior", _cases())
def test_parity_fp64(M, B, C, R, G, scope, lm, rm, prior):
    t, p = make_inputs(M, B, C, R, G, seed=M * 100 + B, scope=scope, prior=prior)
    assert_parity(
        t,
        p,
        seed=B,
        softmax_scope=scope,
        logit_metric=lm,
        repr_metric=rm,
        check_prior=prior != "const",
        alpha=0.125 if B % 2 else 0.5,
        w_losses=(1.0, 10.0) if M != 5 else (0.75, 2.5),
        reg=10.0,
    )


@pytest.mark.parametrize(
    "M,B,C,R,G,scope,rm",
    [
        (3, 70, 2, 100, 32, "joint", "cosine"),  # two batch chunks, two feature chunks
        (8, 9, 3, 20, 128, "target", "l1"),  # largest graph and gd size
        (4, 3, 1, 130, 5, "joint", "l2"),
    ],
)
def test_parity_fp64_large(M, B, C, R, G, scope, rm):
    t, p = make_inputs(M, B, C, R, G, seed=M + B + R, scope=scope)
    assert_parity(t, p, softmax_scope=scope, repr_metric=rm)


@pytest.mark.parametrize("scope,rm", [("joint", "cosine"), ("target", "l1")])
def test_gradients_through_edges_and_scores(scope, rm):
    t, p = make_inputs(3, 5, 2, 9, 6, seed=3, scope=scope)
    assert_parity(t, p, edge_grads=True, softmax_scope=scope, repr_metric=rm)


@pytest.mark.parametrize(
    "tw,rm", [((1.0, 0.0, 1.0), "l1"), ((1.0, 1.0, 1.0), "cosine"), ((0.0, 2.5, -0.5), "l2"), ((0.0, 0.0, 0.0), "l1")]
)
def test_total_alone(tw, rm):
    """loss_total = Σ tw·terms (weight-0 terms left out, bitwise as upstream's sum) and its gradient,
    which the backward takes from the kernel's stored total row."""
    t, p = make_inputs(3, 6, 1, 11, 8, seed=21)
    ref_t = detached_copy(t)
    ours, ref = (
        run(t, p, "triton", total_weights=tw, repr_metric=rm),
        run(ref_t, p, "reference", total_weights=tw, repr_metric=rm),
    )
    parts = [w * getattr(ref, n) for w, n in zip(tw, TERMS) if w != 0] or [ref.loss_logit * 0.0]
    assert torch.equal(ref.loss_total, sum(parts[1:], parts[0]))
    torch.testing.assert_close(ours.loss_total, ref.loss_total, rtol=1e-12, atol=0)
    a = torch.autograd.grad(ours.loss_total, [t[k] for k in PARAMS])
    b = torch.autograd.grad(ref.loss_total, [ref_t[k] for k in PARAMS], allow_unused=True)
    for name, x, y in zip(PARAMS, a, b):
        torch.testing.assert_close(x, torch.zeros_like(x) if y is None else y, rtol=1e-9, atol=1e-11, msg=name)
    with pytest.raises(ValueError, match=r"total_weights: expected 3 weights"):
        run(t, p, "triton", total_weights=(1.0, 1.0))


def test_edges_only_gradient_and_no_edge_vjp_when_unused(monkeypatch):
    import dmd_fast.ops.graph_distill as ops

    calls = []
    vjp = ops._edge_vjp
    monkeypatch.setattr(ops, "_edge_vjp", lambda *a: calls.append(1) or vjp(*a))
    t, p = make_inputs(3, 4, 2, 7, 5, seed=8)
    torch.autograd.grad(run(t, p, "triton").loss_logit, [t[k] for k in PARAMS])
    assert calls == []  # the trivial backward only: unused edges/scores give no gradient work
    g = torch.randn(6, 4, dtype=torch.float64, device=DEV)
    ref_t = detached_copy(t)
    ours = torch.autograd.grad((run(t, p, "triton").edges * g).sum(), [t[k] for k in PARAMS], allow_unused=True)
    ref = torch.autograd.grad(
        (run(ref_t, p, "reference").edges * g).sum(), [ref_t[k] for k in PARAMS], allow_unused=True
    )
    assert calls == [1]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("scope,lm,rm", [("joint", "l1", "cosine"), ("target", "l2", "l2")])
def test_gradcheck_fp64(scope, lm, rm):
    """loss_reg, edges and scores over every input; loss_logit / loss_repr over the parameters only,
    since finite differences of logits/reprs also move the detached teacher side."""
    t, p = make_inputs(3, 3, 2, 4, 3, seed=11, scope=scope)
    kw = dict(backend="triton", softmax_scope=scope, logit_metric=lm, repr_metric=rm)

    def f_all(*args):
        r = graph_distill(*args, p, **kw)
        return r.loss_reg, r.edges, r.edge_scores

    def f_params(*params):
        r = graph_distill(t["logits"].detach(), t["reprs"].detach(), *params, p, **kw)
        return r.loss_logit, r.loss_repr

    assert torch.autograd.gradcheck(f_all, tuple(t[k] for k in PARAMS), fast_mode=True)
    assert torch.autograd.gradcheck(f_params, tuple(t[k] for k in PARAMS[2:]), fast_mode=True)


def test_fp32_and_strided_inputs():
    t64, p = make_inputs(3, 6, 1, 30, 16, seed=5)
    t32 = {k: v.detach().float().requires_grad_() for k, v in t64.items()}
    # (B, M, R) storage viewed as (M, B, R): a strided input, no copy
    t32["reprs"] = t64["reprs"].detach().float().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not t32["reprs"].is_contiguous()
    ours = run(t32, p.float(), "triton", repr_metric="cosine")
    ref_t = detached_copy(t64)
    ref = run(ref_t, p, "reference", repr_metric="cosine")
    for name in (*TERMS, "edges"):
        assert getattr(ours, name).dtype == torch.float32
        torch.testing.assert_close(getattr(ours, name).double(), getattr(ref, name), rtol=2e-5, atol=1e-6)
    wts = [1.0, 0.5, 2.0]
    g_ref = grads_of(ref, ref_t, wts)
    scale = max(1.0, *(g.abs().max().item() for g in g_ref))
    for name, a, b in zip(PARAMS, grads_of(ours, t32, wts), g_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"grad {name}: {m}")


def test_deterministic_bitwise():
    t, p = make_inputs(3, 70, 2, 100, 32, seed=9, dtype=torch.float32)
    outs = []
    for _ in range(2):
        r = run(t, p, "triton", repr_metric="cosine")
        outs.append([r.loss_logit, r.loss_repr, r.loss_reg, r.edges, r.edge_scores, *grads_of(r, t, [0.3, 1.0, -2.0])])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_no_grad_matches_grad_path():
    t, p = make_inputs(3, 5, 1, 12, 8, seed=2)
    with torch.no_grad():
        a = run(t, p, "triton")
    b = run(t, p, "triton")
    assert a.loss_logit.grad_fn is None
    for name in (*TERMS, "edges", "edge_scores"):
        assert torch.equal(getattr(a, name), getattr(b, name).detach())


def test_torch_compile_fullgraph():
    t, p = make_inputs(3, 4, 1, 8, 8, seed=4, dtype=torch.float32)

    def f(*args):
        r = graph_distill(*args, p, backend="triton", repr_metric="cosine")
        return r.loss_logit + r.loss_repr + r.loss_reg, r.edges

    loss_c, edges_c = torch.compile(f, fullgraph=True)(*(t[k] for k in PARAMS))
    g_c = torch.autograd.grad(loss_c, [t[k] for k in PARAMS])
    loss_e, edges_e = f(*(t[k] for k in PARAMS))
    g_e = torch.autograd.grad(loss_e, [t[k] for k in PARAMS])
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(edges_c, edges_e)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


def _bad(**changes):
    t, p = make_inputs(3, 4, 1, 6, 4, seed=1, dtype=torch.float32)
    t = {k: v.detach() for k, v in t.items()}
    kw = {}
    for k, v in changes.items():
        if k == "prior":
            p = v(p)
        elif k in t:
            t[k] = v(t[k])
        else:
            kw[k] = v
    return t, p, kw


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(reprs=lambda x: x[:2]), r"reprs: expected \(M, B\) = \(3, 4\)"),
        (dict(reprs=lambda x: x[:, :3]), r"reprs: expected \(M, B\)"),
        (dict(w_repr=lambda w: w[:, :5]), r"w_repr: expected shape \(4, 6\), got \(4, 5\)"),
        (dict(b_repr=lambda w: w[:3]), r"b_repr: expected shape \(4,\), got \(3,\)"),
        (dict(w_edge=lambda w: w[:, :8]), r"w_edge: expected shape \(1, 16\), got \(1, 8\)"),
        (dict(prior=lambda q: q[:5]), r"prior: expected shape \(6,\), got \(5,\)"),
        (dict(prior=lambda q: q * 2), r"prior: expected to sum to 1"),
        (dict(softmax_scope="target"), r"prior: expected each target node"),
        (
            dict(logits=lambda x: x.index_fill(1, torch.tensor([2], device=DEV), float("nan"))),
            r"logits: expected finite",
        ),
        (dict(reprs=lambda x: x.index_fill(2, torch.tensor([0], device=DEV), float("inf"))), r"reprs: expected finite"),
        (dict(repr_metric="kl"), r"repr_metric: expected one of"),
        (dict(logit_metric="cosine"), r"logit_metric: expected one of"),
        (dict(softmax_scope="node"), r"softmax_scope: expected one of"),
        (dict(logits=lambda x: x[:1], reprs=lambda x: x[:1], prior=lambda q: q[:0]), r"logits: expected 2\.\.8"),
        (dict(reprs=lambda x: x.new_zeros(3, 4, 1025), w_repr=lambda w: w.new_zeros(4, 1025)), r"R <= 1024"),
        (dict(logits=lambda x: x.long()), r"logits: expected a floating dtype"),
        (dict(backend="cuda"), r"backend: expected one of"),
    ],
)
def test_bad_inputs_raise(changes, match):
    t, p, kw = _bad(**changes)
    with pytest.raises(ValueError if "dtype" not in match else TypeError, match=match):
        graph_distill(*(t[k] for k in PARAMS), p, **kw)


def test_checks_can_be_skipped():
    t, p, _ = _bad(prior=lambda q: q * 2, logits=lambda x: x.index_fill(1, torch.tensor([2], device=DEV), float("nan")))
    r = graph_distill(*(t[k] for k in PARAMS), p, backend="triton", check_prior=False, check_finite=False)
    assert torch.isnan(r.loss_logit)


# ---- module and upstream fixture ----

GD_KINDS = [("homo", homo_gd, 30, TERMS[::2]), ("hetero", hetero_gd, 60, TERMS)]


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("kind,factory,hidden,kept", GD_KINDS)
def test_gd_unit_upstream_fixture(upstream_fixture, backend, kind, factory, hidden, kept):
    fx = upstream_fixture
    io = {k: v.to(DEV) for k, v in fx["gd_io"].items()}
    losses = {k: v.to(DEV) for k, v in fx["losses"].items()}
    unit = factory(hidden, backend=backend).to(DEV)
    unit.load_state_dict(fx[f"gd_{kind}_state_dict"], strict=True)
    torch.testing.assert_close(unit.gd_prior.cpu(), torch.tensor(fx["config"][f"gd_prior_{kind}"], dtype=torch.float32))
    res = unit(io[f"logits_{kind}"], io[f"reprs_{kind}"])
    for name in TERMS:
        torch.testing.assert_close(getattr(res, name), losses[f"{name}_{kind}"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(res.edges, io[f"edges_{kind}"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(res.edge_scores.sum(0)[:, None], io[f"edges_origin_{kind}"], rtol=1e-5, atol=1e-5)
    # the GD parameters get gradient only from 0.05 * (kept terms) of the whole DMD loss
    (0.05 * sum(getattr(res, n) for n in kept)).backward()
    for name, prm in unit.named_parameters():
        ref = fx["grads"][f"gd_{kind}.{name}"].to(DEV)
        torch.testing.assert_close(
            prm.grad, ref, rtol=1e-4, atol=1e-6 * max(1.0, ref.abs().max().item()), msg=lambda m: f"{kind} {name}: {m}"
        )
    torch.testing.assert_close(unit.last_mean_edges, io[f"edges_{kind}"].mean(1))
    assert unit.last_mean_edges.grad_fn is None


def test_gd_unit_layout_and_errors():
    unit = homo_gd(30)
    assert list(unit.state_dict()) == [
        "W_logit.weight",
        "W_logit.bias",
        "W_repr.weight",
        "W_repr.bias",
        "W_edge.weight",
        "W_edge.bias",
    ]
    assert unit.edge_names == ["V→L", "A→L", "L→V", "A→V", "L→A", "V→A"] == edge_names(3)
    assert unit.repr_metric == "l1" and hetero_gd(60).repr_metric == "cosine"
    assert sum(p.numel() for p in unit.parameters()) == 64 * 1 + 64 + 64 * 30 + 64 + 256 + 1
    with pytest.raises(ValueError, match=r"to_idx/from_idx: expected both to be range\(M\)"):
        GDUnit(1, 30, 64, [0, 1, 2], [1, 2], [1 / 6] * 6, 10, [1, 10], "l1")
    with pytest.raises(ValueError, match=r"gd_prior: expected to sum to 1"):
        GDUnit(1, 30, 64, range(3), range(3), [0.5] * 6, 10, [1, 10], "l1")
    with pytest.raises(ValueError, match=r"gd_prior: expected 6 values"):
        GDUnit(1, 30, 64, range(3), range(3), [0.5, 0.5], 10, [1, 10], "l1")
    with pytest.raises(ValueError, match=r"logits: expected shape \(3, B, C\)"):
        unit(torch.randn(2, 4, 1), torch.randn(2, 4, 30))  # checked before any kernel runs


def test_edge_readout_and_table():
    unit = hetero_gd(8, backend="triton").to(DEV)
    t, _ = make_inputs(3, 5, 1, 8, 32, seed=6, dtype=torch.float32)
    unit(t["logits"].detach(), t["reprs"].detach())
    one = edge_readout(unit)
    assert list(one) == ["V→L", "A→L", "L→V", "A→V", "L→A", "V→A"]
    assert abs(sum(one.values()) - 1.0) < 1e-5
    runs = [{n: v + 0.01 * k for n, v in one.items()} for k in range(5)]
    agg = aggregate_edges(runs)
    for n, (mean, std) in agg.items():
        assert mean == pytest.approx(one[n] + 0.02) and std == pytest.approx(0.01 * math.sqrt(2.5))
    table = format_edge_table({"Homo": agg, "Hetero": agg})
    lines = table.splitlines()
    assert lines[0] == "| Edge | Homo | Hetero |" and len(lines) == 8 and lines[2].startswith("| V→L | ")
    assert math.isnan(aggregate_edges(runs[:1])["V→L"][1])
    with pytest.raises(ValueError, match=r"runs\[1\]: expected edges"):
        aggregate_edges([one, {"V→L": 0.1}])


# ---- GPU tier ----


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 16, 64])
@pytest.mark.parametrize(
    "M,scope,rm,R,G", [(2, "target", "l1", 30, 64), (3, "joint", "cosine", 60, 32), (5, "target", "cosine", 30, 64)]
)
def test_gpu_parity(M, scope, rm, R, G, B, dtype):
    t, p = make_inputs(M, B, 1, R, G, seed=B + M, scope=scope, dtype=dtype, device="cuda")
    ref_t = {k: v.detach().double().requires_grad_() for k, v in t.items()}  # the same rounded inputs
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    ours = run(t, p, "triton", softmax_scope=scope, repr_metric=rm)
    ref = run(ref_t, p.double(), "reference", softmax_scope=scope, repr_metric=rm)
    for name in (*TERMS, "edges"):
        assert getattr(ours, name).dtype == dtype
        torch.testing.assert_close(getattr(ours, name).double(), getattr(ref, name), **tol)
    wts = [1.0, 0.7, 1.3]
    g_ref = grads_of(ref, ref_t, wts)
    scale = max(1.0, *(g.abs().max().item() for g in g_ref))  # bias grads are ~0 (shift invariance): global atol
    for name, a, b in zip(PARAMS, grads_of(ours, t, wts), g_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(
            a.double(), b, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"grad {name}: {m}"
        )


@pytest.mark.gpu
def test_gpu_fixture_and_determinism(upstream_fixture):
    io = upstream_fixture["gd_io"]
    unit = hetero_gd(60, backend="triton").cuda()
    unit.load_state_dict(upstream_fixture["gd_hetero_state_dict"], strict=True)
    res = [unit(io["logits_hetero"].cuda(), io["reprs_hetero"].cuda()) for _ in range(2)]
    torch.testing.assert_close(res[0].edges.cpu(), io["edges_hetero"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        res[0].loss_repr.cpu(), upstream_fixture["losses"]["loss_repr_hetero"], rtol=1e-5, atol=1e-6
    )
    assert torch.equal(res[0].edges, res[1].edges) and torch.equal(res[0].loss_reg, res[1].loss_reg)


@pytest.mark.parametrize("make", [homo_gd, hetero_gd])
def test_launch_budget_fwd_bwd(make):
    """GDUnit forward + backward of loss_total: one Triton launch, plus autograd's seed gradient and
    the backward's scale of the stored total row: 3 device kernels (issue 4: ≤ 3), no host sync.
    (CPU proxy of the GPU profiler count that the benchmark records.)"""
    import dmd_fast.kernels.graph_distill as kernels
    from dmd_fast.bench.launches import count_launches

    torch.manual_seed(0)
    unit = make(50, backend="triton").to(DEV)
    unit.check_finite = False  # DMDSystem's setting: no per-step host sync
    x = torch.randn(3, 16, 1, device=DEV, requires_grad=True)
    r = torch.randn(3, 16, unit.W_repr.in_features, device=DEV, requires_grad=True)
    unit(x, r)  # warm (compile)
    with count_launches((kernels, "graph_distill_fwd_kernel")) as c:
        res = unit(x, r)
        torch.autograd.grad(res.loss_total, [x, r, *unit.parameters()])
    assert c.triton == ["graph_distill_fwd_kernel"] and c.syncs == []
    assert c.total <= 3, (c.triton, c.aten_ops)
    torch.testing.assert_close(unit.last_mean_edges, res.edges.detach().mean(1), rtol=1e-6, atol=1e-7)
