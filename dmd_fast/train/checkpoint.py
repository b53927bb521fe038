"""Atomic, resumable checkpoints (temp file + rename).

A full checkpoint holds the model (DMD + GD units), optimizer, scheduler, every RNG state
(torch CPU/CUDA, numpy, random), the trainer's epoch/best state and the train loader's shuffle
generator, taken at an epoch boundary, so a resumed run replays exactly what an uninterrupted
one would do next.
"""

from __future__ import annotations

import os
import pathlib
import random

import numpy as np
import torch

from dmd_fast import validation as check

FORMAT = "dmd_fast.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupt, of another format, or for a different model."""


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path, trainer, weights_only: bool = False) -> None:
    obj = {"format": FORMAT, "config": trainer.system.config.to_dict(), "model": trainer.system.state_dict()}
    if not weights_only:
        gen = trainer.loaders["train"].generator
        obj.update(
            optimizer=trainer.optimizer.state_dict(),
            scheduler=trainer.scheduler.state_dict(),
            rng=_rng_state(),
            trainer=trainer.state(),
            loader_generator=gen.get_state() if gen is not None else None,
            scaler=trainer.scaler.state_dict() if getattr(trainer, "scaler", None) is not None else None,
        )
    atomic_save(obj, path)


WEIGHT_KEYS = ("config", "model")
FULL_KEYS = WEIGHT_KEYS + ("optimizer", "scheduler", "rng", "trainer")
_RNG_KEYS = ("torch", "numpy", "random")
_TRAINER_KEYS = ("epoch", "best_valid", "best_epoch", "history")


def read_checkpoint(path, keys=WEIGHT_KEYS) -> dict:
    """The checkpoint dict at ``path`` with every key in ``keys`` (a CheckpointError naming the file and
    the missing key otherwise); its config is checked to build a DMDConfig."""
    path = pathlib.Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint: {path} could not be read ({type(exc).__name__}: {exc}); "
            "it is corrupt or not a dmd_fast checkpoint"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"checkpoint: {path} has format {got!r}, expected {FORMAT!r}")
    check.require_keys(obj, keys, f"checkpoint: {path}", CheckpointError)
    if "rng" in keys:
        check.require_keys(obj["rng"], _RNG_KEYS, f"checkpoint: {path}: 'rng'", CheckpointError)
    if "trainer" in keys:
        check.require_keys(obj["trainer"], _TRAINER_KEYS, f"checkpoint: {path}: 'trainer'", CheckpointError)
    if "config" in keys:
        from dmd_fast.model.config import DMDConfig

        try:
            check.require_keys(obj["config"], (), f"checkpoint: {path}: 'config'", CheckpointError)
            DMDConfig.from_dict(obj["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint: {path}: 'config' is not a valid DMD config ({exc})") from None
    return obj


def load_checkpoint(path, trainer, weights_only: bool = False) -> None:
    """Restore ``trainer`` from ``path``; a checkpoint of another model config is refused."""
    obj = read_checkpoint(path, WEIGHT_KEYS if weights_only else FULL_KEYS)
    mine = trainer.system.config.to_dict()
    if obj["config"] != mine:
        diff = sorted(k for k in set(mine) | set(obj["config"]) if mine.get(k) != obj["config"].get(k))
        raise CheckpointError(f"checkpoint: {path} was written for a different model config (differs in {diff})")
    try:
        trainer.system.load_state_dict(obj["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint: {path}: model weights do not match ({str(exc).splitlines()[0]})") from exc
    if weights_only:
        return
    scaler = getattr(trainer, "scaler", None)
    if scaler is not None and obj.get("scaler") is None:
        raise CheckpointError(
            f"checkpoint: {path} has no fp16 loss-scaler state (it was written by a run "
            "without --amp fp16); resume with the same --amp"
        )
    try:
        trainer.optimizer.load_state_dict(obj["optimizer"])
        trainer.scheduler.load_state_dict(obj["scheduler"])
        _set_rng_state(obj["rng"])
        if scaler is not None:
            scaler.load_state_dict(obj["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint: {path}: optimizer, scheduler or RNG state does not load "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    st = obj["trainer"]
    trainer.epoch, trainer.best_valid, trainer.best_epoch = st["epoch"], st["best_valid"], st["best_epoch"]
    trainer.history = list(st["history"])
    gen = trainer.loaders["train"].generator
    if gen is not None and obj.get("loader_generator") is not None:
        gen.set_state(obj["loader_generator"])
