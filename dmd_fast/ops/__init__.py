"""Custom ops with autograd: Triton kernels or the reference, chosen per device (see ops.backend).

Modules: ``attention`` (cross_modal_attention, cross_modal_attention_grouped, attention_weights),
``encoder_in_proj`` (encoder_in_projection_grouped: LN0 + q/k/v in-projection of encoder layers) and
``graph_distill`` (graph_distill). The attention and graph_distill functions are also exported at the top
level of ``dmd_fast``.
"""
