"""Convergence (Liger-style): the Triton backend follows the reference backend's loss curve.

GPU tier: 200 optimizer steps of the full DMD step (MOSI-aligned preset, dropout 0, same seed and
batches). On the CPU the same check runs for a few steps of the tiny preset under the interpreter.
"""

import pytest
import torch
from tiers import HAS_CUDA

from dmd_fast.data.mmsa import make_loaders
from dmd_fast.data.synthetic import synthetic_datasets
from dmd_fast.model.config import get_preset
from dmd_fast.model.system import DMDSystem

NO_DROPOUT = dict(
    attn_dropout=0.0,
    attn_dropout_a=0.0,
    attn_dropout_v=0.0,
    embed_dropout=0.0,
    text_dropout=0.0,
    output_dropout=0.0,
    relu_dropout=0.0,
    res_dropout=0.0,
)


def _curves(cfg, steps, device, n_train):
    batches = list(
        make_loaders(synthetic_datasets(cfg, n_train, 4, 4, seed=0), batch_size=cfg.batch_size, seed=0)["train"]
    )
    curves = {}
    for backend in ("reference", "triton"):
        torch.manual_seed(1111)
        system = DMDSystem(cfg, backend=backend).to(device).train()
        opt = torch.optim.Adam(system.parameters(), lr=cfg.learning_rate)
        losses = []
        for step in range(steps):
            b = batches[step % len(batches)]
            opt.zero_grad()
            _, L = system(*(b[k].to(device) for k in ("text", "audio", "vision", "label")))
            L["total"].backward()
            torch.nn.utils.clip_grad_value_(system.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(L["total"].detach())
        curves[backend] = torch.stack(losses).cpu()
    return curves


def test_convergence_tiny_interpreter():
    cfg = get_preset("tiny").replace(batch_size=4, **NO_DROPOUT)
    c = _curves(cfg, 4, "cuda" if HAS_CUDA else "cpu", 16)
    torch.testing.assert_close(c["triton"], c["reference"], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_gpu_convergence_200_steps():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = get_preset("mosi-aligned").replace(**NO_DROPOUT)
    c = _curves(cfg, 200, "cuda", 16 * 20)
    assert c["reference"][-20:].mean() < 0.8 * c["reference"][:20].mean()  # it trains
    torch.testing.assert_close(c["triton"], c["reference"], rtol=2e-3, atol=1e-4)
