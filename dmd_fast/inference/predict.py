"""Batch prediction over one data split (``dmd-fast predict``): CSV rows and MMSA metrics.

The model runs its pruned inference forward (:meth:`DMD.predict`) on every sample of the split, in
order. The CSV has one row per sample: ``index``, ``id`` (when the data has ids), ``prediction``
and ``label`` (when the data has labels); metrics (L1 ``Loss`` and :func:`regression_metrics`) are
computed when labels exist.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from dmd_fast.data.mmsa import DataError, MMSADataset, load_mmsa
from dmd_fast.data.synthetic import synthetic_datasets
from dmd_fast.model.config import DMDConfig
from dmd_fast.train.metrics import format_metrics_table, regression_metrics
from dmd_fast.train.progress import Progress

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
METRIC_COLUMNS = ("split", "samples", "Loss", "Non0_acc_2", "Non0_F1_score", "Acc_7", "MAE", "Corr")


@dataclass
class Predictions:
    """pred (N,) float32 in split order; labels (N,) or None; ids (N strings) or None."""

    split: str
    pred: torch.Tensor
    labels: torch.Tensor | None
    ids: list | None

    def metrics(self) -> dict | None:
        """L1 'Loss' and the MMSA regression metrics, or None without labels."""
        if self.labels is None:
            return None
        m = regression_metrics(self.pred.numpy(), self.labels.numpy())
        m["Loss"] = float((self.pred.double() - self.labels.double()).abs().mean())
        return m

    def metrics_table(self) -> str | None:
        m = self.metrics()
        if m is None:
            return None
        return format_metrics_table([dict(split=self.split, samples=len(self.pred), **m)], list(METRIC_COLUMNS))

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = ["index"] + (["id"] if self.ids is not None else []) + ["prediction"]
        writer.writerow(header + (["label"] if self.labels is not None else []))
        labels = None if self.labels is None else self.labels.numpy()
        for i, p in enumerate(self.pred.numpy()):  # float32 printed shortest-exact (numpy's str)
            row = [i] + ([self.ids[i]] if self.ids is not None else []) + [str(p)]
            writer.writerow(row + ([str(labels[i])] if labels is not None else []))
        return buf.getvalue()


def load_split(
    data: str, cfg: DMDConfig, split: str, *, synthetic_sizes=(480, 96, 96), data_seed: int = 0
) -> MMSADataset:
    """One split of ``data`` ("synthetic" or an MMSA pickle path), checked against the model's preset.

    Synthetic data: the split ``dmd-fast train`` used with the same sizes and seed (each split has its
    own random stream, so only the requested split is generated at full size)."""
    text_key = "text_bert" if cfg.use_bert else "text"
    if data == "synthetic":
        sizes = dict(zip(("train", "valid", "test"), synthetic_sizes))
        n = {s: (sizes[s] if s == split else 1) for s in sizes}
        return synthetic_datasets(cfg, n["train"], n["valid"], n["test"], seed=data_seed, text_key=text_key)[split]
    try:  # with BERT the text rows are token ids: the model's check_inputs checks them
        ds = load_mmsa(
            data, expected=None if cfg.use_bert else cfg, text_key=text_key, splits=(split,), require_labels=False
        )
    except DataError as exc:
        raise DataError(
            f"--data {data}: {exc} (the checkpoint is for preset {cfg.name!r}, feature dims "
            f"{cfg.feature_dims}, sequence lengths {cfg.seq_lens})"
        ) from exc
    return ds[split]


def predict_dataset(
    model, dataset: MMSADataset, *, batch_size: int, device, amp: str = "none", progress: bool | None = None
) -> Predictions:
    """Run ``model.predict`` over ``dataset`` in order, ``batch_size`` samples at a time."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp: expected one of {sorted(AMP_DTYPES)}, got {amp!r}")
    device = torch.device(device)
    model.check_inputs(dataset.text[:1], dataset.audio[:1], dataset.vision[:1])  # shapes, before any work
    dtype = AMP_DTYPES[amp]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    preds = []
    for batch in Progress(loader, desc=f"predict {dataset.name}", enabled=progress):
        text, audio, vision = (batch[k].to(device, non_blocking=True) for k in ("text", "audio", "vision"))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            preds.append(model.predict(text, audio, vision).float().view(-1))
    pred = torch.cat(preds).cpu()
    bad = ~torch.isfinite(pred)
    if bad.any():
        raise FloatingPointError(f"predict: {int(bad.sum())} of {len(pred)} predictions are NaN/inf")
    labels = None if dataset.labels is None else dataset.labels.view(-1).clone()
    return Predictions(dataset.name, pred, labels, None if dataset.ids is None else [str(i) for i in dataset.ids])
