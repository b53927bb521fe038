"""DMD model and MulT modules (reference backend): presets, layout, modules, bad input."""

import pytest
import torch

from dmd_fast.model.config import PRESETS, DMDConfig, get_preset
from dmd_fast.model.dmd import DMD
from dmd_fast.nn.attention import MultiheadAttention
from dmd_fast.nn.positional import SinusoidalPositionalEmbedding, sinusoidal_table
from dmd_fast.reference.attention import offset_causal_mask


def _count(cfg):
    return sum(p.numel() for p in DMD(cfg, backend="reference").parameters())


@pytest.mark.parametrize(
    "name,millions", [("mosi-aligned", 4.7), ("mosi-unaligned", 12.6), ("mosei-aligned", 1.8), ("mosei-unaligned", 5.1)]
)
def test_preset_parameter_counts(name, millions):
    """docs/upstream-semantics.md, "Parameter counts": non-BERT parameter counts per preset."""
    assert abs(_count(get_preset(name)) / 1e6 - millions) < 0.05


def test_preset_conv_out_lens():
    assert get_preset("mosi-unaligned").conv_out_lens == (46, 371, 496)
    assert get_preset("mosei-unaligned").conv_out_lens == (46, 500, 498)
    assert get_preset("mosei-aligned").conv_out_lens == (46, 50, 48)
    with pytest.raises(ValueError, match="preset"):
        get_preset("iemocap")


def _inputs(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    return (
        torch.randn(B, tl, dl, generator=g),
        torch.randn(B, ta, da, generator=g),
        torch.randn(B, tv, dv, generator=g),
    )


def test_tiny_forward_shapes_and_determinism():
    cfg = PRESETS["tiny"]
    model = DMD(cfg, backend="reference").eval()
    x = _inputs(cfg)
    out1, out2 = model(*x), model(*x)
    d = cfg.d_model
    tl, ta, tv = cfg.conv_out_lens
    assert out1["output_logit"].shape == (2, 1)
    assert out1["s_a"].shape == (ta, 2, d) and out1["c_v"].shape == (tv, 2, d)
    assert out1["repr_l_hetero"].shape == (2, 2 * d) and out1["repr_l_homo"].shape == (2, d)
    for k in out1:
        assert torch.equal(out1[k], out2[k]), k
    model.train()
    torch.manual_seed(0)
    a = model(*x)["output_logit"]
    torch.manual_seed(1)
    b = model(*x)["output_logit"]
    assert not torch.equal(a, b), "train-mode dropout should change the output"


@pytest.mark.parametrize(
    "case,match",
    [
        ("short_audio", "audio: expected shape"),
        ("batch", "batch size"),
        ("int_vision", "vision: expected a floating"),
        ("not_tensor", "text: expected a tensor"),
    ],
)
def test_model_bad_inputs(case, match):
    cfg = PRESETS["tiny"]
    model = DMD(cfg, backend="reference")
    t, a, v = _inputs(cfg)
    if case == "short_audio":
        a = a[:, :-1]
    elif case == "batch":
        v = torch.cat([v, v])
    elif case == "int_vision":
        v = v.long()
    elif case == "not_tensor":
        t = t.numpy()
    with pytest.raises((ValueError, TypeError), match=match):
        model(t, a, v)


def test_config_roundtrip_and_unknown_keys():
    cfg = get_preset("mosi-unaligned")
    assert DMDConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        DMDConfig.from_dict({"d_modle": 3})


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_mha_dense_mask_equals_offset_causal(backend):
    """Dense mask, offset-causal core and head-averaged weights agree; on the Triton backend the kernel
    applies the q scale itself (no q * scaling), and every path must still use it exactly once."""
    torch.manual_seed(0)
    mha = MultiheadAttention(12, 3, backend=backend).eval()
    ref = MultiheadAttention(12, 3, backend="reference").eval()
    with torch.no_grad():
        mha.in_proj_bias.uniform_(-0.1, 0.1)
    ref.load_state_dict(mha.state_dict())
    assert mha.folds_scale(torch.device("cpu")) == (backend == "triton")
    q, kv = torch.randn(7, 2, 12), torch.randn(11, 2, 12)
    dense = torch.zeros(7, 11).masked_fill(~offset_causal_mask(7, 11), float("-inf"))
    a, _ = mha(q, kv, kv, attn_mask=dense)
    b, w = mha(q, kv, kv, offset_causal=True, need_weights=True)
    r, w_ref = ref(q, kv, kv, offset_causal=True, need_weights=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    assert w.shape == (2, 7, 11)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 7))
    assert (w[:, 0, 5:] == 0).all()  # query 0 sees keys 0..4 (|11 − 7| = 4)


def test_mha_bad_inputs():
    mha = MultiheadAttention(12, 3, backend="reference")
    with pytest.raises(ValueError, match="embed_dim"):
        MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="query"):
        mha(torch.randn(5, 2, 8), torch.randn(5, 2, 12), torch.randn(5, 2, 12))
    with pytest.raises(ValueError, match="backend"):
        MultiheadAttention(12, 3, backend="cuda")


def test_positional_embedding_zero_frames_and_integer_positions():
    pe = SinusoidalPositionalEmbedding(6)
    x = torch.randn(300, 2, 6)
    x[290:, 1, 0] = 0.0  # padded frames of sample 1 (channel 0 exactly zero)
    out = pe(x)
    table = sinusoidal_table(301, 6)
    assert torch.equal(out[:, 0], table[1:301])
    assert (out[290:, 1] == 0).all()
    # positions are integers even for bf16 inputs (upstream rounds them above 256)
    out_bf16 = pe(x.bfloat16())
    assert torch.equal(out_bf16[:, 0], table[1:301])
    # odd dims get a zero column
    assert (sinusoidal_table(5, 5)[:, -1] == 0).all()


def test_encoder_under_torch_compile_with_dropout_and_dynamic_batch():
    """Trainer(compile=True) path: train-mode dropout traces, also after a batch-size change."""
    from dmd_fast.nn.transformer import TransformerEncoder

    torch.manual_seed(0)
    enc = TransformerEncoder(8, 2, 1, attn_dropout=0.3, attn_mask=True, backend="reference").train()
    compiled = torch.compile(enc)
    for B in (3, 5):
        x, kv = torch.randn(6, B, 8), torch.randn(9, B, 8)
        out = compiled(x, kv, kv)
        assert out.shape == (6, B, 8) and torch.isfinite(out).all()
        out.sum().backward()


def test_mha_dense_mask_refuses_other_masks():
    mha = MultiheadAttention(12, 3, backend="reference")
    q = torch.randn(4, 2, 12)
    with pytest.raises(ValueError, match="attn_mask"):
        mha(q, q, q, attn_mask=torch.zeros(4, 4), offset_causal=True)


def test_encoder_flag_is_offset_causal_with_upstreams_attn_mask_as_alias():
    from dmd_fast.nn.transformer import TransformerEncoder

    assert TransformerEncoder(8, 2, 1, offset_causal=True, backend="reference").offset_causal is True
    assert TransformerEncoder(8, 2, 1, attn_mask=True, backend="reference").offset_causal is True
    assert (
        TransformerEncoder(8, 2, 1, 0.0, 0.0, 0.0, 0.0, True, backend="reference").offset_causal is True
    )  # MulT order
    assert TransformerEncoder(8, 2, 1, backend="reference").offset_causal is False
    with pytest.raises(ValueError, match="attn_mask"):
        TransformerEncoder(8, 2, 1, offset_causal=True, attn_mask=False, backend="reference")
