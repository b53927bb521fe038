"""Bytes saved for backward by one DMD training forward (losses included), per backend, on any machine.

A ``saved_tensors_hooks`` pack hook records every storage autograd keeps; parameters are left out.
On the CPU the Triton launches are counted, not run (``dmd_fast.bench.launches.count_launches``): the
saved tensors then have their real shapes and dtypes, which is all this measures.

    python benchmarks/saved_bytes.py [--preset mosi-unaligned] [--batch 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel import: CPU runs count the launches

import torch  # noqa: E402

from dmd_fast.bench.launches import count_launches, dmd_kernels  # noqa: E402
from dmd_fast.model.config import get_preset  # noqa: E402
from dmd_fast.model.system import DMDSystem  # noqa: E402

MiB = 2**20


def saved_bytes(preset: str, batch: int, backend: str) -> dict:
    """{"bytes", "storages"} saved for backward by one training forward of ``backend``."""
    cfg = get_preset(preset)
    gen = torch.Generator().manual_seed(0)
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    inputs = [torch.randn(batch, t, d, generator=gen) for t, d in ((tl, dl), (ta, da), (tv, dv))]
    labels = torch.rand(batch, generator=gen) * 6 - 3
    torch.manual_seed(0)
    system = DMDSystem(cfg, backend=backend).train()
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with count_launches(*(dmd_kernels() if backend == "triton" else []), execute_triton=False):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            system(*inputs, labels)
    params = {p.untyped_storage().data_ptr() for p in system.parameters()}
    kept = {ptr: n for ptr, n in seen.items() if ptr not in params}
    return {"bytes": sum(kept.values()), "storages": len(kept)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mosi-unaligned")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None, help="folder for saved_bytes.json / saved_bytes.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = {b: saved_bytes(args.preset, args.batch, b) for b in ("reference", "triton")}
    lines = [
        f"Saved-for-backward bytes of one DMD training forward (preset {args.preset}, B={args.batch}; "
        "parameters excluded; Triton launches counted, not run):",
        "",
        "| backend | MiB | storages |",
        "|---|---:|---:|",
    ] + [f"| {b} | {r['bytes'] / MiB:.1f} | {r['storages']} |" for b, r in rows.items()]
    print("\n".join(lines))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        res = {"preset": args.preset, "batch": args.batch, "torch": torch.__version__, "backends": rows}
        with open(os.path.join(args.out, "saved_bytes.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(args.out, "saved_bytes.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
