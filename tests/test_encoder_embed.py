"""Fused embedding prologue (√E·x + PE with the zero-frame rule, dropout): kernels vs the reference."""

import math
import re

import pytest
import torch

from dmd_fast.bench.launches import count_launches
from dmd_fast.kernels import encoder_embed as ke
from dmd_fast.nn.positional import sinusoidal_table
from dmd_fast.nn.transformer import TransformerEncoder
from dmd_fast.ops.encoder_embed import encoder_embedding_grouped
from dmd_fast.reference.encoder_embed import encoder_embedding as reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
UNPOISONED_EMPTY = ke._empty


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    empty = ke._empty
    monkeypatch.setattr(ke, "_empty", lambda shape, dtype, device: empty(shape, dtype, device).fill_(float("nan")))


def streams(E, seed, dtype=torch.float64, shapes=((6, 3), (9, 2), (4, 1))):
    """Inputs of one width with exactly-zero (padded) frames; the second one strided ((B, T, E) storage)."""
    g = torch.Generator().manual_seed(seed)
    xs = []
    for i, (T, B) in enumerate(shapes):
        x = torch.randn(B, T, E, generator=g, dtype=torch.float64).transpose(0, 1) if i == 1 else torch.randn(
            T, B, E, generator=g, dtype=torch.float64)  # fmt: skip
        x[T - 1, 0] = 0.0  # a padded frame: no PE
        x[0, -1, 0] = 0.0  # channel 0 zero alone also means position 0
        xs.append(x.to(DEV, dtype))
    return xs


@pytest.mark.parametrize("E", (30, 50, 100))
def test_no_dropout_outputs_and_gradients_float64(E):
    xs = [x.requires_grad_() for x in streams(E, E)]
    table = sinusoidal_table(16, E)
    outs = encoder_embedding_grouped(xs, table, scale=math.sqrt(E), backend="triton")
    douts = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, xs, douts)
    for x, o, d, gx in zip(xs, outs, douts, grads):
        want = reference(x.detach(), table.to(x.dtype), math.sqrt(E))
        assert o.is_contiguous()
        torch.testing.assert_close(o, want, rtol=0, atol=1e-13)
        torch.testing.assert_close(gx, d * math.sqrt(E), rtol=0, atol=1e-13)


def test_equals_the_eager_encoder_embed_in_eval():
    torch.manual_seed(0)
    enc = TransformerEncoder(20, 4, 1, embed_dropout=0.3).double().eval()
    (x,) = streams(20, 1, shapes=((7, 2),))
    table = enc.embed_positions._table(8, x.device)
    got = encoder_embedding_grouped([x], table, scale=enc.embed_scale, backend="triton")[0]
    torch.testing.assert_close(got, enc.embed(x), rtol=0, atol=1e-13)


def test_dropout_mask_forward_backward_and_scale():
    E, p = 50, 0.3
    xs = [x.requires_grad_() for x in streams(E, 3, shapes=((40, 8), (40, 8)))]
    table = sinusoidal_table(41, E)
    torch.manual_seed(5)
    outs = encoder_embedding_grouped(xs, table, scale=math.sqrt(E), dropout_p=p, backend="triton")
    douts = [torch.ones_like(o) for o in outs]
    grads = torch.autograd.grad(outs, xs, douts)
    for x, o, gx in zip(xs, outs, grads):
        clean = reference(x.detach(), table.double(), math.sqrt(E))
        kept = gx != 0  # dout = 1: the backward's mask, regenerated from the seed
        frac = kept.double().mean().item()
        assert abs(frac - (1 - p)) < 0.03, frac
        torch.testing.assert_close(o[kept], clean[kept] / (1 - p), rtol=1e-6, atol=0)
        assert torch.equal(o[~kept], torch.zeros_like(o[~kept]))  # the forward dropped the same elements
        torch.testing.assert_close(gx[kept], torch.full_like(gx[kept], math.sqrt(E) / (1 - p)), rtol=1e-6, atol=0)
    assert not torch.equal(outs[0] != 0, outs[1] != 0), "streams of one group must draw independent bits"
    torch.manual_seed(5)
    again = encoder_embedding_grouped(xs, table, scale=math.sqrt(E), dropout_p=p, backend="triton")
    assert torch.equal(again[0], outs[0]), "torch.manual_seed must repeat the draw"


def test_gradcheck():
    xs = [x.requires_grad_() for x in streams(6, 2, shapes=((3, 2), (2, 1)))]
    table = sinusoidal_table(4, 6)

    def fn(*xs):
        return tuple(encoder_embedding_grouped(list(xs), table, scale=2.5, backend="triton"))

    assert torch.autograd.gradcheck(fn, xs, fast_mode=True)


def test_launch_counts(monkeypatch):
    monkeypatch.setattr(ke, "_empty", UNPOISONED_EMPTY)
    xs = [x.requires_grad_() for x in streams(30, 4) + strided_views(30, 4)[0]]
    table = sinusoidal_table(10, 30)
    kernels = [(ke, n) for n in sorted(vars(ke)) if n.endswith("_kernel")]
    for seed in (None, torch.tensor([1, 2], device=DEV)):
        with count_launches(*kernels) as fwd:
            outs = encoder_embedding_grouped(xs + xs[-2:], table, scale=5.0, dropout_p=0.2, seed=seed, backend="triton")
        douts = [torch.ones_like(o) for o in outs]
        with count_launches(*kernels) as bwd:
            torch.autograd.grad(outs, xs, douts)
        assert fwd.triton == ["encoder_embed_fwd_kernel"] and bwd.triton == ["encoder_embed_bwd_kernel"]
        assert bwd.aten_ops == [] and fwd.syncs == bwd.syncs == []  # repeated inputs: no gradient add
        want = ["randint"] if seed is None else []  # the seed draw only: strided inputs are not copied
        assert [op.split(".")[1] for op in fwd.aten_ops] == want, fwd.aten_ops


def test_torch_compile_fullgraph():
    xs = streams(30, 6) + strided_views(30, 6)[0][:1]
    table = sinusoidal_table(10, 30)

    def fn(*xs):  # the last (strided) input given twice: deduplicated while tracing too
        return encoder_embedding_grouped([*xs, xs[-1]], table, scale=5.0, backend="triton")

    want = fn(*xs)
    got = torch.compile(fn, fullgraph=True, backend="eager")(*xs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(xs=[]), "xs"),
        (dict(xs="x"), "xs"),
        (dict(table=torch.zeros(3, 30)), "table"),
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(dropout_p=[0.1]), "dropout_p"),
        (dict(scale=float("nan")), "scale"),
    ],
)
def test_bad_inputs(kw, name):
    args = dict(xs=streams(30, 0), table=sinusoidal_table(10, 30), scale=5.0)
    args.update(kw)
    xs, table = args.pop("xs"), args.pop("table")
    with pytest.raises((TypeError, ValueError)) as e:
        encoder_embedding_grouped(xs, table, backend="triton", **args)
    assert re.search(rf"(^|[^\w]){re.escape(name)}($|[^\w])", str(e.value)), str(e.value)


def strided_views(E, seed, dtype=torch.float64):
    """The same values as (T, B, E) views of other storage orders: (B, E, T) (DMD's permuted conv output),
    (T, E, B), and every other channel of a (T, B, 2E) tensor; plus their contiguous copies."""
    g = torch.Generator().manual_seed(seed)
    views = [
        torch.randn(3, E, 7, generator=g, dtype=dtype).permute(2, 0, 1),
        torch.randn(5, E, 2, generator=g, dtype=dtype).transpose(1, 2),
        torch.randn(4, 2, 2 * E, generator=g, dtype=dtype)[:, :, ::2],
    ]
    for x in views:
        x[-1, 0] = 0.0  # a padded frame
    views = [x.to(DEV) for x in views]
    assert all(x.stride(2) != 1 for x in views)
    return views, [x.contiguous() for x in views]


@pytest.mark.parametrize("p", (0.0, 0.3))
def test_strided_inputs_equal_contiguous_bitwise(p):
    E = 30
    views, copies = strided_views(E, 7)
    table = sinusoidal_table(8, E)
    seed = torch.tensor([123, 456], device=DEV)
    results = []
    for xs in (views, copies):
        xs = [x.requires_grad_() for x in xs]
        outs = encoder_embedding_grouped(xs, table, scale=math.sqrt(E), dropout_p=p, seed=seed, backend="triton")
        douts = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=DEV).view(o.shape) for o in outs]
        results.append((outs, torch.autograd.grad(outs, xs, douts)))
    for a, b in zip(*(outs + list(grads) for outs, grads in results)):
        assert torch.equal(a, b)


def test_repeated_input_one_summed_gradient_float64():
    """A tensor given for 3 streams (each its own dropout draw) and a strided one: one gradient each, the
    reference's autograd sum of the per-stream gradients (the kernels' masks from one-stream backwards;
    p = 0.5: the kernels' fp32 1 / (1 − p) is exact)."""
    E, p = 20, 0.5
    (a, b, _), _ = strided_views(E, 3)
    a, b = a.requires_grad_(), b.requires_grad_()
    xs = [a, b, a, a]
    table = sinusoidal_table(8, E)
    torch.manual_seed(2)
    outs = encoder_embedding_grouped(xs, table, scale=math.sqrt(E), dropout_p=p, backend="triton")
    douts = [torch.randn_like(o) for o in outs]
    with count_launches((ke, "encoder_embed_bwd_kernel")) as bwd:
        ga, gb = torch.autograd.grad(outs, [a, b], douts, retain_graph=True)
    assert bwd.triton == ["encoder_embed_bwd_kernel"], bwd.triton
    assert set(bwd.aten_ops) <= {"aten.fill_.Scalar"}, "no gradient add (fill_: the poisoned outputs)"
    keeps = [torch.autograd.grad(o, x, torch.ones_like(o), retain_graph=True)[0] != 0 for o, x in zip(outs, xs)]
    assert len({k.sum().item() for k in (keeps[0], keeps[2], keeps[3])}) > 1, "each use draws its own mask"
    ra, rb = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    refs = [reference(x, table.double(), math.sqrt(E), k, p) for x, k in zip([ra, rb, ra, ra], keeps)]
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-13)
    want_a, want_b = torch.autograd.grad(refs, [ra, rb], douts)
    torch.testing.assert_close(ga, want_a, rtol=0, atol=1e-13)
    torch.testing.assert_close(gb, want_b, rtol=0, atol=1e-13)


def test_gradcheck_repeated_strided_input():
    (a, b, _), _ = strided_views(6, 4)
    table = sinusoidal_table(8, 6)

    def fn(a, b):
        return tuple(encoder_embedding_grouped([a, b, a, a], table, scale=2.5, backend="triton"))

    assert torch.autograd.gradcheck(fn, (a.requires_grad_(), b.requires_grad_()), fast_mode=True)


def test_seed_argument_reproduces_and_draws_nothing():
    E, p = 30, 0.3
    xs = streams(E, 5)
    table = sinusoidal_table(10, E)

    def run(pair):
        return encoder_embedding_grouped(
            xs, table, scale=5.0, dropout_p=p, seed=torch.tensor(pair, device=DEV), backend="triton"
        )

    state = torch.get_rng_state()
    first, again, other = run([11, 0]), run([11, 0]), run([12, 0])
    assert torch.equal(torch.get_rng_state(), state), "a given seed draws nothing from torch's generator"
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a != 0, c != 0) for a, c in zip(first, other))
    shifted = run([11, 1 << 20])  # the offset moves the Philox counter
    assert not torch.equal(first[0] != 0, shifted[0] != 0)


BAD_SEEDS = [
    (lambda: torch.tensor([1, 2], dtype=torch.int32), TypeError, "int32"),
    (lambda: torch.tensor([1.0, 2.0]), TypeError, "float32"),
    (lambda: [1, 2], TypeError, "list"),
    (lambda: torch.tensor([1, 2, 3]), ValueError, "(3,)"),
    (lambda: torch.tensor([[1, 2]]), ValueError, "(1, 2)"),
    (lambda: torch.arange(4)[::2], ValueError, "stride (2,)"),
    (lambda: torch.tensor([1, 2], device="meta"), ValueError, "meta"),
]


@pytest.mark.parametrize("make, cls, got", BAD_SEEDS, ids=[b[2] for b in BAD_SEEDS])
def test_bad_seed(make, cls, got):
    seed = make()
    if isinstance(seed, torch.Tensor) and seed.device.type != "meta":
        seed = seed.to(DEV)
    with pytest.raises(cls) as e:
        encoder_embedding_grouped(streams(30, 0), sinusoidal_table(10, 30), scale=5.0, dropout_p=0.1, seed=seed,
                                  backend="triton")  # fmt: skip
    msg = str(e.value)
    assert "seed" in msg and "int64" in msg and "(2,)" in msg and got in msg, msg


@pytest.mark.parametrize("backend, name", [("triton", "generator"), ("reference", "reference")])
def test_seed_refused_with_generator_or_on_reference(backend, name):
    generator = torch.Generator(DEV) if name == "generator" else None
    with pytest.raises(ValueError, match=rf"seed: .*{name}"):
        encoder_embedding_grouped(streams(30, 0), sinusoidal_table(10, 30), scale=5.0, dropout_p=0.1,
                                  seed=torch.zeros(2, dtype=torch.int64, device=DEV), generator=generator,
                                  backend=backend)  # fmt: skip
