"""``torch.export`` of DMD's pruned inference forward, and its loader (``dmd_fast.load_exported``).

The exported program takes (text (B, T_l, d_l), audio (B, T_a, d_a), vision (B, T_v, d_v)) at the
static batch size B it was exported with and returns output_logit (B, 1). On the Triton backend the
grouped attention stays one custom op (``dmd_fast::attention_fwd_grouped``, registered with a fake
implementation in :mod:`dmd_fast.ops.attention`), so loading such a program needs dmd_fast
imported; the reference backend exports plain ATen ops. A JSON record (config, batch size, backend,
torch version) travels inside the ``.pt2`` file.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from dmd_fast.model.config import DMDConfig
from dmd_fast.model.dmd import DMD

META_FILE = "dmd_fast_export.json"
FORMAT = "dmd_fast.export/1"


class InferenceModule(nn.Module):
    """forward(text, audio, vision) → output_logit (B, 1) by ``DMD.inference_logit`` (what is exported)."""

    def __init__(self, dmd: DMD):
        super().__init__()
        self.dmd = dmd

    def forward(self, text, audio, vision):
        return self.dmd.inference_logit(text, audio, vision)


def example_inputs(cfg: DMDConfig, batch_size: int, device, seed: int = 0) -> tuple:
    """Random (text, audio, vision) of the preset's shapes at ``batch_size`` (token ids with BERT)."""
    g = torch.Generator().manual_seed(seed)
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    if cfg.use_bert:
        ids = torch.randint(1000, 2000, (batch_size, 1, tl), generator=g).float()
        text = torch.cat([ids, torch.ones_like(ids), torch.zeros_like(ids)], dim=1)
    else:
        text = torch.randn(batch_size, tl, dl, generator=g)
    audio, vision = torch.randn(batch_size, ta, da, generator=g), torch.randn(batch_size, tv, dv, generator=g)
    return tuple(t.to(device) for t in (text, audio, vision))


def export_model(model: DMD, batch_size: int = 1):
    """``torch.export.export`` of ``model``'s inference forward at a static ``batch_size`` → ExportedProgram."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")
    if model.training:
        raise RuntimeError("export: the model is in training mode; call .eval() first")
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.export.export(InferenceModule(model), example_inputs(model.config, batch_size, device))


def save_exported(program, path, model: DMD, batch_size: int) -> dict:
    """Write ``program`` to ``path`` (``torch.export.save``) with the record; returns the record."""
    meta = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "batch_size": batch_size,
        "backend": model.backend,
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
    }
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    torch.export.save(program, path, extra_files={META_FILE: json.dumps(meta)})
    return meta


class ExportedDMD:
    """A loaded export: ``__call__(text, audio, vision)`` → output_logit (B, 1), shapes checked first.

    Attributes: ``program`` (the ExportedProgram), ``config`` (DMDConfig), ``batch_size``, ``meta``.
    """

    def __init__(self, program, meta: dict, path):
        self.program = program
        self.meta = meta
        self.config = DMDConfig.from_dict(meta["config"])
        self.batch_size = int(meta["batch_size"])
        self.path = path
        self._module = program.module()

    def __call__(self, text, audio, vision):
        (tl, ta, tv), (dl, da, dv) = self.config.seq_lens, self.config.feature_dims
        B = self.batch_size
        want_text = (B, 3, tl) if self.config.use_bert else (B, tl, dl)
        for name, x, want in (
            ("text", text, want_text),
            ("audio", audio, (B, ta, da)),
            ("vision", vision, (B, tv, dv)),
        ):
            if not torch.is_tensor(x) or tuple(x.shape) != want:
                got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                raise ValueError(
                    f"{name}: expected shape {want} ({self.path} was exported at batch size {B}, "
                    f"preset {self.config.name!r}), got {got}"
                )
        return self._module(text, audio, vision)


def load_exported(path) -> ExportedDMD:
    """Load a ``dmd-fast export`` file; the custom ops it may call are registered by importing dmd_fast.ops."""
    import dmd_fast.ops.attention  # noqa: F401  (registers dmd_fast::attention_* before deserialising)

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model: {path!r} not found (expected a .pt2 file from dmd-fast export)")
    extra = {META_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as exc:
        raise ValueError(
            f"exported model: {path!r} could not be loaded ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); expected a .pt2 file "
            "from dmd-fast export"
        ) from exc
    try:
        meta = json.loads(extra[META_FILE])
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"exported model: {path!r} has no dmd_fast record ({META_FILE}); expected a file "
            f"written by dmd-fast export (format {FORMAT!r})"
        )
    return ExportedDMD(program, meta, path)
