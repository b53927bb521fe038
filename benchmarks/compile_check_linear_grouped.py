"""Compile every grouped-linear kernel configuration for Hopper (sm_90) on the CPU; read resources.

As ``compile_check_encoder_in_proj.py`` (whose compile-and-read helper and sweep it uses): one row per
(kernel, dtype). Exits 1 on any spill, compile error or shared-memory overflow.

    python benchmarks/compile_check_linear_grouped.py [--jobs N]

Must run WITHOUT ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compile_check_encoder_in_proj import DTYPES, cli_sweep, resources_row, runtime_signature  # noqa: E402

KERNELS = ("fwd", "bwd")


def compile_one(cfg):
    """Compile one configuration; returns a result dict (never raises)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton.language as tl

    from dmd_fast.kernels import linear_grouped as kn

    role, dt = cfg

    def build():
        BM, BN, BK, warps = kn.blocks()
        fn = kn.linear_fwd_kernel if role == "fwd" else kn.linear_bwd_kernel
        consts = dict(BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, PRECISION="ieee", ACC=tl.float32)
        sig, _, attrs = runtime_signature(fn, dt, i64=("desc",), fp32=())
        return fn, sig, consts, attrs, warps, dict(BM=BM, BN=BN)

    return resources_row(dict(kernel=role, E=0, E_PAD=0, dtype=dt), build)


def main(argv=None):
    return cli_sweep(__doc__, list(itertools.product(KERNELS, DTYPES)), compile_one, argv)


if __name__ == "__main__":
    sys.exit(main())
