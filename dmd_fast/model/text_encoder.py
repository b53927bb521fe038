"""Optional BERT text encoder (HF transformers), as upstream's BertTextEncoder.

Input: (B, 3, T) rows = input_ids, input_mask, segment_ids (MMSA ``text_bert``).
Output: last_hidden_state (B, T, hidden). Weights come from a local path or a BertConfig; this
module never downloads anything itself.
"""

from __future__ import annotations

import torch
from torch import nn


class BertTextEncoder(nn.Module):
    """Wraps ``transformers.BertModel`` under the upstream attribute name ``model``."""

    def __init__(self, bert_config: dict | None = None, pretrained_path: str | None = None, finetune: bool = True):
        super().__init__()
        try:
            from transformers import BertConfig, BertModel
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError("use_bert=True needs the 'bert' extra: pip install 'dmd-fast[bert]'") from exc
        if pretrained_path is not None:
            self.model = BertModel.from_pretrained(pretrained_path, local_files_only=True)
        else:
            self.model = BertModel(BertConfig(**(bert_config or {})))
        self.finetune = finetune

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if text.dim() != 3 or text.shape[1] != 3:
            raise ValueError(f"text: with use_bert=True expected token rows (B, 3, T), got {tuple(text.shape)}")
        ids, mask, segments = text[:, 0].long(), text[:, 1].float(), text[:, 2].long()
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            return self.model(input_ids=ids, attention_mask=mask, token_type_ids=segments).last_hidden_state


def local_bert_config(path: str):
    """The ``transformers.BertConfig`` of a local BERT folder, or a clear error naming ``--bert``."""
    import os

    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"--bert: expected a local BERT folder (config.json + weights, e.g. from "
            f"save_pretrained), got {path!r}, which is not a directory"
        )
    try:
        from transformers import BertConfig
    except ImportError as exc:
        raise ImportError("--bert needs the 'bert' extra: pip install 'dmd-fast[bert]'") from exc
    try:
        return BertConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--bert: {path!r} holds no readable BERT config.json ({exc})") from exc


def check_token_ids(datasets: dict, vocab_size: int) -> None:
    """Token ids of every split's ``text_bert`` must index the BERT vocabulary (checked once, at load)."""
    for split, ds in datasets.items():
        ids = ds.text[:, 0]
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(
                f"text_bert: split {split!r} has token ids in [{int(ids.min())}, {int(ids.max())}], "
                f"expected [0, {vocab_size}) for this BERT's vocabulary"
            )
