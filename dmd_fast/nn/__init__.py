"""Drop-in modules with upstream MulT/DMD parameter names."""

from dmd_fast.nn.attention import MultiheadAttention
from dmd_fast.nn.positional import SinusoidalPositionalEmbedding
from dmd_fast.nn.transformer import TransformerEncoder, TransformerEncoderLayer


def __getattr__(name):
    if name == "GDUnit":
        from dmd_fast.nn.graph_distill import GDUnit

        return GDUnit
    raise AttributeError(name)


__all__ = [
    "MultiheadAttention",
    "SinusoidalPositionalEmbedding",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "GDUnit",
]
