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
    xs = [x.requires_grad_() for x in streams(30, 4)]
    table = sinusoidal_table(10, 30)
    kernels = [(ke, n) for n in sorted(vars(ke)) if n.endswith("_kernel")]
    with count_launches(*kernels) as fwd:
        outs = encoder_embedding_grouped(xs, table, scale=5.0, dropout_p=0.2, backend="triton")
    douts = [torch.ones_like(o) for o in outs]
    with count_launches(*kernels) as bwd:
        torch.autograd.grad(outs, xs, douts)
    assert fwd.triton == ["encoder_embed_fwd_kernel"] and bwd.triton == ["encoder_embed_bwd_kernel"]
    assert bwd.aten_ops == [] and fwd.syncs == bwd.syncs == []
    assert all(op.startswith(("aten.randint", "aten._to_copy", "aten.copy_")) for op in fwd.aten_ops), fwd.aten_ops


def test_torch_compile_fullgraph():
    xs = streams(30, 6)
    table = sinusoidal_table(10, 30)

    def fn(*xs):
        return encoder_embedding_grouped(list(xs), table, scale=5.0, backend="triton")

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
