"""Compile every fused embedding-prologue kernel configuration for Hopper (sm_90) on the CPU; read resources.

As ``compile_check_encoder_in_proj.py`` (whose compile-and-read helper and sweep it uses): one row per
(kernel with or without dropout, E, dtype). Exits 1 on any spill, compile error or shared-memory overflow.

    python benchmarks/compile_check_encoder_embed.py [--jobs N]

Must run WITHOUT ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compile_check_encoder_in_proj import DTYPES, EMBED_DIMS, runtime_signature, sm90_resources, sweep  # noqa: E402

KERNELS = ("fwd", "fwd_dropout", "bwd", "bwd_dropout")


def compile_one(cfg):
    """Compile one configuration; returns a result dict (never raises)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton.language as tl

    from dmd_fast.kernels import encoder_embed as ke

    role, E, dt = cfg
    row = dict(kernel=role, E=E, E_PAD=ke.e_pad(E), dtype=dt)
    try:
        fn = ke.encoder_embed_fwd_kernel if role.startswith("fwd") else ke.encoder_embed_bwd_kernel
        bm, warps = ke.block_m(E, backward=role.startswith("bwd"))
        consts = dict(E=E, E_PAD=ke.e_pad(E), BLOCK_M=bm, DROPOUT=role.endswith("dropout"), ACC=tl.float32)
        sig, _, attrs = runtime_signature(
            fn, dt, i64=("desc", "seed_ptr"), fp32_ptrs=("table",), fp32=("scale_hi", "scale_lo")
        )
        row.update(BM=bm, BN=0, warps=warps)
        row.update(sm90_resources(fn, sig, consts, attrs, warps))
    except Exception as e:  # report, do not stop the sweep
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        row["ok"] = False
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter would pick interpreter block sizes)")
    return sweep(list(itertools.product(KERNELS, EMBED_DIMS, DTYPES)), compile_one, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
