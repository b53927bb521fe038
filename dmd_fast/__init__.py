"""dmd_fast: fused Triton kernels and a faithful reference for DMD (Decoupled Multimodal Distilling).

Public entry points (imported lazily so ``import dmd_fast`` stays light):
    cross_modal_attention, cross_modal_attention_grouped  (dmd_fast.ops.attention)
    graph_distill                                          (dmd_fast.ops.graph_distill)
    DMD, DMDSystem, DMDConfig, get_preset                  (dmd_fast.model)
    load_exported                                          (dmd_fast.inference.export)
"""

__version__ = "0.1.0"

_LAZY = {
    "cross_modal_attention": "dmd_fast.ops.attention",
    "cross_modal_attention_grouped": "dmd_fast.ops.attention",
    "attention_weights": "dmd_fast.ops.attention",
    "graph_distill": "dmd_fast.ops.graph_distill",
    "DMD": "dmd_fast.model.dmd",
    "DMDSystem": "dmd_fast.model.system",
    "DMDConfig": "dmd_fast.model.config",
    "get_preset": "dmd_fast.model.config",
    "load_exported": "dmd_fast.inference.export",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dmd_fast' has no attribute {name!r}")


__all__ = list(_LAZY)
