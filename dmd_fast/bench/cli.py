"""``dmd-fast bench``: run the benchmark suites and write JSON, markdown and plots.

Wiring into the main CLI (``dmd_fast/cli.py``, in ``build_parser`` after ``sub`` exists)::

    from dmd_fast.bench.cli import add_bench_parser; add_bench_parser(sub)

It also runs on its own: ``python -m dmd_fast.bench.cli --suite attention --quick``.
Exit codes: 0 ran (individual rows may still record skips or errors), 2 bad arguments or a
configuration that cannot run here, 1 an unexpected failure (message, no traceback).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys

from dmd_fast import validation as check

SUITE_CHOICES = ("attention", "graph_distill", "model", "latency", "all", "op", "gd")  # op, gd: earlier names
POSITIVE_FLOAT = check.cli_type(float, check.positive, "a positive finite number")


def add_bench_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--suite",
        default="all",
        choices=SUITE_CHOICES,
        help="op: attention core (+ zero-recompile check); gd: graph distillation; "
        "model: DMD train step and hetero branch; all (default: op, gd, model); "
        "latency: inference latency per batch size (dmd_fast.bench.suites.latency)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: $OUT if set, else benchmarks/results/<date>-<card>)",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repetitions (runs on a CPU)")
    p.add_argument(
        "--backend-list",
        default=None,
        metavar="LIST",
        help="comma-separated providers to run (default: each suite's own); 'list' prints them",
    )
    p.add_argument("--device", default="auto", help="auto (default), cuda, cuda:N or cpu")
    p.add_argument(
        "--time-budget",
        type=POSITIVE_FLOAT,
        default=None,
        metavar="SECONDS",
        help="stop starting new measurements after this long (what is left is recorded as skipped)",
    )
    p.add_argument(
        "--rep-ms",
        type=POSITIVE_FLOAT,
        default=None,
        metavar="MS",
        help="timed repetitions per measurement, in ms of run time (default 60; quick 20)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the main CLI's subparsers; it dispatches to :func:`run_bench`."""
    p = subparsers.add_parser(
        "bench", help="benchmark the kernels and the model against baselines", description=__doc__.split("\n\n")[0]
    )
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)
    return p


def _err(msg: str) -> int:
    print(f"dmd-fast bench: error: {msg}", file=sys.stderr)
    return 2


def _providers(text: str | None):
    from dmd_fast.bench.suites import ALL_PROVIDERS

    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError("--backend-list: expected a comma-separated list of providers, got an empty list")
    unknown = [n for n in names if n not in ALL_PROVIDERS]
    if unknown:
        raise ValueError(
            f"--backend-list: unknown provider(s) {', '.join(map(repr, unknown))} "
            f"(choose from {', '.join(ALL_PROVIDERS)})"
        )
    return tuple(dict.fromkeys(names))


def _default_out(device_name: str) -> str:
    env = os.environ.get("OUT")
    if env:
        return env
    from dmd_fast.bench.report import card_slug

    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d")
    return os.path.join("benchmarks", "results", f"{date}-{card_slug(device_name)}")


def run_bench(args) -> int:
    """Entry point of ``dmd-fast bench`` (``args`` from :func:`add_bench_arguments`)."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("dmd-fast bench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the promise: a clear message, the traceback only with --debug
        if getattr(args, "debug", False):
            raise
        print(f"dmd-fast bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.suite == "latency":
        return _run_latency(args)
    if args.backend_list is not None and args.backend_list.strip() == "list":
        from dmd_fast.bench.suites import PROVIDER_HELP

        for name, text in PROVIDER_HELP.items():
            print(f"{name:18s} {text}")
        return 0
    try:
        providers = _providers(args.backend_list)
    except ValueError as exc:
        return _err(str(exc))
    for flag, value in (("--time-budget", args.time_budget), ("--rep-ms", args.rep_ms)):
        if value is not None:  # argparse checks them; a caller may build ``args`` itself
            try:
                check.positive(value, flag)
            except (TypeError, ValueError) as exc:
                return _err(str(exc))

    import torch

    from dmd_fast.bench import suites as st

    try:
        device = _device(args.device)
    except ValueError as exc:
        return _err(str(exc))
    suite = st.canonical_suite(args.suite)
    suites = ("attention", "graph_distill", "model") if suite == "all" else (suite,)
    if device.type != "cuda" and not args.quick:
        return _err(
            f"--suite {args.suite}: the full-size suites need a CUDA GPU and none is available here; "
            "use --quick for tiny shapes on the CPU"
        )
    if providers is not None:
        if not any(p in st.KNOWN_PROVIDERS[s] for s in suites for p in providers):
            return _err(f"--backend-list: none of {', '.join(providers)} applies to --suite {args.suite}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out_dir = args.out or _default_out(device_name)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        return _err(f"--out: cannot create {out_dir!r} ({exc})")
    rep_ms = args.rep_ms if args.rep_ms is not None else (20.0 if args.quick else 60.0)
    opts = st.SuiteOptions(
        suites=suites,
        quick=args.quick,
        device=str(device),
        providers=providers,
        time_budget_s=args.time_budget,
        out_dir=out_dir,
        rep_ms=rep_ms,
        warmup_ms=10.0 if args.quick else 25.0,
        n_sets=2 if args.quick else 3,
    )
    results = st.run_suites(opts)
    from dmd_fast.bench.report import markdown, write_report

    written = write_report(results, out_dir, plots=not args.no_plots)
    print(markdown(results))
    print(f"dmd-fast bench: wrote {', '.join(written)}", file=sys.stderr)
    return 0


def _device(text: str):
    """torch.device from ``--device`` (auto, cpu, cuda[:N]; made current on CUDA); ValueError if unusable."""
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device: expected auto, cpu or cuda[:N], got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA requested but no CUDA device is available")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def _run_latency(args) -> int:
    """``--suite latency``: its own providers, rows and files (latency.json, latency.md, latency.png)."""
    import torch

    from dmd_fast.bench.suites import latency as lt

    try:
        providers = lt.parse_providers(None if args.backend_list == "list" else args.backend_list)
        device = _device(args.device)
    except ValueError as exc:
        return _err(str(exc))
    if args.backend_list is not None and args.backend_list.strip() == "list":
        for name, text in lt.PROVIDERS.items():
            print(f"{name:16s} {text}")
        return 0
    if args.time_budget is not None and args.time_budget <= 0:
        return _err(f"--time-budget: expected a positive number of seconds, got {args.time_budget:g}")
    if device.type != "cuda" and not args.quick:
        return _err(
            "--suite latency: the full suite (mosi-unaligned, B up to 64, 200 calls per row) needs a CUDA "
            "GPU and none is available here; use --quick for the tiny preset on the CPU"
        )
    out_dir = args.out or _default_out(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        return _err(f"--out: cannot create {out_dir!r} ({exc})")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # as the other suites: spinning OpenMP threads on a shared CPU
    try:
        results = lt.run_latency(
            args.quick,
            device,
            providers=providers,
            time_budget_s=args.time_budget,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            out_dir=out_dir,
        )
    finally:
        torch.set_num_threads(threads)
    written = lt.write_latency_report(results, out_dir, plots=not args.no_plots)
    print(lt.markdown(results))
    print(f"dmd-fast bench: wrote {', '.join(written)}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmd-fast bench", description=__doc__.split("\n\n")[0])
    return add_bench_arguments(p)


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one-line error (exit code 2)
        return exc.code if isinstance(exc.code, int) else 2
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
