"""Compile every fused encoder FFN-block kernel configuration for Hopper (sm_90) on the CPU; read resources.

As ``compile_check_encoder_in_proj.py`` (whose compile-and-read helper and sweep it uses): one row per
(kernel, E, dtype, final LayerNorm, dropout, pair output) with blocks, warps, registers, STACK and LOCAL (spill)
bytes, shared memory and the matrix instructions. Exits 1 on any spill, compile error or shared-memory overflow.

    python benchmarks/compile_check_encoder_ffn.py [--quick] [--jobs N]

Must run WITHOUT ``TRITON_INTERPRET`` (the block-size table then gives the GPU blocks).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compile_check_encoder_in_proj import DTYPES, EMBED_DIMS, runtime_signature, sm90_resources, sweep  # noqa: E402

KERNELS = (
    "fwd", "fwd_final", "fwd_drop", "fwd_final_drop", "fwd_final_pair", "fwd_final_drop_pair",
    "bwd", "bwd_final", "bwd_drop", "bwd_final_drop", "reduce",
)  # fmt: skip


def compile_one(cfg):
    """Compile one configuration; returns a result dict (never raises)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import torch
    import triton.language as tl

    from dmd_fast.kernels import encoder_ffn as kf

    role, E, dt = cfg
    row = dict(kernel=role, E=E, E_PAD=kf.e_pad(E), dtype=dt)
    try:
        torch_dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
        if role == "reduce":
            fn = kf.encoder_ffn_reduce_kernel
            bm, bn, warps = kf._REDUCE_BLOCKS
            consts = dict(C=kf.grad_width(E), BLOCK_R=bm, BLOCK_C=bn, ACC=tl.float32)
        else:
            kind = role.split("_")[0]
            fn = kf.encoder_ffn_fwd_kernel if kind == "fwd" else kf.encoder_ffn_bwd_kernel
            drop = "drop" in role
            bm, bn, warps = kf.block_config(kind, E, torch_dt, drop)
            consts = dict(E=E, E_PAD=kf.e_pad(E), BLOCK_M=bm, BLOCK_F=bn, BLOCK_K=kf.block_k(E),
                          FINAL="final" in role, PRECISION="ieee", ACC=tl.float32, DROPOUT=drop)  # fmt: skip
            if kind == "fwd":  # _pair: out rows of stride 2E (the halves of a memory encoder's input)
                consts["OUT_ROW"] = 2 * E if role.endswith("pair") else E
        row.update(BM=bm, BN=bn, warps=warps)
        no_seed = role != "reduce" and not consts["DROPOUT"]  # launched with seed_ptr=None: a constexpr
        fixed = {"seed_ptr": None, "keep": None} if no_seed else None  # keep: the backward's ReLU mask
        sig, c2, attrs = runtime_signature(
            fn, dt, i64=("desc", "seed_ptr"), fp32_ptrs=("stats", "scratch", "work"), fixed=fixed, ptrs={"keep": "i8"}
        )
        consts.update(c2)
        row.update(sm90_resources(fn, sig, consts, attrs, warps))
    except Exception as e:  # report, do not stop the sweep
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        row["ok"] = False
    return row


def configs(quick=False):
    """Every (kernel, E, dtype); --quick: E 30 and 128 only."""
    return list(itertools.product(KERNELS, (30, 128) if quick else EMBED_DIMS, DTYPES))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="E 30 and 128 only")
    ap.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter would pick interpreter block sizes)")
    return sweep(configs(args.quick), compile_one, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
