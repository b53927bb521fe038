"""Compile the GD-unit kernel for Hopper (sm_90) on the CPU; report registers, spills and shared memory.

    python benchmarks/compile_check_graph_distill.py [--out benchmarks/results/compile_check_graph_distill.md]

Needs no GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` with the tiles and
options of ``launch_config``, then the cuobjdump bundled with Triton (``--dump-resource-usage``).
Register spills show up as STACK (the per-thread stack frame; ptxas -v counts them as spill
stores), LOCAL stays 0. Exits 1 if a configuration marked strict (fp32/bf16 with M <= 6) spills.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # must be unset before triton / the kernel is imported

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from dmd_fast.kernels.graph_distill import METRICS, graph_distill_fwd_kernel, launch_config  # noqa: E402

# (label, M, B, C, R, g, repr metric, softmax scope, dtypes, strict)
DMD = ("fp32", "bf16")
CONFIGS = [
    ("homo", 3, 16, 1, 50, 64, "l1", "joint", DMD, True),
    ("homo", 3, 16, 1, 64, 64, "l1", "joint", DMD, True),
    ("hetero", 3, 16, 1, 100, 32, "cosine", "joint", DMD, True),
    ("hetero", 3, 16, 1, 128, 32, "cosine", "joint", DMD, True),
    ("homo B=64", 3, 64, 1, 50, 64, "l1", "joint", DMD, True),
    ("hetero B=64", 3, 64, 1, 100, 32, "cosine", "target", DMD, True),
    ("fp64 (gradcheck)", 3, 16, 1, 100, 32, "cosine", "target", ("fp64",), False),
    ("M=5", 5, 64, 2, 256, 64, "cosine", "target", ("fp32",), True),
    ("M=6 g=128", 6, 64, 7, 1024, 128, "cosine", "target", ("fp32",), True),
    ("M=8 g=64", 8, 64, 7, 1024, 64, "cosine", "target", ("fp32",), False),
    ("M=8 g=128", 8, 64, 7, 1024, 128, "cosine", "target", ("fp32",), False),
]
_PTR = {"fp32": "*fp32", "bf16": "*bf16", "fp64": "*fp64"}


def compile_one(M, B, C, R, G, repr_metric, scope, dtype, need_grad=True):
    cfg = launch_config(M, B, C, R, G)
    options = {k: cfg.pop(k) for k in ("num_warps", "maxnreg")}
    constexprs = dict(
        M=M,
        JOINT=scope == "joint",
        LOGIT_METRIC=METRICS["l1"],
        REPR_METRIC=METRICS[repr_metric],
        NEED_GRAD=need_grad,
        ACC=tl.float64 if dtype == "fp64" else tl.float32,
        **cfg,
    )
    in_ptr, acc_ptr = _PTR[dtype], "*fp64" if dtype == "fp64" else "*fp32"
    signature = {}
    for name in graph_distill_fwd_kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ("x_ptr", "r_ptr", "wl_ptr", "bl_ptr", "wr_ptr", "br_ptr", "we_ptr", "be_ptr"):
            signature[name] = in_ptr
        elif name.endswith("_ptr"):
            signature[name] = acc_ptr
        elif name in ("alpha", "w_logit", "w_repr", "reg"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    src = ASTSource(graph_distill_fwd_kernel, signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options), dict(cfg, **options)


def resource_usage(compiled) -> dict[str, int]:
    cuobjdump = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "k.cubin"
        path.write_bytes(compiled.asm["cubin"])
        out = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", str(path)], check=True, capture_output=True, text=True
        ).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    rows = [
        "| config | M | B | C | R | g | repr | scope | dtype | BLOCK_B/R | REG | LOCAL | SHARED | STACK |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    spills = 0
    for label, M, B, C, R, G, rm, scope, dtypes, strict in CONFIGS:
        for dtype in dtypes:
            compiled, cfg = compile_one(M, B, C, R, G, rm, scope, dtype)
            u = resource_usage(compiled)
            spills += strict and (u.get("LOCAL", 0) > 0 or u.get("STACK", 0) > 0)
            rows.append(
                f"| {label} | {M} | {B} | {C} | {R} | {G} | {rm} | {scope} | {dtype} | "
                f"{cfg['BLOCK_B']}/{cfg['BLOCK_R']} | {u.get('REG')} | {u.get('LOCAL')} | {u.get('SHARED')} | "
                f"{u.get('STACK')} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join([f"sm_90, triton {triton.__version__}, launch_config() tiles, 8 warps, maxnreg 255", "", *rows])
    print("\n" + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
