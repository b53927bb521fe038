"""``torch.export`` and AOTInductor packages of DMD's pruned inference forward, and their loader
(``dmd_fast.load_exported``).

An exported file takes (text (B, T_l, d_l), audio (B, T_a, d_a), vision (B, T_v, d_v)) and returns
output_logit (B, 1), at the static batch size B it was exported with or, with ``dynamic_batch``, at any
B >= 1. Two kinds, one ``.pt2`` extension:

- ``program``: a ``torch.export`` ExportedProgram, run by PyTorch's Python interpreter of the graph.
  On the Triton backend the grouped attention stays one custom op (``dmd_fast::attention_fwd_grouped``,
  registered with a fake implementation in :mod:`dmd_fast.ops.attention`), so loading such a program
  needs dmd_fast imported; the reference backend exports plain ATen ops.
- ``aoti``: that program compiled ahead of time by AOTInductor into a shared library (C++ kernels on
  the CPU, Triton kernels on CUDA) inside the package, weights included; no Python graph at run time.
  Reference backend only: the Triton backend's grouped launchers build their descriptor tables from
  host pointers, which AOTInductor cannot trace (``torch.library.triton_op`` would need a per-problem
  launch path, not built).

A JSON record (kind, config, batch size, backend, device, torch version) travels inside the file
(``<archive>/extra/dmd_fast_export.json``).
"""

from __future__ import annotations

import json
import os
import zipfile

import torch
from torch import nn

from dmd_fast.model.config import DMDConfig
from dmd_fast.model.dmd import DMD

META_FILE = "dmd_fast_export.json"
FORMAT = "dmd_fast.export/1"
KINDS = ("program", "aoti")
MAX_DYNAMIC_BATCH = 4096  # upper bound of the symbolic batch of a ``dynamic_batch`` export


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


def _check_batch(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")


def export_model(model: DMD, batch_size: int = 1, dynamic_batch: bool = False):
    """``torch.export.export`` of ``model``'s inference forward → ExportedProgram, at a static
    ``batch_size``, or with ``dynamic_batch`` at any batch size 1 .. MAX_DYNAMIC_BATCH (traced at
    max(2, batch_size): an example batch of 1 would specialise the program to 1)."""
    _check_batch(batch_size)
    if model.training:
        raise RuntimeError("export: the model is in training mode; call .eval() first")
    device = next(model.parameters()).device
    example = example_inputs(model.config, max(2, batch_size) if dynamic_batch else batch_size, device)
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
        dynamic = ({0: batch}, {0: batch}, {0: batch})
    with torch.no_grad():
        model.predict(*example)  # fills the positional-embedding caches first: export sees no attribute writes
        return torch.export.export(InferenceModule(model), example, dynamic_shapes=dynamic)


def _record(kind: str, model: DMD, batch_size: int, dynamic_batch: bool) -> dict:
    return {
        "format": FORMAT,
        "kind": kind,
        "config": model.config.to_dict(),
        "batch_size": batch_size,
        "dynamic_batch": bool(dynamic_batch),
        "backend": model.backend,
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
    }


def _make_parent(path) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


def save_exported(program, path, model: DMD, batch_size: int, dynamic_batch: bool = False) -> dict:
    """Write ``program`` to ``path`` (``torch.export.save``) with the record; returns the record."""
    meta = _record("program", model, batch_size, dynamic_batch)
    _make_parent(path)
    torch.export.save(program, path, extra_files={META_FILE: json.dumps(meta)})
    return meta


def save_aoti(program, path, model: DMD, batch_size: int, dynamic_batch: bool = False) -> dict:
    """Compile ``program`` with AOTInductor into the package ``path`` (minutes on a small CPU: a C++
    build) and add the record; returns the record. Reference backend only (module docstring)."""
    if model.backend != "reference":
        raise ValueError(
            f"--aoti: expected a reference-backend model, got backend {model.backend!r}; the Triton backend's "
            "grouped launchers build descriptor tables from host pointers, which AOTInductor cannot compile "
            "(export it without --aoti, or pass --backend reference)"
        )
    meta = _record("aoti", model, batch_size, dynamic_batch)
    _make_parent(path)
    out = torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(path))
    with zipfile.ZipFile(out, "a") as z:
        archive = z.namelist()[0].split("/")[0]
        z.writestr(f"{archive}/extra/{META_FILE}", json.dumps(meta))
    return meta


class ExportedDMD:
    """A loaded export: ``__call__(text, audio, vision)`` → output_logit (B, 1), shapes checked first.

    Attributes: ``kind`` ("program" or "aoti"), ``program`` (the ExportedProgram; None for "aoti"),
    ``config`` (DMDConfig), ``batch_size`` (None with a dynamic batch), ``meta``.
    """

    def __init__(self, run, meta: dict, path, program=None):
        self.program = program
        self.meta = meta
        self.kind = meta.get("kind", "program")
        self.config = DMDConfig.from_dict(meta["config"])
        self.batch_size = None if meta.get("dynamic_batch") else int(meta["batch_size"])
        self.path = path
        self._run = run

    def __call__(self, text, audio, vision):
        (tl, ta, tv), (dl, da, dv) = self.config.seq_lens, self.config.feature_dims
        B = self.batch_size
        if B is None:  # dynamic batch: the text's batch, 1 .. MAX_DYNAMIC_BATCH, shared by the others
            B = text.shape[0] if torch.is_tensor(text) and text.dim() == 3 else -1
            if not 1 <= B <= MAX_DYNAMIC_BATCH:
                B = "B"
        where = f"batch size {self.batch_size}" if self.batch_size is not None else f"any batch 1..{MAX_DYNAMIC_BATCH}"
        want_text = (B, 3, tl) if self.config.use_bert else (B, tl, dl)
        for name, x, want in (
            ("text", text, want_text),
            ("audio", audio, (B, ta, da)),
            ("vision", vision, (B, tv, dv)),
        ):
            if not torch.is_tensor(x) or tuple(x.shape) != want:
                got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                raise ValueError(
                    f"{name}: expected shape {want} ({self.path} was exported at {where}, "
                    f"preset {self.config.name!r}), got {got}"
                )
        return self._run(text, audio, vision)


def _read_record(path):
    """The dmd_fast record inside a ``.pt2`` zip archive, or None when there is none."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(f"/extra/{META_FILE}")]
        if not names:
            return None
        try:
            return json.loads(z.read(names[0]))
        except ValueError:
            return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def load_exported(path) -> ExportedDMD:
    """Load a ``dmd-fast export`` file (either kind); the custom ops a program may call are registered
    by importing dmd_fast.ops."""
    import dmd_fast.ops.attention  # noqa: F401  (registers dmd_fast::attention_* before deserialising)

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model: {path!r} not found (expected a .pt2 file from dmd-fast export)")
    try:
        meta = _read_record(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(
            f"exported model: {path!r} could not be loaded ({_first_line(exc)}); expected a .pt2 file "
            "from dmd-fast export"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind", "program") not in KINDS:
        raise ValueError(
            f"exported model: {path!r} has no dmd_fast record ({META_FILE}); expected a file "
            f"written by dmd-fast export (format {FORMAT!r})"
        )
    try:
        if meta.get("kind", "program") == "aoti":
            return ExportedDMD(torch._inductor.aoti_load_package(path), meta, path)
        program = torch.export.load(path)
    except Exception as exc:
        raise ValueError(
            f"exported model: {path!r} could not be loaded ({_first_line(exc)}); expected a .pt2 file "
            "from dmd-fast export"
        ) from exc
    return ExportedDMD(program.module(), meta, path, program=program)
