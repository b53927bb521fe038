"""Compile every fused loss-terms kernel configuration for Hopper (sm_90) on the CPU; read resources.

As ``compile_check_encoder_in_proj.py`` (whose compile-and-read helper and sweep it uses): one row per
(kernel, dtype; the backward with and without the values' gradient). Exits 1 on any spill, compile
error or shared-memory overflow.

    python benchmarks/compile_check_loss_terms.py [--jobs N]

Must run WITHOUT ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compile_check_encoder_in_proj import cli_sweep, resources_row, runtime_signature  # noqa: E402

KERNELS = ("partial", "reduce", "bwd_total", "bwd_values")
DTYPES = ("fp32", "bf16", "fp16", "fp64")


def compile_one(cfg):
    """Compile one configuration; returns a result dict (never raises)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton.language as tl

    from dmd_fast.kernels import loss_terms as kl

    role, dt = cfg
    BLOCK, BLOCK_R, BLOCK_C, warps = kl.blocks()
    acc_name = "fp64" if dt == "fp64" else "fp32"
    acc_ptrs = {n: acc_name for n in ("partial", "values", "total", "g_values", "g_total")}

    def build():
        acc = tl.float64 if dt == "fp64" else tl.float32
        if role == "reduce":
            fn = kl.loss_terms_reduce_kernel
            consts = dict(T_PAD=32, G_PAD=16, BLOCK_B=64)
            fp32 = ()
        else:
            fn = kl.loss_terms_partial_kernel if role == "partial" else kl.loss_terms_bwd_kernel
            consts = dict(BLOCK=BLOCK, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, ACC=acc)
            if role != "partial":
                consts.update(HAS_GV=role == "bwd_values", HAS_GT=True)
            fp32 = ("eps",)
        sig, _, attrs = runtime_signature(fn, dt, i64=("desc",), fp32=fp32, ptrs=acc_ptrs)
        return fn, sig, consts, attrs, warps, dict(BM=BLOCK, BN=BLOCK_C)

    return resources_row(dict(kernel=role, E=0, E_PAD=0, dtype=dt), build)


def main(argv=None):
    return cli_sweep(__doc__, list(itertools.product(KERNELS, DTYPES)), compile_one, argv)


if __name__ == "__main__":
    sys.exit(main())
