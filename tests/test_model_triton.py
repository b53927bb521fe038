"""The DMD model on the Triton kernels (interpreter on the CPU): upstream parity and grouped launches."""

import torch
from tiers import HAS_CUDA, fixture_path

from dmd_fast.model.config import get_preset
from dmd_fast.model.system import DMDSystem
from dmd_fast.parity import run_parity

DEV = "cuda" if HAS_CUDA else "cpu"


def test_parity_triton_backend():
    """dmd-fast parity --backend triton: outputs, losses and gradients within 1e-4 of upstream."""
    report = run_parity(fixture_path(), backend="triton", device=DEV)
    assert report.passed, report.table()
    assert max(g.worst for g in report.groups) < 1e-4


def _batch(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    x = (torch.randn(B, tl, dl, generator=g), torch.randn(B, ta, da, generator=g), torch.randn(B, tv, dv, generator=g))
    return [t.to(DEV) for t in x] + [torch.randn(B, 1, generator=g).to(DEV)]


def _grouped_vs_separate(cfg):
    torch.manual_seed(0)
    ref = DMDSystem(cfg, backend="reference").to(DEV)
    results = {}
    for name, grouped in (("separate", False), ("grouped", True)):
        sys_ = DMDSystem(cfg, backend="triton").to(DEV)
        sys_.dmd.grouped = grouped
        sys_.load_state_dict(ref.state_dict())
        sys_.train()
        out, losses = sys_(*_batch(cfg))
        losses["total"].backward()
        results[name] = (out, {n: p.grad.clone() for n, p in sys_.named_parameters() if p.grad is not None})
    ref.train()
    out_r, losses_r = ref(*_batch(cfg))
    losses_r["total"].backward()
    grads_r = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    return results["separate"], results["grouped"], (out_r, grads_r)


def test_grouped_fused_layers_equal_separate_and_reference():
    """Grouped encoders run fused layer kernels (fp32, another summation order): close to the separate
    eager layers and to the reference."""
    from dmd_fast.nn.grouped import fused_layers_apply

    cfg = get_preset("tiny").replace(attn_dropout=0.0, text_dropout=0.0, output_dropout=0.0)
    probe = DMDSystem(cfg, backend="triton").to(DEV).train()
    assert fused_layers_apply(list(probe.dmd.encoders().values())[:3])
    (out_s, g_s), (out_g, g_g), (out_r, grads_r) = _grouped_vs_separate(cfg)
    for k in out_r:
        torch.testing.assert_close(out_g[k], out_s[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out_g[k], out_r[k], rtol=1e-4, atol=1e-5)
    assert g_g.keys() == g_s.keys() == grads_r.keys()
    for n in grads_r:
        torch.testing.assert_close(g_g[n], g_s[n], rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(g_g[n], grads_r[n], rtol=1e-3, atol=1e-5)


def test_grouped_unfused_layers_equal_separate_bitwise(monkeypatch):
    """Without the fused layers (e.g. residual dropout > 0) and the grouped heads, grouped attention
    launches only: the same kernels in the same order as separate encoders, so bitwise equal."""
    import dmd_fast.model.dmd as dmd_mod
    import dmd_fast.nn.grouped as grouped

    monkeypatch.setattr(grouped, "fused_layers_apply", lambda encoders: False)
    monkeypatch.setattr(dmd_mod, "grouped_heads_apply", lambda x: False)
    cfg = get_preset("tiny").replace(attn_dropout=0.0, text_dropout=0.0, output_dropout=0.0)
    (out_s, g_s), (out_g, g_g), _ = _grouped_vs_separate(cfg)
    for k in out_s:
        torch.testing.assert_close(out_g[k], out_s[k], rtol=0, atol=0)
    for n in g_s:
        torch.testing.assert_close(g_g[n], g_s[n], rtol=0, atol=0)


def test_train_step_launches_and_no_host_sync():
    """A full DMD step (forward, every loss, backward) on the Triton backend: no host scalar read
    (no device sync on a GPU) and, per grouped encoder layer, 3 forward launches (LN0 + in-projection,
    attention, post-attention block) and 6 backward (2 each), one embedding launch each way per encoder
    group, plus one GD launch per unit. Counted under
    dispatch; ATen kernels are pinned by the whole-step count in tests/test_bench_breakdown.py."""
    from dmd_fast.bench.launches import count_launches, dmd_kernels

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    system = DMDSystem(cfg, backend="triton").to(DEV).train()
    batch = _batch(cfg, B=2)
    _, losses = system(*batch)
    losses["total"].backward()  # warm: compile, descriptor tables
    with count_launches(*dmd_kernels()) as c:
        _, losses = system(*batch)
        losses["total"].backward()
    assert c.syncs == [], c.syncs
    # three groups (3 self-attention, 6 cross-modal, 3 memory encoders), one launch per layer each
    per_direction = 2 * cfg.nlevels + max(cfg.nlevels, 3)
    forward = ("encoder_in_proj_fwd_kernel", "attention_fwd_kernel", "encoder_ffn_fwd_kernel")
    backward = (
        "encoder_in_proj_bwd_kernel",
        "encoder_in_proj_bwd_reduce_kernel",
        "attention_bwd_dq_kernel",
        "attention_bwd_dkv_kernel",
        "encoder_ffn_bwd_kernel",
        "encoder_ffn_reduce_kernel",
    )
    for name in forward + backward:
        assert c.triton.count(name) == per_direction, (name, c.triton)
    assert c.triton.count("graph_distill_fwd_kernel") == 2
    # one embedding launch forward and one backward per encoder group, every stream of the group in it
    assert c.triton.count("encoder_embed_fwd_kernel") == c.triton.count("encoder_embed_bwd_kernel") == 3
    # the fused loss terms: 2 forward launches (partial sums, reduction), 1 backward
    assert c.triton.count("loss_terms_partial_kernel") == c.triton.count("loss_terms_reduce_kernel") == 1
    assert c.triton.count("loss_terms_bwd_kernel") == 1
    # the margin loss: one launch each way
    assert c.triton.count("margin_loss_fwd_kernel") == c.triton.count("margin_loss_bwd_kernel") == 1
    # the heads: three levels of grouped linears, one launch each way per level
    assert c.triton.count("linear_fwd_kernel") == c.triton.count("linear_bwd_kernel") == 3
    assert len(c.triton) == 9 * per_direction + 2 + 6 + 3 + 2 + 6


def test_fused_layers_take_residual_and_relu_dropout(monkeypatch):
    """Residual and ReLU dropout > 0 stay on the fused path (in-kernel Philox), a training step is finite."""
    import dmd_fast.nn.grouped as grouped

    calls = []
    run = grouped._run_fused
    monkeypatch.setattr(grouped, "_run_fused", lambda *a, **k: calls.append(1) or run(*a, **k))
    cfg = get_preset("tiny").replace(res_dropout=0.1, relu_dropout=0.2)
    torch.manual_seed(0)
    system = DMDSystem(cfg, backend="triton").to(DEV).train()
    _, losses = system(*_batch(cfg, B=2))
    losses["total"].backward()
    assert len(calls) == 3  # the three encoder groups
    assert torch.isfinite(losses["total"]).all()
    assert all(torch.isfinite(p.grad).all() for p in system.parameters() if p.grad is not None)


def test_fused_runs_draw_one_seed_and_read_shared_inputs_in_place(monkeypatch):
    """Training with every dropout on: one seed draw (one randint) per fused encoder-group run, the embedding
    reads the permuted (T, B, E) features without copies and each distinct tensor once (the cross-modal
    group's 18 streams read 3 tensors); a step repeats under torch.manual_seed and differs under another."""
    import dmd_fast.kernels.encoder_embed as ke
    from dmd_fast.bench.launches import count_launches, dmd_kernels

    calls = []
    launch = ke.embed_fwd_grouped
    monkeypatch.setattr(ke, "embed_fwd_grouped", lambda xs, index, *a, **k: calls.append((xs, index)) or launch(
        xs, index, *a, **k))  # fmt: skip
    cfg = get_preset("tiny").replace(embed_dropout=0.2, res_dropout=0.1, relu_dropout=0.1)
    torch.manual_seed(0)
    system = DMDSystem(cfg, backend="triton").to(DEV).train()
    batch = _batch(cfg, B=2)
    losses = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        with count_launches(*dmd_kernels()) as c:
            _, loss = system(*batch)
        losses.append(loss["total"].detach())
        assert sum("randint" in op for op in c.aten_ops) == 3, "one seed draw per encoder group"
    assert torch.equal(losses[0], losses[1]) and not torch.equal(losses[0], losses[2])
    c_group, cross, mem = calls[-3:]
    assert [(len(xs), len(index)) for xs, index in (c_group, cross, mem)] == [(3, 3), (3, 18), (3, 3)]
    assert all(x.stride(2) != 1 for xs, _ in (c_group, cross) for x in xs), "permuted features, not copies"
