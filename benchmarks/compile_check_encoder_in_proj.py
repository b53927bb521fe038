"""Compile every encoder in-projection kernel configuration for Hopper (sm_90) on the CPU; read resources.

Runs without a GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` and the
``cuobjdump`` shipped in Triton's wheel (``--dump-resource-usage``, ``--dump-sass``). Prints one row per
configuration (kernel, E, dtype): blocks, warps, registers, STACK and LOCAL (spill) bytes, shared
memory, the matrix instructions used. Exits 1 on any spill, compile error or shared-memory overflow.

    python benchmarks/compile_check_encoder_in_proj.py [--quick] [--jobs N]

Must run WITHOUT ``TRITON_INTERPRET`` (the block-size table then gives the GPU blocks).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

SM90_SHARED_MAX = 227 * 1024
DTYPES = ("fp32", "bf16", "fp16")
EMBED_DIMS = (30, 50, 60, 100, 128)  # E_PAD 32, 64, 64, 128, 128; DMD's widths and the maximum
KERNELS = ("fwd", "bwd", "reduce")


def _cuobjdump():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def runtime_signature(fn, dt, *, i64=("desc", "pdesc"), fp32_ptrs=(), fp32=("eps",), fixed=None, ptrs=None):
    """(sig, consts, attrs) as a launch specialises ``fn``: pointers 16-byte aligned, ``like`` in the
    input dtype ``dt``, ``i64`` / ``fp32_ptrs`` pointers, ``ptrs`` {name: element type} other typed
    pointers, ``fp32`` float scalars, other scalars i32; ``fixed`` {name: value}: arguments a launch
    passes as constants (a unit stride, a None pointer)."""
    fixed, ptrs = fixed or {}, ptrs or {}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr or name in fixed:
            sig[name] = "constexpr"
        elif name == "like":
            sig[name] = f"*{dt}"
        elif name in ptrs:
            sig[name] = f"*{ptrs[name]}"
        else:
            sig[name] = "*i64" if name in i64 else "*fp32" if name in fp32_ptrs else "fp32" if name in fp32 else "i32"
        if sig[name].startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, {k: v for k, v in fixed.items() if k in fn.arg_names}, attrs


def resources_row(row: dict, build) -> dict:
    """``row`` with the blocks and sm_90 resources of ``build()`` → (fn, sig, consts, attrs, warps,
    {block name: size}), or with the error that stopped it (the sweep goes on)."""
    try:
        fn, sig, consts, attrs, warps, blocks = build()
        row.update(blocks, warps=warps)
        row.update(sm90_resources(fn, sig, consts, attrs, warps))
    except Exception as e:  # report, do not stop the sweep
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        row["ok"] = False
    return row


def sm90_resources(fn, sig, consts, attrs, warps) -> dict:
    """Compile ``fn`` for sm_90 and read REG, STACK, LOCAL, SHARED, dynamic shared memory, the matrix
    instructions, and ``ok`` (no spill, shared memory fits). Shared by the encoder compile checks."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(
        ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        res, sass = (
            subprocess.run([_cuobjdump(), flag, path], capture_output=True, text=True, check=True).stdout
            for flag in ("--dump-resource-usage", "--dump-sass")
        )
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res))
    row = {k: int(fields[k]) for k in ("REG", "STACK", "LOCAL", "SHARED")}
    row["dyn_shared"] = int(compiled.metadata.shared)
    ops = [op for op in ("HGMMA", "HMMA") if re.search(rf"\b{op}\b", sass)]
    row["mma"] = "+".join(ops) if ops else ("FFMA" if "FFMA" in sass else "-")
    row["ok"] = row["LOCAL"] == 0 and row["STACK"] == 0 and row["dyn_shared"] + row["SHARED"] <= SM90_SHARED_MAX
    return row


def compile_one(cfg):
    """Compile one configuration; returns a result dict (never raises)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import torch
    import triton.language as tl

    from dmd_fast.kernels import encoder_in_proj as kp

    role, E, dt = cfg
    row = dict(kernel=role, E=E, E_PAD=kp.e_pad(E), dtype=dt)
    try:
        torch_dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
        if role == "reduce":
            fn = kp.encoder_in_proj_bwd_reduce_kernel
            bm, bn, warps = kp.reduce_config()
            consts = dict(E=E, BLOCK_R=bm, BLOCK_C=bn, ACC=tl.float32)
        else:
            fn = kp.encoder_in_proj_fwd_kernel if role == "fwd" else kp.encoder_in_proj_bwd_kernel
            bm, bn, warps = kp.block_config(role, E, torch_dt)
            consts = dict(E=E, E_PAD=kp.e_pad(E), BLOCK_M=bm, BLOCK_N=bn, PRECISION="ieee", ACC=tl.float32)
        row.update(BM=bm, BN=bn, warps=warps)
        sig, c2, attrs = runtime_signature(fn, dt, fp32_ptrs=("stats", "scratch"), fixed={"s_xe": 1})
        consts.update(c2)
        row.update(sm90_resources(fn, sig, consts, attrs, warps))
    except Exception as e:  # report, do not stop the sweep
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        row["ok"] = False
    return row


def configs(quick=False):
    """Every (kernel, E, dtype); --quick: E 30 and 128 only."""
    dims = (30, 128) if quick else EMBED_DIMS
    return list(itertools.product(KERNELS, dims, DTYPES))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="E 30 and 128 only")
    ap.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter would pick interpreter block sizes)")
    return sweep(configs(args.quick), compile_one, args.jobs)


def cli_sweep(doc: str, cfgs, compile_one, argv=None) -> int:
    """The compile checks' command line: ``--jobs N``, refuse the interpreter, then :func:`sweep`."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter would pick interpreter block sizes)")
    return sweep(cfgs, compile_one, args.jobs)


def sweep(cfgs, compile_one, jobs: int) -> int:
    """Compile ``cfgs`` with ``compile_one`` in ``jobs`` processes, print a row each; 1 if any fails."""
    print(
        f"{'kernel':6} {'E':>3} {'E_PAD':>5} {'dtype':5} {'BM':>3} {'BN':>4} {'warps':>5} {'REG':>4} {'STACK':>5} "
        f"{'LOCAL':>5} {'SHARED':>6} {'dynSMEM':>7} {'mma':>6}"
    )
    bad = 0
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for r in pool.map(compile_one, cfgs):
            pre = f"{r['kernel']:6} {r['E']:>3} {r['E_PAD']:>5} {r['dtype']:5} "
            if "error" in r:
                print(pre + f"ERROR {r['error']}", flush=True)
            else:
                print(
                    pre + f"{r['BM']:>3} {r['BN']:>4} {r['warps']:>5} {r['REG']:>4} {r['STACK']:>5} {r['LOCAL']:>5} "
                    f"{r['SHARED']:>6} {r['dyn_shared']:>7} {r['mma']:>6}" + ("" if r["ok"] else "  <-- FAIL"),
                    flush=True,
                )
            bad += not r["ok"]
    print(f"{len(cfgs)} configurations, {bad} failing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
