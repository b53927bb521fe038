"""Custom ops with autograd: Triton kernels or the reference, chosen per device (see ops.backend)."""
from dmd_fast.ops.attention import attention_weights, cross_modal_attention, cross_modal_attention_grouped
from dmd_fast.ops.graph_distill import graph_distill

__all__ = ["cross_modal_attention", "cross_modal_attention_grouped", "attention_weights", "graph_distill"]
