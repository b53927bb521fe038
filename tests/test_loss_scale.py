"""fp16 loss scaling with upstream's per-backward clipping (dmd_fast.train.loss_scale)."""

import pytest
import torch

from dmd_fast.train.loss_scale import ClipAwareLossScaler


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g) * 3, torch.randn(8, 1, generator=g) * 5) for _ in range(n)]


def _train(model, scaler, batches, clip, window=2):
    """Upstream's window: zero, then per batch backward + clip (-1: off, no clip call), step after
    `window` batches."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    params = list(model.parameters())
    for i, (x, y) in enumerate(batches):
        if i % window == 0:
            opt.zero_grad(set_to_none=False)
            if scaler is not None:
                scaler.begin_window()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if scaler is None:
            loss.backward()
            if clip != -1.0:
                torch.nn.utils.clip_grad_value_(params, clip)
        else:
            scaler.scale(loss).backward()
            scaler.clip_(params, clip)
        if i % window == window - 1:
            scaler.step(opt) if scaler is not None else opt.step()
    return opt


@pytest.mark.parametrize("clip", [0.05, -1.0])
def test_scaled_training_equals_unscaled_bitwise(clip):
    """fp32 math: scaling by a power of two, clipping the unscaled sum, and unscaling in Adam are exact."""
    batches = _batches(6)
    ref, ours = _model(), _model()
    _train(ref, None, batches, clip)
    scaler = ClipAwareLossScaler("cpu", init_scale=2.0**10)
    _train(ours, scaler, batches, clip)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    # the clip really bites at these values (otherwise this test could not tell clipped from unclipped)
    if clip > 0:
        ours.zero_grad(set_to_none=False)
        x, y = batches[0]
        scaler.scale(torch.nn.functional.mse_loss(ours(x), y)).backward()
        scaler.clip_(ours.parameters(), clip)
        clip32 = torch.tensor(clip, dtype=torch.float32).item()
        assert max(p.grad.abs().max().item() for p in ours.parameters()) == clip32 * scaler.get_scale()


def _one_batch_window(model, scaler, opt, overflow=False, step=True):
    """Zero, one scaled backward (its loss times inf when `overflow`) + clip, then step unless not `step`."""
    x, y = _batches(1)[0]
    opt.zero_grad(set_to_none=False)
    scaler.begin_window()
    loss = torch.nn.functional.mse_loss(model(x), y)
    scaler.scale(loss * float("inf") if overflow else loss).backward()
    scaler.clip_(model.parameters(), 0.05)  # the clamp must not hide an inf
    if step:
        scaler.step(opt)


def _setup():
    model = _model()
    return (
        model,
        ClipAwareLossScaler("cpu", init_scale=2.0**10),
        torch.optim.Adam(model.parameters(), lr=1e-2, fused=True),
    )


def test_overflow_skips_the_step_and_backs_off():
    model, scaler, opt = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    _one_batch_window(model, scaler, opt, overflow=True)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    assert all(s["step"].item() == 0 for s in opt.state.values())
    assert scaler.get_scale() == 2.0**9
    _one_batch_window(model, scaler, opt)  # a clean window afterwards updates the parameters
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0**9


def test_overflow_in_a_dropped_window_does_not_skip_the_next_step():
    """Upstream drops a trailing partial window without a step; its overflow must not leak into the
    next window (begin_window at the zeroing clears it)."""
    model, scaler, opt = _setup()
    _one_batch_window(model, scaler, opt, overflow=True, step=False)  # dropped window: no step
    before = [p.detach().clone() for p in model.parameters()]
    _one_batch_window(model, scaler, opt)
    assert not any(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0**10


def test_growth_after_interval_and_state_roundtrip():
    model = _model()
    scaler = ClipAwareLossScaler("cpu", init_scale=4.0, growth_interval=2)
    _train(model, scaler, _batches(4), 0.05, window=1)
    assert scaler.get_scale() == 16.0  # 4 clean steps, doubled every 2
    other = ClipAwareLossScaler("cpu")
    other.load_state_dict(scaler.state_dict())
    assert other.get_scale() == 16.0 and other.growth_interval == 2
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({"scale": torch.tensor(1.0)})


def test_bad_arguments():
    with pytest.raises(ValueError, match="backoff_factor"):
        ClipAwareLossScaler("cpu", backoff_factor=1.5)
    with pytest.raises(ValueError, match="init_scale"):
        ClipAwareLossScaler("cpu", init_scale=0)
    with pytest.raises(ValueError, match="powers of two"):
        ClipAwareLossScaler("cpu", init_scale=1000.0)
    with pytest.raises(ValueError, match="growth_factor"):
        ClipAwareLossScaler("cpu", growth_factor=1.5)
    model = _model()
    scaler = ClipAwareLossScaler("cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="must be fused"):
        scaler.step(opt)
