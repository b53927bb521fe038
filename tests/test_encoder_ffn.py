"""Fused post-attention block (out-proj, residual, LN1, FFN, residual, final LN): kernels vs the reference.

CPU tier (interpreter): float64 parity of outputs and every gradient for E in {30, 50, 60, 100}, a group
of problems with different T and B, the final LayerNorm on and off, multi-block backward programs,
strided inputs, gradcheck, determinism, launch counts, the fp32 rule, torch.compile, input errors;
residual and ReLU dropout against the reference with the kernels' own keep masks (``ffn_dropout_masks``).
"""

import re

import pytest
import torch

from dmd_fast.bench.launches import count_launches
from dmd_fast.kernels import encoder_ffn as kf
from dmd_fast.ops.encoder_ffn import FINAL_PARAMS, OP, PARAMS, encoder_ffn_block_grouped
from dmd_fast.ops.seed import draw_seed
from dmd_fast.reference.encoder_ffn import encoder_ffn_block as reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy >= 1.25 in Triton's interpreter
EMBED_DIMS = (30, 50, 60, 100)
SHAPES = ((5, 3), (7, 2), (3, 1))  # (T, B) per problem of a group
UNPOISONED_EMPTY = kf._empty


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every kernel output starts as NaN: unwritten elements show up."""
    empty = kf._empty
    monkeypatch.setattr(kf, "_empty", lambda shape, dtype, device: empty(shape, dtype, device).fill_(float("nan")))


def make_problem(E, T, B, seed, final, dtype=torch.float64, strided=False):
    """{x, o, parameters}: a layer's input, its attention output and its block's parameters."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    seq = (lambda: rnd(B, T, E).transpose(0, 1)) if strided else (lambda: rnd(T, B, E))
    F = 4 * E
    p = dict(x=seq(), o=seq(), w_o=rnd(E, E) / E**0.5, b_o=0.3 * rnd(E), ln1_w=1 + 0.3 * rnd(E), ln1_b=0.3 * rnd(E))
    p.update(w_1=rnd(F, E) / E**0.5, b_1=0.3 * rnd(F), w_2=rnd(E, F) / F**0.5, b_2=0.3 * rnd(E))
    if final:
        p.update(lnf_w=1 + 0.3 * rnd(E), lnf_b=0.3 * rnd(E))
    return {k: v.to(DEV, dtype) for k, v in p.items()}


def names(final):
    return ("x", "o") + PARAMS + (FINAL_PARAMS if final else ())


def run(problems, final, backend, douts=None, **kw):
    """Outputs and the gradients of every tensor (leaves) for upstream gradients ``douts``."""
    leaves = [{k: v.detach().clone().requires_grad_() for k, v in p.items()} for p in problems]
    lists = {n: [p[n] for p in leaves] for n in names(final)}
    outs = encoder_ffn_block_grouped(
        lists["x"],
        lists["o"],
        *(lists[n] for n in PARAMS),
        *((lists["lnf_w"], lists["lnf_b"]) if final else ()),
        backend=backend,
        **kw,
    )
    if douts is None:
        return outs, None
    flat = [p[n] for p in leaves for n in names(final)]
    grads = torch.autograd.grad(outs, flat, douts)
    return outs, grads


def douts_for(problems, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p["x"].shape, generator=g, dtype=torch.float64).to(DEV, p["x"].dtype) for p in problems]


def compare(a, b, atol, what=""):
    for i, (u, v) in enumerate(zip(a, b)):
        torch.testing.assert_close(u, v, rtol=0, atol=atol, msg=lambda m: f"{what} #{i}: {m}")


@pytest.mark.parametrize("final", [False, True], ids=["layer", "last_layer"])
@pytest.mark.parametrize("E", EMBED_DIMS)
def test_float64_outputs_and_every_gradient(E, final):
    problems = [make_problem(E, T, B, 10 * E + i, final, strided=E == 50 and i == 1) for i, (T, B) in enumerate(SHAPES)]
    douts = douts_for(problems, E)
    outs, grads = run(problems, final, "triton", douts)
    outs_r, grads_r = run(problems, final, "reference", douts)
    for o in outs:
        assert o.is_contiguous()
    compare(outs, outs_r, 1e-11, "output")
    compare(grads, grads_r, 1e-10, "gradient")


def test_direct_reference_call_matches_eager_layer():
    """The reference is the eager layer's finish() with dropout off, then the encoder's final LN."""
    from dmd_fast.nn.transformer import TransformerEncoder

    torch.manual_seed(0)
    enc = TransformerEncoder(20, 4, 1).double().eval()
    layer = enc.layers[0]
    x, o = torch.randn(6, 2, 20, dtype=torch.float64), torch.randn(2, 4, 6, 5, dtype=torch.float64)
    want = enc.layer_norm(layer.finish(x, o))
    merged = o.permute(2, 0, 1, 3).reshape(6, 2, 20)
    mha = layer.self_attn
    got = reference(x, merged, mha.out_proj.weight, mha.out_proj.bias, layer.layer_norms[1].weight,
                    layer.layer_norms[1].bias, layer.fc1.weight, layer.fc1.bias, layer.fc2.weight, layer.fc2.bias,
                    enc.layer_norm.weight, enc.layer_norm.bias)  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("final", [False, True])
def test_backward_programs_owning_several_row_blocks(final, monkeypatch):
    """Force BLOCK_M 16, several blocks per program (a partial last block), hidden and Wo column steps of
    32 and 16 (partial last ones at E = 50): same outputs and gradients."""
    problems = [make_problem(50, T, B, 3 + i, final) for i, (T, B) in enumerate(((13, 3), (5, 2)))]
    douts = douts_for(problems, 1)
    out_r, want = run(problems, final, "reference", douts)
    monkeypatch.setattr(kf, "MAX_ROW_PROGRAMS", 1)
    monkeypatch.setattr(kf, "_INTERP_BLOCKS", (16, 32, 4))
    monkeypatch.setattr(kf, "block_k", lambda E: 16)  # the GPU's column steps of Wo, a partial last one
    kf.block_config.cache_clear()
    try:
        out, got = run(problems, final, "triton", douts)
    finally:
        kf.block_config.cache_clear()
    compare(out, out_r, 1e-11, "output")
    compare(got, want, 1e-10, "gradient")


def test_gradcheck():
    p = make_problem(6, 3, 2, 0, True)
    keys = list(names(True))

    def fn(*ts):
        d = dict(zip(keys, ts))
        return encoder_ffn_block_grouped([d["x"]], [d["o"]], *([d[n]] for n in PARAMS), [d["lnf_w"]], [d["lnf_b"]],
                                         backend="triton")[0]  # fmt: skip

    inputs = [p[k].detach().requires_grad_() for k in keys]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_deterministic():
    problems = [make_problem(50, T, B, i, True) for i, (T, B) in enumerate(SHAPES)]
    douts = douts_for(problems, 2)
    a = run(problems, True, "triton", douts)[1]
    b = run(problems, True, "triton", douts)[1]
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_float32_within_twice_torch_error():
    """fp32 kernels vs float64 truth: within 2x the error of torch's own fp32 reference (+ a floor)."""
    problems = [make_problem(60, T, B, 7 + i, True) for i, (T, B) in enumerate(SHAPES)]
    douts = douts_for(problems, 3)
    truth = run(problems, True, "reference", douts)
    p32 = [{k: v.float() for k, v in p.items()} for p in problems]
    d32 = [d.float() for d in douts]
    ours = run(p32, True, "triton", d32)
    torch_fp32 = run(p32, True, "reference", d32)
    for what, i in (("outputs", 0), ("gradients", 1)):
        for a, t, r in zip(ours[i], truth[i], torch_fp32[i]):
            err, ref_err = (a.double() - t).abs().max().item(), (r.double() - t).abs().max().item()
            assert err <= 2 * ref_err + 2e-6, f"{what}: {err} vs torch fp32 {ref_err}"


def test_launch_counts_group_of_three(monkeypatch):
    """1 Triton launch forward, 2 backward, and no ATen kernel beyond allocations in either."""
    monkeypatch.setattr(kf, "_empty", UNPOISONED_EMPTY)  # the poison's fill_ is not the op's
    problems = [make_problem(30, T, B, i, True) for i, (T, B) in enumerate(SHAPES)]
    kernels = [(kf, n) for n in sorted(vars(kf)) if n.endswith("_kernel")]
    leaves = [{k: v.detach().clone().requires_grad_() for k, v in p.items()} for p in problems]
    lists = {n: [p[n] for p in leaves] for n in names(True)}
    args = [lists["x"], lists["o"], *(lists[n] for n in PARAMS), lists["lnf_w"], lists["lnf_b"]]
    with count_launches(*kernels) as fwd:
        outs = encoder_ffn_block_grouped(*args, backend="triton")
    douts = douts_for(problems, 0)
    with count_launches(*kernels) as bwd:
        torch.autograd.grad(outs, [t for p in leaves for t in p.values()], douts)
    assert fwd.triton == ["encoder_ffn_fwd_kernel"] and fwd.aten_ops == [] and fwd.syncs == []
    assert bwd.triton == ["encoder_ffn_bwd_kernel", "encoder_ffn_reduce_kernel"] and bwd.syncs == []
    assert bwd.aten_ops == [], bwd.aten_ops


def test_torch_compile_fullgraph():
    problems = [make_problem(30, T, B, 20 + i, True) for i, (T, B) in enumerate(SHAPES[:2])]

    def fn(*lists):
        return encoder_ffn_block_grouped(*lists, backend="triton")

    lists = [[p[n] for p in problems] for n in names(True)]
    want = fn(*lists)
    got = torch.compile(fn, fullgraph=True, backend="eager")(*lists)
    compare(got, want, 0.0, "compiled output")


@pytest.mark.parametrize("dropout", [False, True], ids=["no_dropout", "dropout"])
@pytest.mark.parametrize("final", [False, True], ids=["layer", "last_layer"])
def test_pair_outputs_are_the_concatenation_written_in_place(final, dropout):
    """pair_outputs: problems 2i, 2i + 1 write the halves of one (T, B, 2E) output (the memory encoders'
    inputs): bitwise the concatenation of the unpaired outputs, the same gradients for the halves of
    its gradient (read in place), no concatenation kernel; the reference backend concatenates."""
    E = 30
    shapes = ((5, 3), (5, 3), (4, 2), (4, 2))
    problems = [make_problem(E, T, B, 40 + i, final) for i, (T, B) in enumerate(shapes)]
    g = torch.Generator().manual_seed(7)
    dpairs = [torch.randn(T, B, 2 * E, generator=g, dtype=torch.float64).to(DEV) for T, B in shapes[::2]]
    dsplit = [h for d in dpairs for h in (d[..., :E], d[..., E:])]
    kw = dict(res_dropout=0.2, relu_dropout=0.3) if dropout else {}
    seed = draw_seed(None, DEV) if dropout else None
    with count_launches(*[(kf, n) for n in sorted(vars(kf)) if n.endswith("_kernel")]) as c:
        pairs, grads = run(problems, final, "triton", dpairs, pair_outputs=True, seed=seed, **kw)
    assert "aten.cat.default" not in map(str, c.aten_ops) and "aten.copy_.default" not in map(str, c.aten_ops)
    outs, grads_1 = run(problems, final, "triton", dsplit, seed=seed, **kw)
    assert [tuple(t.shape) for t in pairs] == [(5, 3, 2 * E), (4, 2, 2 * E)] and all(t.is_contiguous() for t in pairs)
    for i, pair in enumerate(pairs):
        assert torch.equal(pair, torch.cat(outs[2 * i : 2 * i + 2], dim=2)), i
    compare(grads, grads_1, 0.0, "gradient")
    if not dropout:
        ref, grads_r = run(problems, final, "reference", dpairs, pair_outputs=True)
        compare(pairs, ref, 1e-11, "reference output")
        compare(grads, grads_r, 1e-10, "reference gradient")


def test_pair_outputs_torch_compile_fullgraph():
    problems = [make_problem(30, 4, 2, 50 + i, True) for i in range(2)]

    def fn(*lists):
        return encoder_ffn_block_grouped(*lists, pair_outputs=True, backend="triton")

    lists = [[p[n] for p in problems] for n in names(True)]
    want = fn(*lists)
    got = torch.compile(fn, fullgraph=True, backend="eager")(*lists)
    assert len(got) == 1 and got[0].shape == (4, 2, 60)
    compare(got, want, 0.0, "compiled output")


def _bad(case):
    p = make_problem(30, 4, 2, 0, False)
    lists = {n: [p[n]] for n in names(False)}
    kw = {}
    if case == "xs_not_list":
        lists["x"] = p["x"]
    elif case == "os_length":
        lists["o"] = [p["o"], p["o"]]
    elif case == "o_shape":
        lists["o"] = [p["o"][:3]]
    elif case == "w_1_shape":
        lists["w_1"] = [p["w_1"][:10]]
    elif case == "dtype":
        lists["b_2"] = [p["b_2"].float()]
    elif case == "E_too_large":
        big = make_problem(129, 2, 1, 0, False)
        lists = {n: [big[n]] for n in names(False)}
    elif case == "res_dropout":
        kw = dict(res_dropout=1.0)
    elif case == "relu_dropout":
        kw = dict(relu_dropout=[0.2, 0.1])
    elif case == "relu_dropout_item":
        kw = dict(relu_dropout=[-0.1])
    elif case == "res_dropout_type":
        kw = dict(res_dropout="0.1")
    elif case == "generator":
        kw = dict(generator=object(), res_dropout=0.1)
    elif case == "lnf_b":
        kw = dict(lnf_w=[p["ln1_w"]])
    elif case == "eps":
        kw = dict(eps=-1.0)
    elif case == "pair_outputs_odd":
        kw = dict(pair_outputs=True)
    elif case == "pair_outputs_shapes":
        q = make_problem(30, 5, 2, 1, False)
        lists = {n: [p[n], q[n]] for n in names(False)}
        kw = dict(pair_outputs=True)
    elif case == "pair_outputs_type":
        kw = dict(pair_outputs="yes")
    args = [lists["x"], lists["o"], *(lists[n] for n in PARAMS)]
    return args, kw


BAD = {
    "xs_not_list": "xs",
    "os_length": "os",
    "o_shape": "os[0]",
    "w_1_shape": "w_1[0]",
    "dtype": "b_2[0]",
    "E_too_large": "xs[0]",
    "res_dropout": "res_dropout",
    "relu_dropout": "relu_dropout",
    "relu_dropout_item": "relu_dropout[0]",
    "res_dropout_type": "res_dropout",
    "generator": "generator",
    "lnf_b": "lnf_b",
    "eps": "eps",
    "pair_outputs_odd": "pair_outputs",
    "pair_outputs_shapes": "pair_outputs",
    "pair_outputs_type": "pair_outputs",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs(case):
    args, kw = _bad(case)
    with pytest.raises((TypeError, ValueError)) as e:
        encoder_ffn_block_grouped(*args, backend="triton", **kw)
    assert re.search(rf"(^|[^\w]){re.escape(BAD[case])}($|[^\w])", str(e.value)), str(e.value)


def test_interpreter_refuses_bf16_and_reference_runs_it():
    if DEV != "cpu":
        pytest.skip("interpreter-only refusal")
    p = make_problem(30, 3, 2, 0, False, dtype=torch.bfloat16)
    args = [[p[n]] for n in names(False)]
    with pytest.raises(TypeError, match="bfloat16"):
        encoder_ffn_block_grouped(*args, backend="triton")
    out = encoder_ffn_block_grouped(*args, backend="reference")[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert OP == "encoder_ffn_block"


# ----------------------------------------------------------------------------------------------
# dropout
# ----------------------------------------------------------------------------------------------

RES_P, RELU_P = (0.3, 0.0, 0.15), (0.2, 0.25, 0.0)  # per problem of SHAPES; one of each off


def reference_with_kernel_masks(problems, final, douts, seed, res_p, relu_p):
    """The reference per problem with the keep masks the kernels draw for ``seed``; outputs, gradients."""
    outs, grads = [], []
    for g, p in enumerate(problems):
        T, B, E = p["x"].shape
        k1, kr, k2 = kf.ffn_dropout_masks(seed, T, B, E, res_p[g], relu_p[g], group_index=g)
        leaves = {k: v.detach().clone().requires_grad_() for k, v in p.items()}
        out = reference(*(leaves[n] for n in names(final)), keep_res1=k1, keep_relu=kr, keep_res2=k2,
                        res_p=res_p[g], relu_p=relu_p[g])  # fmt: skip
        outs.append(out)
        grads += torch.autograd.grad(out, [leaves[n] for n in names(final)], douts[g])
    return outs, grads


@pytest.mark.parametrize("final", [False, True], ids=["layer", "last_layer"])
@pytest.mark.parametrize("E", EMBED_DIMS)
def test_dropout_float64_outputs_and_every_gradient(E, final):
    """Same Philox masks forward and backward: kernels == reference fed ``ffn_dropout_masks``."""
    problems = [make_problem(E, T, B, 5 * E + i, final) for i, (T, B) in enumerate(SHAPES)]
    douts = douts_for(problems, E + 1)
    gen = torch.Generator(DEV).manual_seed(E)
    state = gen.get_state()
    outs, grads = run(problems, final, "triton", douts, res_dropout=list(RES_P), relu_dropout=list(RELU_P),
                      generator=gen)  # fmt: skip
    seed = draw_seed(torch.Generator(DEV).set_state(state), torch.device(DEV))
    outs_r, grads_r = reference_with_kernel_masks(problems, final, douts, seed, RES_P, RELU_P)
    compare(outs, outs_r, 1e-11, "output")
    compare(grads, grads_r, 1e-10, "gradient")
    no_drop = run(problems, final, "triton")[0]
    assert not torch.allclose(outs[0], no_drop[0]), "dropout had no effect"


def test_dropout_multi_block_backward_programs(monkeypatch):
    """Dropout masks by problem row and column, not by program or block: several row blocks per program,
    hidden steps of 32 and Wo column steps of 16 (partial at E = 50) give the same result."""
    problems = [make_problem(50, T, B, 40 + i, True) for i, (T, B) in enumerate(((13, 3), (5, 2)))]
    douts = douts_for(problems, 4)
    seed = torch.tensor([987654321, 2**40 + 5], dtype=torch.int64, device=DEV)
    out_r, want = reference_with_kernel_masks(problems, True, douts, seed, (0.2, 0.4), (0.3, 0.1))
    monkeypatch.setattr(kf, "MAX_ROW_PROGRAMS", 1)
    monkeypatch.setattr(kf, "_INTERP_BLOCKS", (16, 32, 4))
    monkeypatch.setattr(kf, "block_k", lambda E: 16)
    kf.block_config.cache_clear()
    try:
        xs, os_ = [p["x"] for p in problems], [p["o"] for p in problems]
        params = [{k: v for k, v in p.items() if k not in ("x", "o")} for p in problems]
        kw = dict(final=True, seed=seed, res_p=[0.2, 0.4], relu_p=[0.3, 0.1])
        outs, stats, pres = kf.ffn_fwd_grouped(xs, os_, params, **kw)
        dxs, dos, flat = kf.ffn_bwd_grouped(douts, xs, os_, params, stats, pres, **kw)
    finally:
        kf.block_config.cache_clear()
    compare(outs, out_r, 1e-11, "output")
    cols = kf.grad_columns(50)
    for g in range(2):
        got = [dxs[g], dos[g]] + [flat[g, c : c + s[0] * (s[1] if len(s) > 1 else 1)].view(s) for c, s in
                                  (cols[n] for n in PARAMS + FINAL_PARAMS)]  # fmt: skip
        compare(got, want[12 * g : 12 * (g + 1)], 1e-10, f"gradient of problem {g}")


def test_dropout_masks_rate_and_independence():
    """Keep rate 1 − p; the three streams, the problems of a group and the seed offset all differ."""
    seed = torch.tensor([1234, 99], dtype=torch.int64, device=DEV)
    k1, kr, k2 = kf.ffn_dropout_masks(seed, 40, 5, 100, 0.3, 0.1)
    assert k1.shape == k2.shape == (40, 5, 100) and kr.shape == (40, 5, 400) and k1.dtype == torch.bool
    assert abs(k1.float().mean().item() - 0.7) < 0.015 and abs(k2.float().mean().item() - 0.7) < 0.015
    assert abs(kr.float().mean().item() - 0.9) < 0.01
    assert (k1 != k2).float().mean() > 0.3 and (k1 != kr[..., :100]).float().mean() > 0.2
    assert (k1 != kf.ffn_dropout_masks(seed, 40, 5, 100, 0.3, 0.1, group_index=1)[0]).any()
    assert (k1 != kf.ffn_dropout_masks(seed + torch.tensor([0, 1], device=DEV), 40, 5, 100, 0.3, 0.1)[0]).any()
    assert torch.equal(k1, kf.ffn_dropout_masks(seed, 40, 5, 100, 0.3, 0.0)[0])
    assert kf.ffn_dropout_masks(seed, 4, 2, 30, 0.0, 0.2)[0] is None


def test_dropout_repeatable_with_manual_seed():
    problems = [make_problem(30, T, B, i, False) for i, (T, B) in enumerate(SHAPES)]
    kw = dict(res_dropout=0.2, relu_dropout=0.3)
    torch.manual_seed(0)
    a = run(problems, False, "triton", **kw)[0]
    torch.manual_seed(0)
    b = run(problems, False, "triton", **kw)[0]
    c = run(problems, False, "triton", **kw)[0]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_dropout_seed_argument():
    """A given [seed, offset] keys the kernels' masks (reference-checked), draws nothing; another differs."""
    problems = [make_problem(30, T, B, 60 + i, True) for i, (T, B) in enumerate(SHAPES)]
    douts = douts_for(problems, 61)
    seed = torch.tensor([[1, 2], [77, 5]], dtype=torch.int64, device=DEV)[1]  # a row of ops.seed.draw_seeds
    kw = dict(res_dropout=list(RES_P), relu_dropout=list(RELU_P))
    state = torch.get_rng_state()
    outs, grads = run(problems, True, "triton", douts, seed=seed, **kw)
    assert torch.equal(torch.get_rng_state(), state), "a given seed draws nothing from torch's generator"
    outs_r, grads_r = reference_with_kernel_masks(problems, True, douts, seed, RES_P, RELU_P)
    compare(outs, outs_r, 1e-11, "output")
    compare(grads, grads_r, 1e-10, "gradient")
    other = run(problems, True, "triton", seed=torch.tensor([78, 5], device=DEV), **kw)[0]
    assert not torch.equal(outs[0], other[0])
    with pytest.raises(ValueError, match="seed: .*generator"):
        run(problems, True, "triton", seed=seed, generator=torch.Generator(DEV), **kw)
    with pytest.raises(TypeError, match=r"seed: expected an int64 tensor .* got torch.int32"):
        run(problems, True, "triton", seed=seed.int(), **kw)


def test_dropout_reference_backend_uses_torch_masks():
    """backend="reference" draws torch masks (same generator state: same output; p=0: no dropout)."""
    problems = [make_problem(30, T, B, i, True) for i, (T, B) in enumerate(SHAPES)]
    kw = dict(res_dropout=[0.2, 0.0, 0.1], relu_dropout=0.3)
    a = run(problems, True, "reference", generator=torch.Generator(DEV).manual_seed(1), **kw)[0]
    b = run(problems, True, "reference", generator=torch.Generator(DEV).manual_seed(1), **kw)[0]
    plain = run(problems, True, "reference")[0]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(not torch.allclose(u, v) for u, v in zip(a, plain))


def test_dropout_gradcheck():
    p = make_problem(6, 3, 2, 1, True)
    keys = list(names(True))

    def fn(*ts):
        d = dict(zip(keys, ts))
        gen = torch.Generator(DEV).manual_seed(11)  # the same masks every call
        lists = [[d[n]] for n in keys]
        return encoder_ffn_block_grouped(*lists, res_dropout=0.3, relu_dropout=0.4, generator=gen, backend="triton")[0]

    inputs = [p[k].detach().requires_grad_() for k in keys]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_dropout_launch_counts_group_of_three(monkeypatch):
    """With dropout: still 1 Triton launch forward and 2 backward; the forward's only ATen work draws the seed."""
    monkeypatch.setattr(kf, "_empty", UNPOISONED_EMPTY)
    problems = [make_problem(30, T, B, i, True) for i, (T, B) in enumerate(SHAPES)]
    kernels = [(kf, n) for n in sorted(vars(kf)) if n.endswith("_kernel")]
    leaves = [{k: v.detach().clone().requires_grad_() for k, v in p.items()} for p in problems]
    lists = {n: [p[n] for p in leaves] for n in names(True)}
    args = [lists["x"], lists["o"], *(lists[n] for n in PARAMS), lists["lnf_w"], lists["lnf_b"]]
    with count_launches(*kernels) as fwd:
        outs = encoder_ffn_block_grouped(*args, res_dropout=list(RES_P), relu_dropout=list(RELU_P), backend="triton")
    douts = douts_for(problems, 0)
    with count_launches(*kernels) as bwd:
        torch.autograd.grad(outs, [t for p in leaves for t in p.values()], douts)
    assert fwd.triton == ["encoder_ffn_fwd_kernel"] and fwd.syncs == []
    assert fwd.aten_ops == ["aten.randint.low_generator"], fwd.aten_ops  # the [seed, offset] draw
    assert bwd.triton == ["encoder_ffn_bwd_kernel", "encoder_ffn_reduce_kernel"] and bwd.syncs == []
    assert bwd.aten_ops == [], bwd.aten_ops


def test_dropout_torch_compile_fullgraph():
    problems = [make_problem(30, T, B, 30 + i, True) for i, (T, B) in enumerate(SHAPES[:2])]

    def fn(*lists):
        return encoder_ffn_block_grouped(*lists, res_dropout=[0.1, 0.2], relu_dropout=0.3, backend="triton")

    lists = [[p[n] for p in problems] for n in names(True)]
    torch.manual_seed(3)
    want = fn(*lists)
    torch.manual_seed(3)
    got = torch.compile(fn, fullgraph=True, backend="eager")(*lists)
    compare(got, want, 0.0, "compiled output")
