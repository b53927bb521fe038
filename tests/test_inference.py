"""The pruned inference forward (DMD.predict / forward(inference=True)) against the full eval forward.

Tolerances: in float64 the two paths must agree to 1e-12 (their only difference is which rows and
GEMM shapes are computed; fp64 rounding over a few hundred ops stays near 1e-15, while any semantic
slip moves the output by far more: a wrong query row or a missing sigmoid moved it by 1e-2 to 0.6).
In float32 each path is compared with the float64 full forward of the same weights: the pruned
path's largest error may be 2x the full fp32 forward's own error (the project's parity rule, "within 2x of what
PyTorch makes"), or 1e-6 absolute when that is larger: with one or two samples per batch the two
paths' rounding (different GEMM shapes) can differ by a few ulps by chance (seen: 1.6e-7 against
6.7e-8 for the full path, at logits of magnitude ~0.3).
"""

import pytest
import torch
from tiers import HAS_CUDA

from dmd_fast.model.config import get_preset
from dmd_fast.model.dmd import DMD, MODALITIES

DEV = "cuda" if HAS_CUDA else "cpu"
FP32_ATOL = 1e-6  # ~10 fp32 ulps of these O(0.1-1) logits; a semantic slip moves them by 1e-2 or more


def _model(backend, seed=0):
    """tiny preset (offset-causal mask on), every parameter perturbed (biases are not left at 0)."""
    torch.manual_seed(seed)
    model = DMD(get_preset("tiny"), backend=backend).to(DEV)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs(cfg, B=3, seed=1, dtype=torch.float64):
    """Random features with zero (padded) trailing frames, as MMSA data has."""
    g = torch.Generator().manual_seed(seed)
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    xs = []
    for T, d in ((tl, dl), (ta, da), (tv, dv)):
        x = torch.randn(B, T, d, generator=g, dtype=dtype)
        lengths = torch.randint(max(1, T // 3), T + 1, (B,), generator=g)
        x[torch.arange(T)[None, :] >= lengths[:, None]] = 0
        xs.append(x.to(DEV))
    return xs


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_pruned_forward_equals_full_eval_forward(backend):
    model64 = _model(backend).double()
    cfg = model64.config
    x64 = _inputs(cfg, B=2)
    with torch.no_grad():
        full64 = model64(*x64)["output_logit"]
        pruned64 = model64.predict(*x64)
        assert pruned64.shape == full64.shape == (2, 1)
        torch.testing.assert_close(pruned64, full64, rtol=0, atol=1e-12)
        torch.testing.assert_close(model64(*x64, inference=True)["output_logit"], pruned64, rtol=0, atol=0)
        model32 = model64.float()
        x32 = [x.float() for x in x64]
        err_full = (model32(*x32)["output_logit"].double() - full64).abs().max().item()
        err_pruned = (model32.predict(*x32).double() - full64).abs().max().item()
    bound = max(2 * err_full, FP32_ATOL)
    assert err_pruned <= bound, (err_pruned, err_full, bound)


def test_pruned_forward_skips_everything_output_logit_does_not_read():
    """No decoder, re-encoding, c_sim, proj_cosine or head other than the fusion head runs; the
    self-attention and memory encoders compute one query row in their last layer, the cross-modal
    encoders (whose every row feeds the memory encoders) all rows."""
    model = _model("reference")
    cfg = model.config
    called, rows = [], {}
    unused = [f"{p}_{m}" for m in MODALITIES for p in ("decoder", "proj_cosine", "align_c")]
    unused += [f"{p}_{m}_{lvl}" for m in MODALITIES for p in ("proj1", "proj2", "out_layer") for lvl in ("low", "high")]
    unused += ["proj1_c", "proj2_c", "out_layer_c"]
    for name in unused:
        getattr(model, name).register_forward_hook(lambda mod, inp, out, name=name: called.append(name))
    for name, enc in model.encoders().items():
        for i, layer in enumerate(enc.layers):
            layer.fc1.register_forward_hook(lambda mod, inp, out, key=(name, i): rows.__setitem__(key, inp[0].shape[0]))
    x = _inputs(cfg, dtype=torch.float32)
    model.predict(*x)
    assert called == []
    T = dict(zip("lav", cfg.conv_out_lens))
    for name, enc in model.encoders().items():
        last = len(enc.layers) - 1
        for i in range(len(enc.layers)):
            pruned = i == last and (name.startswith("self_attentions_c_") or name.endswith("_mem"))
            target = name[-1] if name.startswith("self_attentions") else name.split("_")[1]
            assert rows[(name, i)] == (1 if pruned else T[target]), (name, i, rows[(name, i)])
    model.train()
    model(*x)
    assert set(called) == set(unused)  # the hooks do fire on the full forward


def test_predict_refuses_training_mode_and_keeps_no_graph():
    model = _model("reference")
    x = _inputs(model.config, dtype=torch.float32)
    out = model.predict(*x)
    assert not out.requires_grad and out.grad_fn is None
    model.train()
    with pytest.raises(RuntimeError, match="training mode"):
        model.predict(*x)
    with pytest.raises(RuntimeError, match="training mode"):
        model(*x, inference=True)


def test_inference_path_traces_whole_under_torch_compile():
    """torch.compile(fullgraph=True) through the inference path (dynamo with the eager backend: a graph
    break would raise), same numbers as eager. (The Triton backend's traced path, the grouped custom op,
    is exercised by tests/test_export.py.)"""
    model = _model("reference")
    x = _inputs(model.config, dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        out = compiled(*x, inference=True)["output_logit"]
        torch.testing.assert_close(out, model.predict(*x), rtol=0, atol=0)


def test_inference_kernel_counts_pruned_below_full_forward():
    """launches --mode inference at the tiny preset: DMD.predict dispatches fewer kernels than the full
    eval forward on both backends, reads no host scalar, and launches per encoder layer group (2
    self-attention + 2 cross-modal + 3 memory layers) one in-projection, one attention and one
    post-attention block, plus one embedding launch per encoder group."""
    from dmd_fast.bench.launches import format_counts, inference_launch_counts

    res = inference_launch_counts("tiny", batch=1)
    b = res["backends"]
    for backend in ("reference", "triton"):
        assert b[f"{backend} predict"]["kernels"] < b[f"{backend} full_eval_forward"]["kernels"]
        assert b[f"{backend} predict"]["host_syncs"] == 0
    assert b["triton predict"]["triton_by_kernel"] == {
        "encoder_embed_fwd_kernel": 3,
        "encoder_in_proj_fwd_kernel": 7,
        "attention_fwd_kernel": 7,
        "encoder_ffn_fwd_kernel": 7,
        "linear_fwd_kernel": 1,  # the four gates
    }
    # exact: 25 Triton + 17 ATen (stem and decoupling convs, the c_fusion and gate concatenations, the
    # gates' sigmoid, the fusion head's proj1 → relu → proj2 + z → out_layer); a change is to explain
    assert b["triton predict"]["kernels"] == 42, b["triton predict"]
    assert res["reduction_vs_reference_full_forward"]["triton predict"] > 1.5
    assert "| triton predict |" in format_counts(res)
