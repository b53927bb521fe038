"""Plain-PyTorch oracle: readable, float64-capable, no Triton import."""

from dmd_fast.reference.attention import cross_modal_attention, offset_causal_mask, visible_mask
from dmd_fast.reference.encoder_in_proj import encoder_in_projection
from dmd_fast.reference.graph_distill import edge_names, edge_pairs, graph_distill

__all__ = [
    "cross_modal_attention",
    "encoder_in_projection",
    "visible_mask",
    "offset_causal_mask",
    "graph_distill",
    "edge_pairs",
    "edge_names",
]
