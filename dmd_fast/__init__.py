"""dmd_fast: fused Triton kernels and a faithful reference for DMD."""
__version__ = "0.1.0"
