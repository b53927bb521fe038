"""Custom ops with autograd: Triton kernels or the reference, chosen per device (see ops.backend).

Modules: ``attention`` (cross_modal_attention, cross_modal_attention_grouped, attention_weights) and
``graph_distill`` (graph_distill). The functions are also exported at the top level of ``dmd_fast``.
"""
