"""A DMD model for inference from a dmd_fast checkpoint (``OUT/best.pt`` or ``OUT/last.pt``).

Only the DMD weights (``dmd.*`` of the checkpoint's DMDSystem) are loaded, strictly; the GD units are
training-only. Every failure is a :class:`~dmd_fast.train.checkpoint.CheckpointError` naming the file
and what is wrong with it.
"""

from __future__ import annotations

import torch

from dmd_fast.model.config import DMDConfig
from dmd_fast.model.dmd import DMD
from dmd_fast.train.checkpoint import CheckpointError, read_checkpoint

PREFIX = "dmd."


def checkpoint_config(ckpt: dict, path) -> DMDConfig:
    """The model config stored in a read checkpoint (a BERT model is rebuilt from its config, not its folder)."""
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"checkpoint: {path} has no model config (expected a dict under 'config')")
    try:
        cfg = DMDConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {path}: its config does not describe a DMD model ({exc})") from exc
    return cfg.replace(bert_path=None) if cfg.use_bert else cfg


def load_model(path, backend: str = "auto", device="cpu") -> DMD:
    """DMD (eval mode, on ``device``) with the weights of checkpoint ``path``."""
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint: {path} has no model weights (expected a state_dict under 'model')")
    dmd_state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not dmd_state:
        raise CheckpointError(
            f"checkpoint: {path}: no DMD weights (no key starts with {PREFIX!r}; got e.g. {sorted(state)[:3]})"
        )
    model = DMD(cfg, backend=backend)
    try:
        model.load_state_dict(dmd_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint: {path}: DMD weights do not match preset {cfg.name!r} ({str(exc).splitlines()[0]})"
        ) from exc
    return model.to(torch.device(device)).eval()
