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
from compile_check_encoder_in_proj import cli_sweep, runtime_signature, sm90_resources  # noqa: E402

KERNELS = ("partial", "reduce", "bwd_total", "bwd_values")
DTYPES = ("fp32", "bf16", "fp16", "fp64")


def compile_one(cfg):
    """Compile one configuration; returns a result dict (never raises)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton.language as tl

    from dmd_fast.kernels import loss_terms as kl

    role, dt = cfg
    row = dict(kernel=role, E=0, E_PAD=0, dtype=dt)
    try:
        BLOCK, BLOCK_R, BLOCK_C, warps = kl.blocks()
        acc = tl.float64 if dt == "fp64" else tl.float32
        acc_name = "fp64" if dt == "fp64" else "fp32"
        if role == "reduce":
            fn = kl.loss_terms_reduce_kernel
            consts = dict(T_PAD=32, G_PAD=16, BLOCK_B=64)
            sig, _, attrs = runtime_signature(fn, dt, i64=("desc",), fp32=())
            for name in ("partial", "values", "total"):
                sig[name] = f"*{acc_name}"
        else:
            fn = kl.loss_terms_partial_kernel if role == "partial" else kl.loss_terms_bwd_kernel
            consts = dict(BLOCK=BLOCK, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, ACC=acc)
            if role != "partial":
                consts.update(HAS_GV=role == "bwd_values", HAS_GT=True)
            sig, _, attrs = runtime_signature(fn, dt, i64=("desc",), fp32=("eps",))
            for name in ("partial", "g_values", "g_total"):
                if name in sig:
                    sig[name] = f"*{acc_name}"
        row.update(BM=BLOCK, BN=BLOCK_C, warps=warps)
        row.update(sm90_resources(fn, sig, consts, attrs, warps))
    except Exception as e:  # report, do not stop the sweep
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        row["ok"] = False
    return row


def main(argv=None):
    return cli_sweep(__doc__, list(itertools.product(KERNELS, DTYPES)), compile_one, argv)


if __name__ == "__main__":
    sys.exit(main())
