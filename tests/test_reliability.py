"""Issue 11's examples, one test each: no silent NaN, every bad input named, upstream's no-anchor
margin semantics, clean CLI failures. (The generated sweep over every entry point is test_fuzz.py.)"""

import math
import re

import pytest
import torch

from dmd_fast.cli import main
from dmd_fast.data.mmsa import DataError, load_mmsa, make_loaders, write_mmsa_pickle
from dmd_fast.data.synthetic import make_synthetic
from dmd_fast.model.attention_maps import cross_modal_maps
from dmd_fast.model.config import get_preset
from dmd_fast.model.dmd import DMD
from dmd_fast.model.losses import margin_loss
from dmd_fast.model.system import DMDSystem
from dmd_fast.nn import MultiheadAttention, SinusoidalPositionalEmbedding, TransformerEncoder
from dmd_fast.nn.graph_distill import GDUnit
from dmd_fast.ops.attention import attention_weights, cross_modal_attention, cross_modal_attention_grouped
from dmd_fast.ops.graph_distill import graph_distill
from dmd_fast.reference.attention import cross_modal_attention as reference_attention
from dmd_fast.reference.margin import margin_loss_loop

TINY = get_preset("tiny")
NAN, INF = float("nan"), float("inf")


def named(exc_info, name):
    """The error message names ``name`` as a word."""
    msg = str(exc_info.value)
    assert re.search(rf"(^|[^\w.]){re.escape(name)}($|[^\w])", msg), msg
    return msg


def qkv(dtype=torch.float32, B=2, H=2, Lq=3, Lk=5, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=dtype).requires_grad_() for L in (Lq, Lk, Lk)]


# ---- silent NaN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [NAN, INF, -INF, -1.0])
@pytest.mark.parametrize("entry", ["single", "grouped", "weights"])
def test_bad_scale_is_an_error(entry, scale):
    q, k, v = qkv()
    with pytest.raises(ValueError) as e:
        if entry == "single":
            cross_modal_attention(q, k, v, scale=scale, backend="triton")
        elif entry == "grouped":
            cross_modal_attention_grouped([(q, k, v), (q, k, v)], scale=scale, backend="triton")
        else:
            attention_weights(q, k, v, scale=scale)
    named(e, "scale")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grouped", [False, True])
def test_scale_zero_has_finite_reference_gradients(dtype, grouped):
    q, k, v = qkv(dtype)
    do = torch.randn_like(q)
    if grouped:
        out = cross_modal_attention_grouped([(q, k, v)], scale=0.0, offset_causal=True, backend="triton")[0]
    else:
        out = cross_modal_attention(q, k, v, scale=0.0, offset_causal=True, backend="triton")
    grads = torch.autograd.grad(out, (q, k, v), do)
    rq, rk, rv = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(rq, rk, rv, scale=0.0, offset_causal=True)
    ref_grads = torch.autograd.grad(ref, (rq, rk, rv), do.double())
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.double(), ref, **tol)
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), r, **tol)
    assert torch.equal(grads[1], torch.zeros_like(grads[1]))  # dK = scale · dSᵀQ = 0


@pytest.mark.parametrize("scale", [1e39, 1e-300])
def test_float64_scale_beyond_float32_range(scale):
    q, k, v = qkv(torch.float64)
    q = (q.detach() / scale if scale > 1 else q.detach()).requires_grad_()  # scores O(1)
    out = cross_modal_attention(q, k, v, scale=scale, backend="triton")
    g = torch.autograd.grad(out.sum(), (q, k, v))
    rq, rk, rv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = reference_attention(rq, rk, rv, scale=scale)
    rg = torch.autograd.grad(ref.sum(), (rq, rk, rv))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * max(1.0, b.abs().max().item()))
    with pytest.raises(ValueError) as e:  # float32 inputs cannot carry it
        cross_modal_attention(q.detach().float(), k.detach().float(), v.detach().float(), scale=1e39)
    assert "float32" in named(e, "scale")


def _gd_inputs(M=3, B=4, R=6, G=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return [r(M, B, 1), r(M, B, R), r(G, 1), r(G), r(G, R), r(G), r(1, 4 * G), r(1)], torch.full(
        (M * (M - 1),), 1.0 / (M * (M - 1)), dtype=torch.float64
    )


@pytest.mark.parametrize(
    "arg,value",
    [
        ("alpha", NAN),
        ("alpha", INF),
        ("reg", NAN),
        ("reg", -INF),
        ("w_losses", (1.0, NAN)),
        ("w_losses", (INF, 1.0)),
        ("total_weights", (1.0, NAN, 1.0)),
    ],
)
def test_graph_distill_non_finite_hyperparameters(arg, value):
    t, prior = _gd_inputs()
    with pytest.raises(ValueError) as e:
        graph_distill(*t, prior, backend="triton", **{arg: value})
    named(e, arg)


@pytest.mark.parametrize("check_prior", [True, False])
@pytest.mark.parametrize("bad", [NAN, INF])
def test_graph_distill_non_finite_prior(check_prior, bad):
    t, prior = _gd_inputs()
    prior[2] = bad
    with pytest.raises(ValueError) as e:
        graph_distill(*t, prior, backend="triton", check_prior=check_prior)
    named(e, "prior")


# a valid GDUnit; each test changes one argument
GD_UNIT_ARGS = dict(
    n_classes=1,
    hidden_size=6,
    gd_size=4,
    to_idx=range(3),
    from_idx=range(3),
    gd_prior=[1 / 6] * 6,
    gd_reg=10.0,
    w_losses=(1.0, 10.0),
    metric="l1",
)


@pytest.mark.parametrize(
    "kw",
    [
        dict(gd_prior=[NAN] * 6),
        dict(gd_prior=[INF] + [0.0] * 5),
        dict(gd_prior=[-0.5, 1.5, 0, 0, 0, 0]),
        dict(gd_reg=NAN),
        dict(alpha=INF),
        dict(w_losses=(NAN, 1.0)),
        dict(total_weights=(1.0, 1.0, NAN)),
    ],
)
def test_gd_unit_non_finite_arguments(kw):
    args = dict(GD_UNIT_ARGS, **kw)
    with pytest.raises(ValueError) as e:
        GDUnit(**args)
    named(e, next(iter(kw)))


@pytest.mark.parametrize("missing", ["x_in_k", "x_in_v"])
def test_encoder_with_only_one_source_stream(missing):
    enc = TransformerEncoder(8, 2, 1, backend="reference")
    x, src = torch.randn(3, 2, 8), torch.randn(5, 2, 8)
    with pytest.raises(ValueError) as e:
        enc(x, None, src) if missing == "x_in_k" else enc(x, src, None)
    named(e, missing)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sixteen_bit_on_the_interpreter_is_refused(dtype):
    q, k, v = (t.detach().to(dtype) for t in qkv())
    for call in (
        lambda: cross_modal_attention(q, k, v, backend="triton"),
        lambda: cross_modal_attention(q, k, v, backend="auto"),
        lambda: cross_modal_attention_grouped([(q, k, v)], backend="triton"),
    ):
        with pytest.raises(TypeError, match=r"interpreter") as e:
            call()
        assert str(dtype) in str(e.value)
    # the reference still runs them
    assert torch.isfinite(cross_modal_attention(q, k, v, backend="reference")).all()


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["train", "--epochs", "-1"], "--epochs"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--lr", "0"], "--lr"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--lr", "-1e-3"], "--lr"),
        (["bench", "--time-budget", "nan"], "--time-budget"),
        (["bench", "--rep-ms", "nan"], "--rep-ms"),
        (["bench", "--rep-ms", "inf"], "--rep-ms"),
        (["parity", "--fixture", "x", "--tol", "nan"], "--tol"),
    ],
)
def test_cli_rejects_non_positive_and_non_finite_numbers(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


# ---- unclear errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,name,exc",
    [
        (dict(num_heads=0), "num_heads", ValueError),
        (dict(embed_dim=-8), "embed_dim", ValueError),
        (dict(embed_dim=8.0), "embed_dim", TypeError),
        (dict(num_heads=2.0), "num_heads", TypeError),
        (dict(num_heads=3), "embed_dim", ValueError),
        (dict(attn_dropout=1.0), "attn_dropout", ValueError),
    ],
)
def test_multihead_attention_bad_dims(kw, name, exc):
    args = dict(embed_dim=8, num_heads=2)
    args.update(kw)
    with pytest.raises(exc) as e:
        MultiheadAttention(**args)
    named(e, name)


def test_multihead_attention_bad_inputs():
    mha = MultiheadAttention(8, 2, backend="reference")
    x = torch.randn(3, 2, 8)
    with pytest.raises(TypeError) as e:
        mha(None, x, x)
    named(e, "query")
    with pytest.raises(TypeError) as e:
        mha(x, x, x, attn_mask=[[0.0] * 3] * 3)
    named(e, "attn_mask")
    with pytest.raises(ValueError) as e:
        mha(x, x, x, attn_mask=torch.zeros(3, 4))
    assert "(3, 3)" in named(e, "attn_mask")
    with pytest.raises(TypeError) as e:  # a bool mask would be added as 0/1
        mha(x, x, x, attn_mask=torch.ones(3, 3, dtype=torch.bool))
    named(e, "attn_mask")
    with pytest.raises(TypeError) as e:
        mha(x.double(), x.double(), x.double())
    assert "float32" in named(e, "query")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_dense_mask_fully_masked_row_gives_zero(backend):
    """README: a row with no visible key gives 0 (and finite gradients), also with a dense mask."""
    torch.manual_seed(0)
    mha = MultiheadAttention(8, 2, backend=backend)
    x = torch.randn(4, 2, 8, requires_grad=True)
    mask = torch.zeros(4, 4)
    mask[1, :] = -INF
    mask[2, 3] = -INF
    out, _ = mha(x, x, x, attn_mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], mha.out_proj.bias.expand(2, 8))  # attention output 0, then out_proj
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(mha.in_proj_weight.grad).all()
    # the other rows are the plain softmax (the same as an explicit computation without the masked row)
    keep = torch.tensor([0, 2, 3])
    ref, _ = mha(x[keep].detach(), x.detach(), x.detach(), attn_mask=mask[keep])
    torch.testing.assert_close(out[keep].detach(), ref)


@pytest.mark.parametrize(
    "bad,name,exc",
    [
        ("2d", "x_in", ValueError),
        ("T0", "x_in", ValueError),
        ("B0", "x_in", ValueError),
        ("E", "x_in", ValueError),
        ("int", "x_in", TypeError),
    ],
)
def test_encoder_bad_input(bad, name, exc):
    enc = TransformerEncoder(8, 2, 1, backend="reference")
    x = {
        "2d": torch.randn(3, 8),
        "T0": torch.randn(0, 2, 8),
        "B0": torch.randn(3, 0, 8),
        "E": torch.randn(3, 2, 6),
        "int": torch.ones(3, 2, 8, dtype=torch.int64),
    }[bad]
    with pytest.raises(exc) as e:
        enc(x)
    named(e, name)


def test_positional_bad_input_and_empty_sequence():
    pe = SinusoidalPositionalEmbedding(8)
    with pytest.raises(ValueError) as e:
        pe(torch.randn(3, 8))
    named(e, "x")
    assert pe(torch.randn(0, 2, 8)).shape == (0, 2, 8)
    with pytest.raises(ValueError) as e:
        SinusoidalPositionalEmbedding(-1)
    named(e, "embedding_dim")


def _tiny_inputs(B=2, dtype=torch.float32):
    (tl, ta, tv), (dl, da, dv) = TINY.seq_lens, TINY.feature_dims
    return torch.randn(B, tl, dl, dtype=dtype), torch.randn(B, ta, da, dtype=dtype), torch.randn(B, tv, dv, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_dmd_input_dtype_names_the_model_dtype(dtype):
    model = DMD(TINY, backend="reference")
    with pytest.raises(TypeError) as e:
        model(*_tiny_inputs(dtype=dtype))
    msg = named(e, "text")
    assert str(dtype) in msg and "torch.float32" in msg


def test_dmd_batch_zero():
    with pytest.raises(ValueError) as e:
        DMD(TINY, backend="reference")(*_tiny_inputs(B=0))
    assert "at least 1" in named(e, "text")


@pytest.mark.parametrize(
    "labels,exc",
    [
        (torch.zeros(3, 1), ValueError),
        (torch.zeros(2, 2), ValueError),
        (torch.zeros(2, 1, 1), ValueError),
        ([0.0, 1.0], TypeError),
        (torch.zeros(2, 1, dtype=torch.int64), TypeError),
    ],
)
def test_dmd_system_label_shape(labels, exc):
    system = DMDSystem(TINY, backend="reference")
    with pytest.raises(exc) as e:
        system(*_tiny_inputs(), labels)
    named(e, "labels")


@pytest.mark.parametrize(
    "kw,name,exc",
    [
        (dict(alpha=None), "alpha", TypeError),
        (dict(w_losses="ab"), "w_losses", TypeError),
        (dict(reg="10"), "reg", TypeError),
        (dict(total_weights="abc"), "total_weights", TypeError),
        (dict(w_losses=(1.0,)), "w_losses", ValueError),
    ],
)
def test_graph_distill_unclear_arguments(kw, name, exc):
    t, prior = _gd_inputs()
    with pytest.raises(exc) as e:
        graph_distill(*t, prior, backend="triton", **kw)
    named(e, name)


@pytest.mark.parametrize(
    "kw,name,exc",
    [
        (dict(hidden_size=-1), "hidden_size", ValueError),
        (dict(hidden_size=2.5), "hidden_size", TypeError),
        (dict(gd_size=0), "gd_size", ValueError),
        (dict(metric="cos"), "metric", ValueError),
        (dict(to_idx=[0], from_idx=[0], gd_prior=[]), "to_idx", ValueError),
    ],
)
def test_gd_unit_bad_sizes(kw, name, exc):
    args = dict(GD_UNIT_ARGS, **kw)
    with pytest.raises(exc) as e:
        GDUnit(**args)
    named(e, name)


@pytest.mark.parametrize("gen,exc", [("x", TypeError), (3, TypeError)])
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_generator_type(gen, exc, backend):
    q, k, v = qkv()
    with pytest.raises(exc) as e:
        cross_modal_attention(q, k, v, dropout_p=0.2, generator=gen, backend=backend)
    named(e, "generator")
    with pytest.raises(exc) as e:
        cross_modal_attention_grouped([(q, k, v)], dropout_p=0.2, generator=gen, backend=backend)
    named(e, "generator")


def _tiny_pickle(tmp_path):
    path = tmp_path / "small.pkl"
    write_mmsa_pickle(path, make_synthetic({"feature_dims": (4, 3, 2), "seq_lens": (3, 3, 3)}, 2, 1, 1))
    return path


@pytest.mark.parametrize("length", [2**62, 2**63 - 1, 2**64 - 1, 10**9])
def test_pickle_with_corrupted_length_field(tmp_path, length):
    """A huge length field makes pickle raise MemoryError / OverflowError: the loader's DataError instead."""
    import pickletools

    path = _tiny_pickle(tmp_path)
    raw = bytearray(path.read_bytes())
    pos = next(p for op, _, p in pickletools.genops(bytes(raw)) if op.name == "BYTEARRAY8")
    raw[pos + 1 : pos + 9] = length.to_bytes(8, "little")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_mmsa(bad)
    assert "bad.pkl" in str(e.value) and "not a readable pickle" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pkl", "small.pkl"]


def test_make_loaders_and_synthetic_bad_args(tmp_path):
    with pytest.raises(TypeError) as e:
        make_loaders({"train": [1, 2]}, batch_size=2.5)
    named(e, "batch_size")
    with pytest.raises(ValueError) as e:
        make_synthetic("mosi", 2, 1, 1, audio_inf_frac=NAN)
    named(e, "audio_inf_frac")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(["train", "--epochs", "1", "--synthetic-sizes", "16,8,8", "--out", str(out), "--backend", "reference"])
        == 0
    )
    return out


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("key", ["config", "model", "optimizer", "trainer", "history", "rng", "scheduler"])
def test_resume_from_checkpoint_missing_a_key(trained, tmp_path, key, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name, data in _snapshot(trained).items():
        (run / name).write_bytes(data)
    obj = torch.load(run / "last.pt", weights_only=False)
    if key == "history":
        del obj["trainer"]["history"]
    else:
        del obj[key]
    torch.save(obj, run / "last.pt")
    before = _snapshot(run)
    assert (
        main(
            [
                "train",
                "--epochs",
                "2",
                "--synthetic-sizes",
                "16,8,8",
                "--out",
                str(run),
                "--resume",
                "--backend",
                "reference",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "last.pt" in err and repr(key) in err, err
    assert _snapshot(run) == before


@pytest.mark.parametrize("key", ["config", "model"])
def test_attention_map_checkpoint_missing_a_key(trained, tmp_path, key, capsys):
    obj = torch.load(trained / "best.pt", weights_only=False)
    del obj[key]
    path = tmp_path / "broken.pt"
    torch.save(obj, path)
    assert main(["attention-map", "--checkpoint", str(path), "--out", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.pt" in err and repr(key) in err, err


def test_out_is_an_existing_file(trained, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep")
    assert main(["train", "--epochs", "1", "--out", str(f)]) == 2
    assert main(["train", "--epochs", "1", "--out", str(f / "sub")]) == 2
    assert main(["attention-map", "--checkpoint", str(trained / "best.pt"), "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and err.count("--out") == 3 and "Traceback" not in err
    assert f.read_text() == "keep"


def test_attention_map_layer_out_of_range(trained, tmp_path, capsys):
    assert (
        main(
            [
                "attention-map",
                "--checkpoint",
                str(trained / "best.pt"),
                "--layer",
                "99",
                "--out",
                str(tmp_path / "maps"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layer" in err and "99" in err
    with pytest.raises(ValueError) as e:
        cross_modal_maps(DMD(TINY, backend="reference"), *_tiny_inputs(), layer=-3)
    named(e, "layer")


def test_internal_error_is_one_line_and_debug_shows_it(monkeypatch, capsys):
    import dmd_fast.cli as cli

    def boom(args):
        raise KeyError("internal")

    monkeypatch.setattr(cli, "_parity", boom)  # build_parser binds it per call
    assert main(["parity", "--fixture", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["--debug", "parity", "--fixture", "x"])
    with pytest.raises(KeyError):
        main(["parity", "--fixture", "x", "--debug"])


# ---- upstream's no-anchor margin semantics --------------------------------------------------------


def test_margin_loss_no_anchor_semantics():
    ids = torch.full((6, 1), 0.8)
    feats = torch.randn(6, 5, requires_grad=True)
    zero = margin_loss(ids, feats)  # default: no host sync, a zero gradient
    assert zero.item() == 0.0 and zero.requires_grad
    up = margin_loss(ids, feats, no_anchor="upstream")
    assert up.item() == 0.0 and not up.requires_grad  # upstream: a constant, so no gradient at all
    assert not margin_loss_loop(ids, feats).requires_grad  # the loop oracle agrees with upstream
    ids[0] = -1.0  # one anchor with a negative: both modes give the loss and its gradient
    torch.testing.assert_close(margin_loss(ids, feats, no_anchor="upstream"), margin_loss(ids, feats))
    with pytest.raises(ValueError) as e:
        margin_loss(ids, feats, no_anchor="skip")
    named(e, "no_anchor")


@pytest.mark.parametrize("mode,align_grad", [("zero", "zero"), ("upstream", None)])
def test_dmd_system_all_equal_labels(mode, align_grad):
    """A batch whose labels are all equal has no margin anchor: upstream leaves align_c_* without a
    gradient (grad None); the default gives them a zero gradient without a host sync."""
    torch.manual_seed(0)
    system = DMDSystem(TINY, backend="reference", margin_no_anchor=mode)
    labels = torch.full((3, 1), 1.2)
    _, losses = system(*_tiny_inputs(B=3), labels)
    assert losses["loss_sim"].item() == 0.0
    losses["total"].backward()
    for m in "lva":
        for p in getattr(system.dmd, f"align_c_{m}").parameters():
            if align_grad is None:
                assert p.grad is None
            else:
                assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p.grad))
    assert system.dmd.proj_l.weight.grad is not None and math.isfinite(losses["total"].item())


# ---- parity: no-anchor semantics and the per-group gradient floor --------------------------------


def test_parity_runs_upstream_no_anchor_semantics_and_group_floors(monkeypatch):
    """The parity model reproduces upstream's no-anchor margin semantics; the gradient floor scales with
    the group: fp32 noise on a zero-true-gradient bias passes, a real error on one fails."""
    from tiers import fixture_path

    import dmd_fast.parity as parity

    fx = parity.load_fixture(fixture_path())
    grads = dict(fx["grads"])
    grads["gd_hetero.W_edge.bias"] = grads["gd_hetero.W_edge.bias"] + 1.2e-9  # the noise of issue 11
    grads["gd_homo.W_edge.bias"] = grads["gd_homo.W_edge.bias"] + 1e-6  # 1e-3 of gd_homo's scale
    monkeypatch.setattr(parity, "load_fixture", lambda path: {**fx, "grads": grads})
    seen = {}

    def factory(cfg, **kw):
        seen.update(kw)
        return DMDSystem(cfg, **kw)

    report = parity.run_parity("unused", backend="reference", model_factory=factory)
    assert seen["margin_no_anchor"] == "upstream"
    failures = {k for g in report.groups for k, _ in g.failures}
    assert failures == {"gd_homo.W_edge.bias"}, report.table()
    floors = parity.grad_floors(fx["grads"], 1e-5)
    assert floors["gd_hetero"] > floors["gd_homo"] > 0 and len(floors) == len({k.split(".")[0] for k in grads})
