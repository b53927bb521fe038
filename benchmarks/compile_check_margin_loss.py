"""Compile every margin-loss kernel configuration for Hopper (sm_90) on the CPU; read resources.

As ``compile_check_encoder_in_proj.py`` (whose compile-and-read helper and sweep it uses): one row per
(kernel, N_PAD, dtype). Exits 1 on any spill, compile error or shared-memory overflow.

    python benchmarks/compile_check_margin_loss.py [--jobs N]

Must run WITHOUT ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compile_check_encoder_in_proj import cli_sweep, resources_row, runtime_signature  # noqa: E402

KERNELS = ("fwd", "bwd")
ROWS = (16, 48, 64)  # N up to MAX_ROWS; 48: DMD at batch 16 (3 rows per sample)
DTYPES = ("fp32",)  # the losses run in fp32 (fp64 runs under the interpreter)


def compile_one(cfg):
    """Compile one configuration; returns a result dict (never raises)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton.language as tl

    from dmd_fast.kernels import margin_loss as km

    role, N, dt = cfg
    n_pad, bd, warps = km.config(N)

    def build():
        fn = km.margin_loss_fwd_kernel if role == "fwd" else km.margin_loss_bwd_kernel
        acc = tl.float64 if dt == "fp64" else tl.float32
        consts = dict(N_PAD=n_pad, BLOCK_D=bd, PRECISION="ieee", ACC=acc)
        typed = {n: dt for n in ("f_ptr", "y_ptr", "out", "g_ptr", "df_ptr")}
        sig, _, attrs = runtime_signature(fn, dt, i64=(), fp32=(), ptrs=typed)
        return fn, sig, consts, attrs, warps, dict(BM=n_pad, BN=bd)

    return resources_row(dict(kernel=role, E=N, E_PAD=n_pad, dtype=dt), build)


def main(argv=None):
    return cli_sweep(__doc__, list(itertools.product(KERNELS, ROWS, DTYPES)), compile_one, argv)


if __name__ == "__main__":
    sys.exit(main())
