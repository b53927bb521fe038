"""Cross-modal attention maps of a DMD model for visualisation (supplementary Figures 1–2).

Maps come from a separate path (the reference softmax on the layer's own projections); the fast
attention path never materialises them.
"""

from __future__ import annotations

import pathlib

import torch

from dmd_fast import validation as check
from dmd_fast.model.dmd import DMD

CROSS_PAIRS = ("l_with_a", "l_with_v", "a_with_l", "a_with_v", "v_with_l", "v_with_a")
_NAMES = {"l": "language", "a": "audio", "v": "vision"}


@torch.no_grad()
def cross_modal_maps(model: DMD, text, audio, vision, layer: int = -1) -> dict:
    """{pair: (Lq, Lk) head-averaged attention of sample 0 at ``layer``} for the six encoders."""
    n = len(model.trans_l_with_a.layers)
    if check.integer(layer, "layer") < -n or layer >= n:
        raise ValueError(
            f"layer: expected an encoder layer in [-{n}, {n - 1}] (the cross-modal encoders have "
            f"{n} layers), got {layer}"
        )
    mhas = {p: getattr(model, f"trans_{p}").layers[layer].self_attn for p in CROSS_PAIRS}
    was_training = model.training
    model.eval()
    try:
        for m in mhas.values():
            m.record_weights = True
        model(text[:1], audio[:1], vision[:1])
        return {p: m.last_weights[0].float().cpu() for p, m in mhas.items()}
    finally:
        for m in mhas.values():
            m.record_weights, m.last_weights = False, None
        model.train(was_training)


def save_map_pngs(maps: dict, out_dir, prefix: str = "attention") -> list:
    """One PNG per pair (query modality rows, key modality columns); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for pair, w in maps.items():
        tgt, src = pair.split("_with_")
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(w.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xlabel(f"{_NAMES[src]} (key) frame")
        ax.set_ylabel(f"{_NAMES[tgt]} (query) frame")
        ax.set_title(f"{_NAMES[src]} → {_NAMES[tgt]}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = out / f"{prefix}_{src}_to_{tgt}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
