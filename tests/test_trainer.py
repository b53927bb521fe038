"""Trainer: upstream accumulation/clipping, learning on synthetic data, resume after a kill."""

import json

import pytest
import torch

from dmd_fast.data.mmsa import make_loaders
from dmd_fast.data.synthetic import synthetic_datasets
from dmd_fast.model.config import get_preset
from dmd_fast.model.system import DMDSystem
from dmd_fast.train.checkpoint import CheckpointError, load_checkpoint
from dmd_fast.train.trainer import Trainer, TrainOptions

CFG = get_preset("tiny").replace(batch_size=8, update_epochs=2)


def _trainer(tmp, seed=3, epochs=3, n=(40, 16, 16), resume=False, backend="reference", init_seed=None, amp="none"):
    torch.manual_seed(seed if init_seed is None else init_seed)
    loaders = make_loaders(synthetic_datasets(CFG, *n, seed=seed), batch_size=CFG.batch_size, seed=seed)
    system = DMDSystem(CFG, backend=backend)
    return Trainer(
        system,
        loaders,
        TrainOptions(max_epochs=epochs, out_dir=str(tmp), device="cpu", log_every_epoch=False, resume=resume, amp=amp),
    )


def test_accumulation_window_and_clipping(tmp_path, monkeypatch):
    """Steps happen after every `update_epochs` batches; the trailing partial window is dropped."""
    tr = _trainer(tmp_path, epochs=1, n=(40, 8, 8))  # 5 batches of 8, window 2 → 2 steps
    steps = []
    real_step = tr.optimizer.step
    monkeypatch.setattr(tr.optimizer, "step", lambda *a, **k: (steps.append(1), real_step(*a, **k))[1])
    tr.train_epoch()
    assert len(steps) == 2
    grads = [p.grad for p in tr.system.parameters() if p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) <= CFG.grad_clip + 1e-7


def test_resume_after_kill_is_bitwise(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    ref_state = {k: v.clone() for k, v in full.system.state_dict().items()}
    ref_hist = [h["valid"]["Loss"] for h in full.history]

    killed = _trainer(tmp_path / "killed")
    real = killed.train_epoch

    def dies_in_epoch_3():
        if killed.epoch == 3:
            raise KeyboardInterrupt("simulated kill")
        return real()

    killed.train_epoch = dies_in_epoch_3
    with pytest.raises(KeyboardInterrupt):
        killed.fit()

    # a different init seed and a fresh RNG: everything must come from the checkpoint
    resumed = _trainer(tmp_path / "killed", init_seed=99, resume=True)
    torch.manual_seed(12345)
    resumed.fit()
    assert [h["valid"]["Loss"] for h in resumed.history] == ref_hist
    for k, v in resumed.system.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    lines = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_fp16_autocast_with_loss_scaling(tmp_path):
    """--amp fp16: autocast + ClipAwareLossScaler; trains, checkpoints the scale, resumes bitwise."""
    full = _trainer(tmp_path / "full", epochs=2, amp="fp16")
    assert full.scaler is not None and full.optimizer.param_groups[0]["fused"]
    full.fit()
    assert all(h["train"]["Loss"] == h["train"]["Loss"] for h in full.history)  # finite (checked by fit too)
    assert full.history[-1]["loss_scale"] == full.scaler.get_scale() > 0
    ref_state = {k: v.clone() for k, v in full.system.state_dict().items()}

    part = _trainer(tmp_path / "part", epochs=1, amp="fp16")
    part.fit()
    resumed = _trainer(tmp_path / "part", epochs=2, amp="fp16", init_seed=7, resume=True)
    resumed.fit()
    assert resumed.scaler.get_scale() == full.scaler.get_scale()
    for k, v in resumed.system.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    # a checkpoint without scaler state is refused by an fp16 run (and says why)
    plain = _trainer(tmp_path / "plain", epochs=1)
    plain.fit()
    with pytest.raises(CheckpointError, match="loss-scaler state"):
        load_checkpoint(tmp_path / "plain" / "last.pt", _trainer(tmp_path / "x", epochs=1, amp="fp16"))


def test_corrupt_or_mismatched_checkpoint(tmp_path):
    tr = _trainer(tmp_path, epochs=1)
    tr.fit()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(bad, tr)
    other_cfg = CFG.replace(d_model=8)
    torch.manual_seed(0)
    other = Trainer(
        DMDSystem(other_cfg, backend="reference"),
        tr.loaders,
        TrainOptions(max_epochs=1, out_dir=str(tmp_path / "o"), device="cpu", log_every_epoch=False),
    )
    with pytest.raises(CheckpointError, match="different model config"):
        load_checkpoint(tmp_path / "last.pt", other)


def test_training_learns_synthetic(tmp_path):
    """A few epochs on synthetic data beat the constant predictor's validation L1 clearly."""
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    datasets = synthetic_datasets(cfg, 480, 96, 96, seed=0)
    loaders = make_loaders(datasets, batch_size=16, seed=0)
    labels = torch.cat([b["label"] for b in loaders["valid"]]).view(-1)
    constant_l1 = (labels - labels.median()).abs().mean().item()
    tr = Trainer(
        DMDSystem(cfg, backend="reference"),
        loaders,
        TrainOptions(max_epochs=10, out_dir=str(tmp_path), device="cpu", log_every_epoch=False),
    )
    result = tr.fit()
    assert result.best_valid_loss < 0.8 * constant_l1
    assert result.test["Non0_acc_2"] > 0.65  # chance: 0.5
