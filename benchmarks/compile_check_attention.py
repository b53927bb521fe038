"""Compile every attention kernel configuration for Hopper (sm_90) on the CPU and read its resources.

Runs without a GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` and the
``cuobjdump`` shipped in Triton's wheel (``--dump-resource-usage``, ``--dump-sass``). Prints one row
per configuration: registers, STACK and LOCAL (spill) bytes, static and dynamic shared memory, the matrix
instructions used. Exits 1 on any spill, compile error or shared-memory overflow.

    python benchmarks/compile_check_attention.py [--quick] [--jobs N]

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
DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
MASKS = {"none": (False, False), "causal": (True, False), "keylen": (False, True), "both": (True, True)}
LAST_DIM_STRIDES = {f"s_{t}d" for t in ("q", "k", "v", "o", "do", "dq", "dk", "dv")}
HEAD_DIMS = (10, 20, 40, 80)  # D_PAD 16, 32, 64, 128; non-powers of two so the D mask is compiled in


def _cuobjdump():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _signature(fn, dt, has_kl, dropout, grouped):
    """Runtime-like signature: pointers 16-byte aligned, unit last-dim strides specialised to 1."""
    sig, consts, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            sig[name] = "constexpr"
        elif name in ("q", "k", "v", "o", "do", "dq", "dk", "dv"):
            sig[name] = f"*{dt}"
        elif name == "lse":
            sig[name] = "*fp32"
        elif name == "keep":
            sig[name] = "*i8"
        elif name == "key_len":
            sig[name] = "*i32" if has_kl else "constexpr"
            if not has_kl:
                consts[name] = None
        elif name == "seed_ptr":
            sig[name] = "*i64" if (dropout or fn.__name__ == "attention_dropout_mask_kernel") else "constexpr"
            if sig[name] == "constexpr":
                consts[name] = None
        elif name == "desc":
            sig[name] = "*i64" if grouped else "constexpr"
            if not grouped:
                consts[name] = None
        elif name in LAST_DIM_STRIDES:
            sig[name] = "constexpr"  # unit last-dim stride, specialised by Triton at runtime
            consts[name] = 1
        elif name.endswith("_hi") or name.endswith("_lo"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
        if sig[name].startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def compile_one(cfg):
    """Compile one configuration; returns a result dict (never raises)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dmd_fast.kernels import attention as ka
    from dmd_fast.kernels import attention_dropout as kd

    role, D, dt, mask, dropout, grouped, precision = cfg
    row = dict(
        kernel=role, D_PAD=ka.d_pad(D), D=D, dtype=dt, mask=mask, dropout=dropout, grouped=grouped, precision=precision
    )
    try:
        causal, has_kl = MASKS[mask]
        if role == "mask":
            fn = kd.attention_dropout_mask_kernel
            bm, bn, warps, stages = 64, 64, 4, 3
            consts = dict(BLOCK_M=bm, BLOCK_N=bn)
        else:
            fn = {"fwd": ka.attention_fwd_kernel, "dq": ka.attention_bwd_dq_kernel, "dkv": ka.attention_bwd_dkv_kernel}[
                role
            ]
            torch_dt = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dt]
            import torch

            bm, bn, warps, stages = ka.block_config(role, D, getattr(torch, torch_dt))
            consts = dict(
                D=D,
                D_PAD=ka.d_pad(D),
                BLOCK_M=bm,
                BLOCK_N=bn,
                CAUSAL=causal,
                KEY_LEN=has_kl,
                DROPOUT=dropout,
                GROUPED=grouped,
                PRECISION=precision,
                ACC=tl.float32,
            )
        row.update(BLOCK_M=bm, BLOCK_N=bn, warps=warps, stages=stages)
        sig, c2, attrs = _signature(fn, dt, has_kl, dropout, grouped)
        consts.update(c2)
        src = ASTSource(fn, sig, consts, attrs)
        compiled = triton.compile(
            src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages)
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "k.cubin")
            with open(path, "wb") as f:
                f.write(compiled.asm["cubin"])
            res = subprocess.run(
                [_cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True, check=True
            ).stdout
            sass = subprocess.run(
                [_cuobjdump(), "--dump-sass", path], capture_output=True, text=True, check=True
            ).stdout
        fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res))
        row.update(
            REG=int(fields["REG"]),
            STACK=int(fields["STACK"]),
            LOCAL=int(fields["LOCAL"]),
            SHARED=int(fields["SHARED"]),
            dyn_shared=int(compiled.metadata.shared),
        )
        ops = [op for op in ("HGMMA", "HMMA", "DMMA") if re.search(rf"\b{op}\b", sass)]
        row["mma"] = "+".join(ops) if ops else ("FFMA" if "FFMA" in sass else "-")
        row["ok"] = row["LOCAL"] == 0 and row["STACK"] == 0 and row["dyn_shared"] + row["SHARED"] <= SM90_SHARED_MAX
    except Exception as e:  # report, do not stop the sweep
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        row["ok"] = False
    return row


def configs(quick=False):
    """Every (kernel, D, dtype, mask, dropout) config, plus grouped and tf32 variants."""
    dims = (10, 80) if quick else HEAD_DIMS
    roles = ("fwd", "dq", "dkv")
    out = [
        (r, D, dt, m, dr, False, "ieee")
        for r, D, dt, m, dr in itertools.product(roles, dims, DTYPES, MASKS, (False, True))
    ]
    out += [(r, D, dt, "both", True, True, "ieee") for r, D, dt in itertools.product(roles, dims, DTYPES)]
    out += [(r, D, "fp32", "both", True, False, "tf32") for r, D in itertools.product(roles, dims)]
    out += [("mask", 16, "fp32", "none", True, False, "ieee")]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="D_PAD 16 and 128 only")
    ap.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter would pick interpreter block sizes)")
    cfgs = configs(args.quick)
    head = (
        f"{'kernel':6} {'D_PAD':>5} {'dtype':5} {'prec':4} {'mask':6} {'drop':4} {'grp':3} {'BM':>3} {'BN':>3} "
        f"{'warps':>5} {'stg':>3} {'REG':>4} {'STACK':>5} {'LOCAL':>5} {'SHARED':>6} {'dynSMEM':>7} {'mma':>6}"
    )
    print(head)
    bad = 0
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for r in pool.map(compile_one, cfgs):
            pre = (
                f"{r['kernel']:6} {r['D_PAD']:>5} {r['dtype']:5} {r['precision']:4} {r['mask']:6} "
                f"{'on' if r['dropout'] else 'off':4} {'yes' if r['grouped'] else 'no':3} "
            )
            if "error" in r:
                print(pre + f"ERROR {r['error']}", flush=True)
            else:
                print(
                    pre + f"{r['BLOCK_M']:>3} {r['BLOCK_N']:>3} {r['warps']:>5} {r['stages']:>3} {r['REG']:>4} "
                    f"{r['STACK']:>5} {r['LOCAL']:>5} "
                    f"{r['SHARED']:>6} {r['dyn_shared']:>7} {r['mma']:>6}" + ("" if r["ok"] else "  <-- FAIL"),
                    flush=True,
                )
            bad += not r["ok"]
    print(f"{len(cfgs)} configurations, {bad} failing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
