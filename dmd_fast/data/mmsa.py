"""Loader for MMSA "Processed" pickles (CMU-MOSI / CMU-MOSEI), docs/upstream-semantics.md, "Input data".

File layout (``aligned_50.pkl`` / ``unaligned_50.pkl``): a top-level dict with
splits ``train``, ``valid``, ``test``; each split is a dict with

=====================  ======================  ==========================================
key                    shape                   notes
=====================  ======================  ==========================================
``text``               (N, T_l, d_l)           precomputed BERT features (d_l = 768)
``text_bert``          (N, 3, T_l)             optional: input_ids / input_mask / segment_ids
``audio``              (N, T_a, d_a)           ``-inf`` entries are replaced by 0 (as upstream)
``vision``             (N, T_v, d_v)
``regression_labels``  (N,) or (N, 1)          float in [-3, 3]
``audio_lengths``      (N,)                    optional valid frame counts
``vision_lengths``     (N,)                    optional valid frame counts
``id``, ``raw_text``   N strings               optional
=====================  ======================  ==========================================

Every numeric array is cast to float32 (the on-disk dtype does not matter). Feature
dims and sequence lengths are given in (L, A, V) = (text, audio, vision) order,
like MMSA's ``feature_dims``/``seq_lens``.

Pickles can execute code when loaded: only load files you trust.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dmd_fast import validation as check

__all__ = [
    "DataError",
    "SPLITS",
    "MODALITY_KEYS",
    "DATASET_SHAPES",
    "resolve_shapes",
    "validate_splits",
    "MMSADataset",
    "load_mmsa",
    "datasets_from_splits",
    "make_loaders",
    "write_mmsa_pickle",
]

SPLITS = ("train", "valid", "test")
#: Feature keys in (L, A, V) order, matching ``feature_dims``/``seq_lens`` order.
MODALITY_KEYS = ("text", "audio", "vision")
REQUIRED_KEYS = ("text", "audio", "vision", "regression_labels")

#: Known shapes (docs/upstream-semantics.md, "Input data"): name -> {"feature_dims": (L, A, V), "seq_lens": (L, A, V)}.
DATASET_SHAPES: dict[str, dict[str, tuple[int, int, int]]] = {
    "mosi_aligned": {"feature_dims": (768, 5, 20), "seq_lens": (50, 50, 50)},
    "mosi_unaligned": {"feature_dims": (768, 5, 20), "seq_lens": (50, 375, 500)},
    "mosei_aligned": {"feature_dims": (768, 74, 35), "seq_lens": (50, 50, 50)},
    "mosei_unaligned": {"feature_dims": (768, 74, 35), "seq_lens": (50, 500, 500)},
}
_ALIASES = {"mosi": "mosi_aligned", "mosei": "mosei_aligned"}


class DataError(ValueError):
    """The data (pickle file or in-memory splits) does not follow the MMSA schema."""


# --------------------------------------------------------------------------- shapes


def _triple(value: Any, what: str, source: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        t = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {what} must be 3 integers (L, A, V); received {value!r}") from None
    if len(t) != 3 or any(v <= 0 for v in t):
        raise ValueError(f"{source}: {what} must be 3 positive integers (L, A, V); received {value!r}")
    return t  # type: ignore[return-value]


def resolve_shapes(spec: Any, argname: str = "expected") -> dict[str, tuple[int, int, int] | None]:
    """Normalize a shape spec to ``{"feature_dims": (dl, da, dv) | None, "seq_lens": (Tl, Ta, Tv) | None}``.

    ``spec`` may be a name from :data:`DATASET_SHAPES` (``"mosi_aligned"``, ...; ``"mosi"``/``"mosei"``
    mean aligned), a mapping with keys ``feature_dims``/``seq_lens``, or any object with those
    attributes (e.g. a config preset). Missing entries are ``None`` (= not checked).
    """
    if isinstance(spec, str):
        key = spec.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in DATASET_SHAPES:
            raise ValueError(
                f"{argname}: unknown dataset preset {spec!r}; expected one of "
                f"{sorted(DATASET_SHAPES) + sorted(_ALIASES)}"
            )
        return dict(DATASET_SHAPES[key])
    if isinstance(spec, Mapping):
        fd, sl = spec.get("feature_dims"), spec.get("seq_lens")
    else:
        fd, sl = getattr(spec, "feature_dims", None), getattr(spec, "seq_lens", None)
    if fd is None and sl is None:
        raise ValueError(
            f"{argname}: expected a preset name or an object/dict with 'feature_dims' and/or "
            f"'seq_lens' (L, A, V); received {type(spec).__name__} {spec!r}"
        )
    return {
        "feature_dims": _triple(fd, "feature_dims", argname),
        "seq_lens": _triple(sl, "seq_lens", argname),
    }


# --------------------------------------------------------------------------- validation


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None:
        return f"shape {tuple(shape)} dtype {dtype}"
    return f"{type(x).__name__}"


def _as_float32(split: str, key: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError
        return arr.astype(np.float32, copy=False)  # no copy when already float32
    except (TypeError, ValueError):
        raise DataError(
            f"split {split!r} key {key!r}: expected a numeric array castable to float32; received {_describe(value)}"
        ) from None


def _check_finite(split: str, key: str, arr: np.ndarray, note: str = "") -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(bad.sum()) - n_nan
        raise DataError(
            f"split {split!r} key {key!r}: {int(bad.sum())} non-finite values "
            f"({n_nan} NaN, {n_inf} +/-inf){note}; expected all finite"
        )


def validate_splits(
    data: Any, expected: Any = None, source: str = "data", splits: tuple = SPLITS, require_labels: bool = True
) -> dict[str, dict[str, Any]]:
    """Validate and clean an MMSA-style dict; return ``{split: {key: array}}`` for ``splits``.

    ``splits``: the splits that must be there (default all three; others are ignored).
    ``require_labels=False`` accepts splits without ``regression_labels`` (inference on unlabelled
    data); such a split has no ``label`` entry.

    Output per split: ``text`` (N,T_l,d_l), ``audio`` (N,T_a,d_a) with -inf -> 0,
    ``vision`` (N,T_v,d_v), ``label`` (N,) - all float32 - plus, when present,
    ``text_bert`` (N,3,T_l) float32, ``audio_lengths``/``vision_lengths`` (N,) float32
    (upstream casts them too), ``id``/``raw_text`` (lists of N items).

    Raises :class:`DataError` for a missing split/key, wrong rank, N mismatch within a split,
    feature dim or length differing across splits or from ``expected``
    (see :func:`resolve_shapes`), or NaN/inf left in any array after the audio fix.
    """
    exp = resolve_shapes(expected) if expected is not None else None
    if not isinstance(data, Mapping):
        raise DataError(f"{source}: expected a dict with splits {list(SPLITS)}; received {type(data).__name__}")
    missing = [s for s in splits if s not in data]
    if missing:
        raise DataError(
            f"{source}: missing split(s) {missing}; expected keys {list(splits)}, received {sorted(map(str, data))}"
        )

    out: dict[str, dict[str, Any]] = {}
    ref: dict[str, tuple[int, int]] = {}  # key -> (T, d) from the first split
    required = REQUIRED_KEYS if require_labels else MODALITY_KEYS
    for split in splits:
        raw = data[split]
        if not isinstance(raw, Mapping):
            raise DataError(f"split {split!r}: expected a dict of arrays; received {type(raw).__name__}")
        miss = [k for k in required if k not in raw]
        if miss:
            raise DataError(
                f"split {split!r}: missing key(s) {miss}; expected {list(required)}, received {sorted(map(str, raw))}"
            )
        clean: dict[str, Any] = {}
        # --- features (N, T, d)
        for key in MODALITY_KEYS:
            arr = _as_float32(split, key, raw[key])
            if arr.ndim != 3:
                raise DataError(f"split {split!r} key {key!r}: expected rank 3 (N, T, d); received shape {arr.shape}")
            if key == "audio":
                neg_inf = arr == -np.inf
                if neg_inf.any():
                    if np.shares_memory(arr, np.asarray(raw[key])):
                        arr = arr.copy()  # never modify the caller's array
                    arr[neg_inf] = 0.0
                _check_finite(split, key, arr, " after replacing -inf by 0")
            else:
                _check_finite(split, key, arr)
            clean[key] = arr
        # --- labels (N,) or (N, 1)
        if raw.get("regression_labels") is not None:
            lab = _as_float32(split, "regression_labels", raw["regression_labels"])
            if not (lab.ndim == 1 or (lab.ndim == 2 and lab.shape[1] == 1)):
                raise DataError(
                    f"split {split!r} key 'regression_labels': expected shape (N,) or (N, 1); received {lab.shape}"
                )
            lab = lab.reshape(-1)
            _check_finite(split, "regression_labels", lab)
            clean["label"] = lab
        # --- optional numeric keys
        if raw.get("text_bert") is not None:
            tb = _as_float32(split, "text_bert", raw["text_bert"])
            if tb.ndim != 3 or tb.shape[1] != 3:
                raise DataError(f"split {split!r} key 'text_bert': expected shape (N, 3, T_l); received {tb.shape}")
            _check_finite(split, "text_bert", tb)
            clean["text_bert"] = tb
        for key in ("audio_lengths", "vision_lengths"):
            if raw.get(key) is not None:
                ln = _as_float32(split, key, raw[key])
                if ln.ndim != 1:
                    raise DataError(f"split {split!r} key {key!r}: expected shape (N,); received {ln.shape}")
                _check_finite(split, key, ln)
                clean[key] = ln
        for key in ("id", "raw_text"):
            if raw.get(key) is not None:
                try:
                    clean[key] = list(raw[key])
                except TypeError:
                    raise DataError(
                        f"split {split!r} key {key!r}: expected a sequence of N strings; "
                        f"received {type(raw[key]).__name__}"
                    ) from None
        # --- N consistency
        n = clean["text"].shape[0]
        for key, val in clean.items():
            got = len(val)
            if got != n:
                disk_key = "regression_labels" if key == "label" else key
                raise DataError(f"split {split!r} key {disk_key!r}: has {got} samples; expected N={n} (from 'text')")
        if n == 0:
            raise DataError(f"split {split!r}: has 0 samples; expected N >= 1")
        if "text_bert" in clean and clean["text_bert"].shape[2] != clean["text"].shape[1]:
            raise DataError(
                f"split {split!r} key 'text_bert': expected T_l={clean['text'].shape[1]} (from 'text') "
                f"in shape (N, 3, T_l); received {clean['text_bert'].shape}"
            )
        # --- cross-split and expected shapes
        for i, key in enumerate(MODALITY_KEYS):
            _, T, d = clean[key].shape
            if key in ref and ref[key] != (T, d):
                rT, rd = ref[key]
                what = "feature dim" if rd != d else "sequence length"
                raise DataError(
                    f"split {split!r} key {key!r}: {what} differs across splits; expected (T, d)=({rT}, {rd}) "
                    f"as in split 'train', received ({T}, {d})"
                )
            ref.setdefault(key, (T, d))
            if exp is not None:
                if exp["feature_dims"] is not None and d != exp["feature_dims"][i]:
                    raise DataError(
                        f"split {split!r} key {key!r}: feature dim {d} does not match expected "
                        f"{exp['feature_dims'][i]} (expected feature_dims L/A/V={exp['feature_dims']})"
                    )
                if exp["seq_lens"] is not None and T != exp["seq_lens"][i]:
                    raise DataError(
                        f"split {split!r} key {key!r}: sequence length {T} does not match expected "
                        f"{exp['seq_lens'][i]} (expected seq_lens L/A/V={exp['seq_lens']})"
                    )
        out[split] = clean
    return out


# --------------------------------------------------------------------------- dataset


class MMSADataset(Dataset):
    """One validated split. Item ``i`` is a dict of tensors::

        text   (T_l, d_l) float32   (or (3, T_l) float32 with text_key="text_bert")
        audio  (T_a, d_a) float32
        vision (T_v, d_v) float32
        label  (1,)       float32   regression label (absent when the split has no labels)
        index  ()         int64     position in the split

    so the default collate gives ``label`` (B, 1) and ``index`` (B,). Optional per-split
    extras stay as attributes: ``text_bert``, ``audio_lengths``, ``vision_lengths``
    (numpy (N,...) or None), ``ids``, ``raw_text`` (lists or None).

    Args:
        split: cleaned split from :func:`validate_splits` (keys text/audio/vision/label ...).
        name: split name, used in messages.
        text_key: ``"text"`` (precomputed BERT features, default) or ``"text_bert"`` (token ids
            for an in-model BERT, upstream ``use_bert=True``).
    """

    def __init__(self, split: Mapping[str, Any], name: str = "split", text_key: str = "text"):
        if text_key not in ("text", "text_bert"):
            raise ValueError(f"text_key: expected 'text' or 'text_bert'; received {text_key!r}")
        if split.get(text_key) is None:
            raise DataError(f"split {name!r}: text_key={text_key!r} requested but the split has no {text_key!r}")
        self.name = name
        self.text_key = text_key
        self.text = torch.from_numpy(np.ascontiguousarray(split[text_key], dtype=np.float32))
        self.audio = torch.from_numpy(np.ascontiguousarray(split["audio"], dtype=np.float32))
        self.vision = torch.from_numpy(np.ascontiguousarray(split["vision"], dtype=np.float32))
        self.labels = (
            None
            if split.get("label") is None
            else torch.from_numpy(np.ascontiguousarray(split["label"], dtype=np.float32).reshape(-1, 1))
        )
        self.text_bert = split.get("text_bert")
        self.audio_lengths = split.get("audio_lengths")
        self.vision_lengths = split.get("vision_lengths")
        self.ids = split.get("id")
        t = split["text"]
        self._feature_dims = (int(t.shape[2]), int(self.audio.shape[2]), int(self.vision.shape[2]))
        self._seq_lens = (int(t.shape[1]), int(self.audio.shape[1]), int(self.vision.shape[1]))
        self.raw_text = split.get("raw_text")

    def __len__(self) -> int:
        return self.text.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {
            "text": self.text[index],
            "audio": self.audio[index],
            "vision": self.vision[index],
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    @property
    def feature_dims(self) -> tuple[int, int, int]:
        """(d_l, d_a, d_v) of the feature arrays (d_l from ``text`` features, 768 for BERT)."""
        return self._feature_dims

    @property
    def seq_lens(self) -> tuple[int, int, int]:
        """(T_l, T_a, T_v)."""
        return self._seq_lens

    def __repr__(self) -> str:
        return (
            f"MMSADataset({self.name!r}, N={len(self)}, text={tuple(self.text.shape[1:])}, "
            f"audio={tuple(self.audio.shape[1:])}, vision={tuple(self.vision.shape[1:])})"
        )


def datasets_from_splits(
    splits: Any,
    expected: Any = None,
    text_key: str = "text",
    source: str = "data",
    names: tuple = SPLITS,
    require_labels: bool = True,
) -> dict[str, MMSADataset]:
    """Validate an in-memory MMSA dict (see :func:`validate_splits`, ``names`` = its ``splits``);
    return ``{split: MMSADataset}``."""
    clean = validate_splits(splits, expected=expected, source=source, splits=names, require_labels=require_labels)
    return {s: MMSADataset(clean[s], name=s, text_key=text_key) for s in names}


def load_mmsa(
    path: str | os.PathLike,
    expected: Any = None,
    text_key: str = "text",
    splits: tuple = SPLITS,
    require_labels: bool = True,
) -> dict[str, MMSADataset]:
    """Load ``aligned_50.pkl``/``unaligned_50.pkl``; return ``{"train"|"valid"|"test": MMSADataset}``.

    ``expected``: optional shape check, a preset name (``"mosei_aligned"``) or an object/dict with
    ``feature_dims``/``seq_lens`` in (L, A, V) order. ``splits`` / ``require_labels``: see
    :func:`validate_splits` (inference reads one split, labels optional). Raises ``FileNotFoundError``
    for a missing path and :class:`DataError` for anything that is not a valid MMSA pickle.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"MMSA pickle not found: {path!r} (expected e.g. .../MOSI/Processed/aligned_50.pkl)")
    if os.path.isdir(path):
        raise DataError(f"MMSA pickle path {path!r} is a directory; expected a .pkl file")
    try:
        with open(path, "rb") as f:
            try:
                data = pickle.load(f)
            except UnicodeDecodeError:  # python-2 era pickle
                f.seek(0)
                data = pickle.load(f, encoding="latin1")
    except Exception as e:  # a corrupt pickle raises anything: MemoryError/OverflowError on a bad length field
        if isinstance(e, OSError):  # the file itself could not be read (permissions, I/O)
            raise
        raise DataError(f"{path!r}: not a readable pickle ({type(e).__name__}: {e}); expected an MMSA .pkl") from None
    return datasets_from_splits(
        data,
        expected=expected,
        text_key=text_key,
        source=repr(path),
        names=tuple(splits),
        require_labels=require_labels,
    )


# --------------------------------------------------------------------------- loaders


def make_loaders(
    datasets: Mapping[str, Dataset],
    batch_size: int = 16,
    shuffle_train: bool = True,
    seed: int = 1111,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> dict[str, DataLoader]:
    """Build ``{split: DataLoader}``.

    Only ``train`` is shuffled (with ``shuffle_train``) and only ``train`` uses ``drop_last``;
    other splits keep their order and every sample. The train shuffle order comes from a
    ``torch.Generator`` seeded with ``seed``: it is ``loaders["train"].generator`` (standard
    DataLoader attribute, also ``.sampler.generator``). Checkpoint ``generator.get_state()`` at an
    epoch boundary and ``set_state()`` it on resume to replay the same subsequent epoch orders.
    (Upstream MMSA shuffles every split; metrics are order independent, so this differs harmlessly.)
    """
    if not isinstance(datasets, Mapping) or not datasets:
        raise ValueError(f"datasets: expected a non-empty dict split -> Dataset; received {type(datasets).__name__}")
    check.dim(batch_size, "batch_size")
    check.integer(seed, "seed")
    check.integer(num_workers, "num_workers", low=0)
    loaders: dict[str, DataLoader] = {}
    for split, ds in datasets.items():
        is_train = split == "train"
        gen = None
        if is_train:
            gen = torch.Generator()
            gen.manual_seed(int(seed))
        loaders[split] = DataLoader(
            ds,
            batch_size=int(batch_size),
            shuffle=bool(is_train and shuffle_train),
            generator=gen,
            num_workers=int(num_workers),
            drop_last=bool(is_train and drop_last),
            pin_memory=pin_memory,
        )
    return loaders


def write_mmsa_pickle(path: str | os.PathLike, splits: Mapping[str, Mapping[str, Any]]) -> str:
    """Write ``splits`` (``{split: {key: array}}``) to ``path`` as an MMSA-format pickle; return the path.

    Writes as given, without validation (tests use it to build malformed files); parent folders
    are created.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(dict(splits), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path
