"""Benchmark output: JSON (everything), a markdown summary, PNG plots.

Files written by :func:`write_report` into one flat folder: ``results.json``, ``results.md``,
``speedup.png``, ``memory.png``. The JSON carries the card's name, driver, torch/triton/python
versions, the date and the git commit, so committed results say where they came from.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess

RESULT_FILES = ("results.json", "results.md", "speedup.png", "memory.png")


# ------------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------------


def git_commit(repo_dir: str | None = None) -> str:
    """``git rev-parse HEAD`` (+ ``-dirty``) of the checkout; env ``DMD_FAST_GIT_COMMIT`` overrides."""
    env = os.environ.get("DMD_FAST_GIT_COMMIT")
    if env:
        return env
    repo_dir = repo_dir or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", repo_dir, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(
            ["git", "-C", repo_dir, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def card_slug(name: str) -> str:
    """A file-name-safe card name: letters, digits, '.', '_', '-'."""
    out = "".join(c if (c.isalnum() and c.isascii()) or c in "._-" else "-" for c in name.strip())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-").lower() or "unknown"


def collect_environment(device=None) -> dict:
    """Card, driver, versions, date, commit; NVML snapshot on CUDA."""
    import torch

    from dmd_fast.bench.memory import nvml_snapshot

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:
        env["triton"] = f"not importable ({type(exc).__name__})"
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except Exception:
        env["numpy"] = None
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env["device"] = str(dev)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env["device_name"] = props.name
        env["sm_count"] = props.multi_processor_count
        env["capability"] = f"{props.major}.{props.minor}"
        env["device_memory_mb"] = round(props.total_memory / 2**20)
        env["allow_tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        env["nvml"] = nvml_snapshot()
        env["driver"] = env["nvml"].get("driver") if env["nvml"].get("available") else None
    else:
        env["device_name"] = f"cpu ({platform.processor() or platform.machine()})"
        env["nvml"] = nvml_snapshot()
        env["driver"] = None
    return env


# ------------------------------------------------------------------------------------------------
# JSON and markdown
# ------------------------------------------------------------------------------------------------


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def write_json(results: dict, path: str):
    """Atomic write (temp file + rename) so a killed run never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(results), f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _fmt_us(m: dict | None, compact: bool = False) -> str:
    if not m:
        return "-"
    if m.get("status") != "ok":
        return m.get("status", "-")
    med, lo, hi = m["median_us"], m["p20_us"], m["p80_us"]
    if compact:
        return f"{med / 1e3:.2f} ms" if med >= 1000 else f"{med:.1f}"
    if med >= 1000:
        return f"{med / 1e3:.2f} ms [{lo / 1e3:.2f}-{hi / 1e3:.2f}]"
    return f"{med:.1f} [{lo:.1f}-{hi:.1f}]"


def _fmt(x, spec=".1f", none="-"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def _median(row, mode):
    m = row.get("modes", {}).get(mode) or {}
    return m.get("median_us") if m.get("status") == "ok" else None


def _suite(row: dict) -> str:
    """A row's suite, earlier names ('gd' in results written before the rename) resolved."""
    return {"gd": "graph_distill", "op": "attention"}.get(row.get("suite"), row.get("suite"))


def speedups(rows: list, suite: str, mode: str = "fwdbwd", baseline: str = "eager") -> dict:
    """{(case, provider): t_baseline / t_provider} for rows of one suite where both ran."""
    base = {r["case"]: _median(r, mode) for r in rows if _suite(r) == suite and r.get("provider") == baseline}
    out = {}
    for r in rows:
        if _suite(r) != suite:
            continue
        t, b = _median(r, mode), base.get(r["case"])
        if t and b:
            out[(r["case"], r["provider"])] = b / t
    return out


def _case(row: dict, compact: bool) -> str:
    """Case label; compact drops the parts every attention case shares (B, H, mask, dropout)."""
    name = row["case"]
    if compact and row.get("suite") == "attention":
        sh = row.get("shape") or {}
        if sh:
            return f"{sh['Lq']}x{sh['Lk']} d{sh['D']} {sh['dtype']}" + ("" if sh.get("B") == 16 else f" B{sh['B']}")
    return name


def _notes_col(row: dict, compact: bool = False) -> str:
    if compact:
        bits = [] if row.get("equivalent", True) else ["not equiv."]
        for mode, m in (row.get("modes") or {}).items():
            if m.get("status") not in ("ok", None, "skipped") and m.get("reason"):
                bits.append(f"{mode}: {m['reason'][:60]}")
        if row.get("status") != "ok" and row.get("reason"):
            bits.append(row["reason"][:60])
        return "; ".join(bits).replace("|", "/").replace("\n", " ")
    bits = []
    if not row.get("equivalent", True):
        bits.append("**not equivalent**")
    if row.get("note"):
        bits.append(row["note"])
    extra = row.get("extra") or {}
    for key, what in (("launches_fwdbwd", "kernels fwd+bwd"), ("kernels_per_call", "kernels per call")):
        launches = extra.get(key)
        if isinstance(launches, dict) and launches.get("status") == "ok":
            bits.append(f"{launches['kernels']} {what}")
    first = max((m.get("first_call_ms") or 0.0 for m in (row.get("modes") or {}).values()), default=0.0)
    if first >= 1000.0:
        bits.append(f"first call {first / 1e3:.1f} s (compile/autotune, not timed)")
    if extra.get("block_mask_build_us"):
        bits.append(f"create_block_mask {extra['block_mask_build_us']:.0f} us")
    for mode, m in (row.get("modes") or {}).items():
        if m.get("status") not in ("ok", None) and m.get("reason"):
            bits.append(f"{mode}: {m['reason']}")
    if row.get("status") != "ok" and row.get("reason"):
        bits.append(row["reason"])
    return "; ".join(bits).replace("|", "/").replace("\n", " ")


PROVIDER_ORDER = ("ours", "cudagraph", "eager", "compiled", "sdpa", "sdpa_flash_nomask", "flex", "reference")


def _sorted_rows(rows: list) -> list:
    """Rows grouped by case (first-seen order), providers in PROVIDER_ORDER within a case."""
    case_idx = {c: i for i, c in enumerate(dict.fromkeys(r["case"] for r in rows))}
    prov = {p: i for i, p in enumerate(PROVIDER_ORDER)}
    return sorted(rows, key=lambda r: (case_idx[r["case"]], prov.get(r.get("provider"), len(prov))))


def markdown(results: dict, compact: bool = False) -> str:
    """The summary tables (times in µs, median [p20-p80]; memory in MiB).

    ``compact``: medians only, short case names and notes (for a terminal tail)."""
    c = compact
    env = results.get("env", {})
    rows = results.get("rows", [])
    lines = [f"# dmd_fast benchmarks: {env.get('device_name', '?')}", ""]
    lines.append(
        f"{env.get('date', '?')}; torch {env.get('torch')}, triton {env.get('triton')}, CUDA "
        f"{env.get('cuda_runtime')}, driver {env.get('driver')}, python {env.get('python')}; commit "
        f"`{env.get('git_commit')}`"
    )
    opts = results.get("options", {})
    lines.append(
        f"suites {opts.get('suites')}, {'quick' if opts.get('quick') else 'full'}, device "
        f"{opts.get('device')}; elapsed {results.get('elapsed_s', '?')} s"
    )
    fl = results.get("floors") or {}
    if fl.get("copy", {}).get("status") == "ok":
        rates = fl.get("rates", {})
        lines.append(
            f"copy bandwidth {fl['copy']['gb_per_s']:.0f} GB/s (measured); exp {rates.get('exp_per_s', 0):.3g}/s, "
            f"fp32 {rates.get('fp32_lane_ops_per_s', 0):.3g} lane-ops/s ({rates.get('source')})"
        )
    lines.append("")
    lines.append(
        ("Times: µs, median (p20/p80 in results.md). " if c else "Times: µs, median [p20-p80]. ")
        + "*eager-launched*: synchronised per call, host enqueue "
        "included; *graph*: CUDA-graph replay (device time). fwd is the training forward "
        "(inputs need grad). Peak: extra MiB allocated during one fwd+bwd. Speedup: eager "
        "fwd+bwd / this fwd+bwd. Floor: docs/performance-floor.md, 'Floor terms at DMD's shapes' "
        "(floor / graph fwd+bwd)."
    )
    att = _sorted_rows([r for r in rows if r.get("suite") == "attention"])
    if att:
        sp = speedups(rows, "attention")
        lines += [
            "",
            "## Attention core",
            "",
            "| case | provider | fwd | fwd+bwd | graph fwd+bwd | peak MiB | vs eager | floor µs | of floor | notes |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in att:
            modes = r.get("modes") or {}
            floor = r.get("floor") or {}
            g = modes.get("graph_fwdbwd") or {}
            frac = g.get("floor_fraction")
            lines.append(
                "| "
                + " | ".join(
                    [
                        _case(r, c),
                        r["provider"],
                        _fmt_us(modes.get("fwd"), c),
                        _fmt_us(modes.get("fwdbwd"), c),
                        _fmt_us(g, c),
                        _fmt((r.get("memory") or {}).get("fwdbwd")),
                        _fmt(sp.get((r["case"], r["provider"])), ".2f")
                        + ("x" if (r["case"], r["provider"]) in sp else ""),
                        _fmt(floor.get("fwdbwd_us")),
                        (_fmt(100 * frac, ".1f") + "%") if frac else "-",
                        _notes_col(r, c),
                    ]
                )
                + " |"
            )
    chk = (results.get("checks") or {}).get("recompile")
    if chk:
        lines += ["", "## Zero-recompile check", ""]
        if chk.get("status") == "ok":
            per = "; ".join(
                f"{dt}: variants {d['variants_after_each_pair']} -> {d['recompiles_after_first_pair']} recompiles"
                for dt, d in chk.get("per_dtype", {}).items()
            )
            lines.append(
                f"{'PASS' if chk.get('passed') else 'FAIL'}: {len(chk.get('pairs', []))} length pairs "
                f"{chk.get('pairs')}; compiled variants before: {chk.get('variants_before')}; {per}"
            )
        else:
            lines.append(f"{chk.get('status')}: {chk.get('reason')}")
    gd = _sorted_rows([r for r in rows if _suite(r) == "graph_distill"])
    if gd:
        sp = speedups(rows, "graph_distill")
        lines += [
            "",
            "## Graph distillation (GD unit)",
            "",
            "| case | provider | fwd | fwd+bwd | graph fwd+bwd | peak MiB | vs eager | notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in gd:
            modes = r.get("modes") or {}
            lines.append(
                "| "
                + " | ".join(
                    [
                        r["case"],
                        r["provider"],
                        _fmt_us(modes.get("fwd"), c),
                        _fmt_us(modes.get("fwdbwd"), c),
                        _fmt_us(modes.get("graph_fwdbwd"), c),
                        _fmt((r.get("memory") or {}).get("fwdbwd"), ".3f"),
                        _fmt(sp.get((r["case"], r["provider"])), ".2f"),
                        _notes_col(r, c),
                    ]
                )
                + " |"
            )
    mdl = _sorted_rows([r for r in rows if r.get("suite") == "model"])
    if mdl:
        base = {r["case"]: r.get("samples_per_s") for r in mdl if r["provider"] == "eager"}
        lines += [
            "",
            "## Model level",
            "",
            "| what | provider | step | samples/s | vs eager | peak MiB | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in mdl:
            sps, b = r.get("samples_per_s"), base.get(r["case"])
            lines.append(
                "| "
                + " | ".join(
                    [
                        r["case"],
                        r["provider"],
                        _fmt_us((r.get("modes") or {}).get("step"), c),
                        _fmt(sps, ".0f"),
                        (_fmt(sps / b, ".2f") + "x") if sps and b else "-",
                        _fmt((r.get("memory") or {}).get("step")),
                        _notes_col(r, c),
                    ]
                )
                + " |"
            )
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def write_markdown(results: dict, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(markdown(results))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(ax, cases, providers, value, ylabel, title, log=True):
    import numpy as np

    x = np.arange(len(cases))
    width = 0.8 / max(len(providers), 1)
    for i, p in enumerate(providers):
        vals = [value(c, p) for c in cases]
        ys = [v if v is not None else 0.0 for v in vals]
        ax.bar(x + (i - (len(providers) - 1) / 2) * width, ys, width, label=p)
    ax.set_xticks(x)
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if log and any(value(c, p) for c in cases for p in providers):
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _order(seq):
    return list(dict.fromkeys(seq))


def plot_speedup(results: dict, path: str) -> str | None:
    """Speedup over eager (fwd+bwd, eager-launched and graph) per attention case and provider."""
    rows = results.get("rows", [])
    panels = []
    for suite, mode, title in (
        ("attention", "fwdbwd", "attention fwd+bwd, eager-launched"),
        ("attention", "graph_fwdbwd", "attention fwd+bwd, CUDA graph"),
        ("graph_distill", "fwdbwd", "GD fwd+bwd, eager-launched"),
    ):
        sp = speedups(rows, suite, mode)
        if any(p != "eager" for _, p in sp):
            panels.append((sp, title))
    mdl = [r for r in rows if r.get("suite") == "model" and r.get("samples_per_s")]
    if not panels and not mdl:
        return None
    plt = _plt()
    n = len(panels) + (1 if mdl else 0)
    fig, axes = plt.subplots(n, 1, figsize=(10, 3.2 * n), squeeze=False)
    for ax, (sp, title) in zip(axes[:, 0], panels):
        cases = _order(c for c, _ in sp)
        provs = _order(p for _, p in sp if p != "eager")
        _grouped_bars(ax, cases, provs, lambda c, p: sp.get((c, p)), "speedup over eager (x)", title)
        ax.axhline(1.0, color="k", lw=0.8)
    if mdl:
        ax = axes[-1, 0]
        cases = _order(r["case"] for r in mdl)
        provs = _order(r["provider"] for r in mdl)
        val = {(r["case"], r["provider"]): r["samples_per_s"] for r in mdl}
        _grouped_bars(ax, cases, provs, lambda c, p: val.get((c, p)), "samples/s", "model level", log=False)
    fig.suptitle(f"dmd_fast: {results.get('env', {}).get('device_name', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(results: dict, path: str) -> str | None:
    """Peak extra memory (MiB) per case and provider: attention fwd+bwd and model steps."""
    rows = results.get("rows", [])
    panels = []
    for suite, mode, title in (
        ("attention", "fwdbwd", "attention fwd+bwd peak extra MiB"),
        ("model", "step", "model step peak extra MiB"),
    ):
        val = {
            (r["case"], r["provider"]): (r.get("memory") or {}).get(mode)
            for r in rows
            if r.get("suite") == suite and (r.get("memory") or {}).get(mode) is not None
        }
        if val:
            panels.append((val, title))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.4 * len(panels)), squeeze=False)
    for ax, (val, title) in zip(axes[:, 0], panels):
        cases = _order(c for c, _ in val)
        provs = _order(p for _, p in val)
        _grouped_bars(ax, cases, provs, lambda c, p: val.get((c, p)), "MiB", title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: str, *, plots: bool = True) -> list[str]:
    """Write results.json, results.md and (when there is data and matplotlib) the two PNGs."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    p = os.path.join(out_dir, "results.json")
    write_json(results, p)
    written.append(p)
    p = os.path.join(out_dir, "results.md")
    write_markdown(results, p)
    written.append(p)
    if plots:
        for fn, name in ((plot_speedup, "speedup.png"), (plot_memory, "memory.png")):
            try:
                out = fn(results, os.path.join(out_dir, name))
            except Exception as exc:  # a plot must never lose the numbers
                results.setdefault("notes", []).append(f"{name} not written: {type(exc).__name__}: {exc}")
                out = None
            if out:
                written.append(out)
        write_json(results, os.path.join(out_dir, "results.json"))
    return written


def main(argv=None) -> int:
    """``python -m dmd_fast.bench.report DIR``: re-render results.md and the PNGs from DIR/results.json
    (e.g. after a run was cut off by a time limit) and print the markdown."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    compact = "--compact" in argv  # print the compact tables
    print_only = "--print-only" in argv  # do not rewrite the files
    argv = [a for a in argv if a not in ("--compact", "--print-only")]
    if len(argv) != 1:
        print(
            "usage: python -m dmd_fast.bench.report DIR [--compact] [--print-only] (DIR holds results.json)",
            file=sys.stderr,
        )
        return 2
    path = os.path.join(argv[0], "results.json")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"dmd_fast.bench.report: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if not print_only:
        write_report(results, argv[0])
    print(markdown(results, compact=compact))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
