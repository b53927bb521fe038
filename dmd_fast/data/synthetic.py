"""Synthetic data in the MMSA "Processed" schema (see :mod:`dmd_fast.data.mmsa`).

Generative model (per sample, modality m in L/A/V, latent size k_m = min(8, d_m)):

* latent z_m ~ N(0, I_{k_m}); label signal s_m = w_m . z_m with |w_m| = 1 (unit variance);
* valid frames: x_m[t] = z_m A_m / sqrt(k_m) + frame_noise * eps_t  (A_m fixed (k_m, d_m)),
  frames at t >= length are exactly 0 (right padding);
* label = round_to_0.2(clip(c (s_l + s_a + s_v) + label_noise * eps, -3, 3)), c = 1.5/sqrt(3).

The label therefore needs all three modalities: a linear fit on the time-averaged valid frames
of one modality explains about a third of the label variance, all three together nearly all.
Rounding to the 0.2 grid (MOSI labels are means of 5 annotator scores) gives exact ties and
about 5% exact zeros. Projections (A_m, w_m) depend only on ``seed``; each split's samples come
from their own stream, so changing ``n_train`` leaves valid/test unchanged.

Lengths: with T_l == T_a == T_v (aligned) one length per sample is shared by all modalities;
otherwise each modality draws its own. Lengths are uniform in [ceil(0.2 T), T].
``text_bert`` holds [CLS]=101 ... [SEP]=102 with random token ids (not tied to the label).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dmd_fast import validation as check

from .mmsa import SPLITS, MMSADataset, datasets_from_splits, resolve_shapes

__all__ = ["make_synthetic", "synthetic_datasets"]

_LATENT = 8
_SIGNAL_SCALE = 1.5 / math.sqrt(3.0)  # label std ~1.5 before clipping: ~4% at +-3, ~5% exact 0


def _shapes(preset: Any) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    shp = resolve_shapes(preset, argname="preset_name_or_dims")
    if shp["feature_dims"] is None or shp["seq_lens"] is None:
        raise ValueError(
            "preset_name_or_dims: synthetic data needs both feature_dims (dl, da, dv) and seq_lens "
            f"(Tl, Ta, Tv); received {shp}"
        )
    return shp["feature_dims"], shp["seq_lens"]  # type: ignore[return-value]


def _lengths(rng: np.random.Generator, n: int, T: int) -> np.ndarray:
    lo = max(1, math.ceil(0.2 * T))
    return rng.integers(lo, T + 1, size=n).astype(np.int64)


def make_synthetic(
    preset_name_or_dims: Any = "mosi_aligned",
    n_train: int = 256,
    n_valid: int = 64,
    n_test: int = 64,
    seed: int = 0,
    *,
    label_noise: float = 0.3,
    frame_noise: float = 1.0,
    audio_inf_frac: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Make an MMSA-schema dict ``{"train"|"valid"|"test": {key: array}}`` (deterministic in ``seed``).

    Args:
        preset_name_or_dims: ``"mosi_aligned"``, ``"mosi_unaligned"``, ``"mosei_aligned"``,
            ``"mosei_unaligned"`` (``"mosi"``/``"mosei"`` = aligned), or a dict/object with
            ``feature_dims=(dl, da, dv)`` and ``seq_lens=(Tl, Ta, Tv)``.
        n_train, n_valid, n_test: samples per split (>= 1).
        label_noise: std of the label noise before clipping/rounding.
        frame_noise: std of the per-frame feature noise.
        audio_inf_frac: fraction of valid audio entries set to ``-inf`` (as in real COVAREP
            features; the loader maps them to 0). Default 0.

    Per split: ``text`` (N,Tl,dl), ``audio`` (N,Ta,da), ``vision`` (N,Tv,dv) float32;
    ``text_bert`` (N,3,Tl) int64; ``regression_labels`` (N,) float32 in [-3, 3];
    ``audio_lengths``/``vision_lengths`` (N,) int64; ``id``/``raw_text`` (N,) str arrays.
    """
    (dl, da, dv), (Tl, Ta, Tv) = _shapes(preset_name_or_dims)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for split, n in sizes.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n_{split}: expected an integer >= 1; received {n!r}")
    check.real(audio_inf_frac, "audio_inf_frac", low=0.0, high=1.0)
    check.real(label_noise, "label_noise", low=0.0)
    check.real(frame_noise, "frame_noise", low=0.0)
    seed = check.integer(seed, "seed")
    aligned = Tl == Ta == Tv
    dims = {"text": dl, "audio": da, "vision": dv}
    lens = {"text": Tl, "audio": Ta, "vision": Tv}

    world = np.random.default_rng([seed, 0])
    proj = {}
    for m, d in dims.items():
        k = min(_LATENT, d)
        w = world.standard_normal(k)
        proj[m] = (world.standard_normal((k, d)) / math.sqrt(k), w / np.linalg.norm(w))

    out: dict[str, dict[str, Any]] = {}
    for si, split in enumerate(SPLITS):
        n = int(sizes[split])
        rng = np.random.default_rng([seed, si + 1])
        if aligned:
            shared = _lengths(rng, n, Tl)
            L = {m: shared for m in dims}
        else:
            L = {m: _lengths(rng, n, lens[m]) for m in dims}
        signal = np.zeros(n)
        feats = {}
        for m in ("text", "audio", "vision"):
            A, w = proj[m]
            z = rng.standard_normal((n, A.shape[0]))
            signal += z @ w
            clean = (z @ A).astype(np.float32)  # (n, d)
            x = clean[:, None, :] + np.float32(frame_noise) * rng.standard_normal(
                (n, lens[m], dims[m]), dtype=np.float32
            )
            valid = np.arange(lens[m])[None, :] < L[m][:, None]  # (n, T)
            x *= valid[:, :, None]
            feats[m] = x
        y = _SIGNAL_SCALE * signal + label_noise * rng.standard_normal(n)
        y = np.round(np.clip(y, -3.0, 3.0) * 5.0) / 5.0 + 0.0  # +0.0 turns -0.0 into 0.0
        if audio_inf_frac > 0:
            hit = (rng.random(feats["audio"].shape) < audio_inf_frac) & (feats["audio"] != 0)
            feats["audio"][hit] = -np.inf
        ids = np.zeros((n, 3, Tl), dtype=np.int64)
        tok = rng.integers(1000, 30000, size=(n, Tl))
        pos = np.arange(Tl)[None, :]
        lt = L["text"][:, None]
        ids[:, 0] = np.where(pos < lt, tok, 0)
        ids[:, 0, 0] = 101
        ids[:, 0] = np.where((pos == lt - 1) & (lt > 1), 102, ids[:, 0])
        ids[:, 1] = (pos < lt).astype(np.int64)
        out[split] = {
            "text": feats["text"],
            "text_bert": ids,
            "audio": feats["audio"],
            "vision": feats["vision"],
            "regression_labels": y.astype(np.float32),
            "audio_lengths": L["audio"].copy(),
            "vision_lengths": L["vision"].copy(),
            "id": np.array([f"synth{seed}_{split}{i}$_$0" for i in range(n)]),
            "raw_text": np.array([f"synthetic {split} sample {i}" for i in range(n)]),
        }
    return out


def synthetic_datasets(
    preset_name_or_dims: Any = "mosi_aligned",
    n_train: int = 256,
    n_valid: int = 64,
    n_test: int = 64,
    seed: int = 0,
    text_key: str = "text",
    **kwargs: Any,
) -> dict[str, MMSADataset]:
    """:func:`make_synthetic` passed through the loader's validation; returns ``{split: MMSADataset}``."""
    splits = make_synthetic(preset_name_or_dims, n_train, n_valid, n_test, seed, **kwargs)
    return datasets_from_splits(splits, expected=preset_name_or_dims, text_key=text_key, source="synthetic")
