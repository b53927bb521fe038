"""Timing with CUDA events, CUDA-graph replays, or ``time.perf_counter`` on the CPU.

Every timer takes ``fn`` and a list of argument tuples (``arg_sets``); successive calls rotate
through the sets so that repeated calls do not all hit one buffer in cache. Warm-up calls
(compilation, autotuning, allocator growth) are excluded; the first call's wall time is reported
separately as ``first_call_ms`` so that compilation cost stays visible.

Two CUDA views of the same function (docs/performance-floor.md, "How benchmarks compare providers"):

- :func:`time_cuda` ("eager-launched"): per call, flush L2 (as ``triton.testing.do_bench``),
  synchronise, record a start event, call ``fn``, record an end event. Because the device is idle
  when the start event is recorded, host enqueue time (Python, dispatcher, launch overhead) is
  inside the measurement: this is the latency a caller sees for one isolated call.
  ``method="do_bench"`` uses ``triton.testing.do_bench`` itself instead (its L2 flush runs
  before the start event, which can hide host time behind it).
- :func:`time_cuda_graph`: capture ``fn`` on every argument set into one ``torch.cuda.CUDAGraph``
  and time its replays (divided by the number of sets): device time without host overhead.

Quantiles are (0.5, 0.2, 0.8): the median and the 20th/80th percentiles.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

QUANTILES = (0.5, 0.2, 0.8)
_L2_FLUSH_BYTES = 256 * 1024 * 1024
_flush_buffers: dict = {}


@dataclass
class Timing:
    """One timing result in microseconds (median and p20/p80 over ``n`` timed calls)."""

    median_us: float
    p20_us: float
    p80_us: float
    n: int
    method: str
    first_call_ms: float | None = None

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class CaptureError(RuntimeError):
    """CUDA-graph capture of a function failed; the message says why."""


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default rule) of a non-empty sequence."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile: empty sequence")
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float], method: str, first_call_ms: float | None = None) -> Timing:
    """Median/p20/p80 of per-call times given in milliseconds."""
    med, p20, p80 = (quantile(samples_ms, q) * 1e3 for q in QUANTILES)
    return Timing(med, p20, p80, len(samples_ms), method, first_call_ms)


def _check_sets(arg_sets) -> list:
    sets = [tuple(a) for a in arg_sets]
    if not sets:
        raise ValueError("arg_sets: expected at least one argument tuple")
    return sets


def time_cpu(
    fn: Callable, arg_sets, *, warmup: int = 1, rep_ms: float = 200.0, min_reps: int = 3, max_reps: int = 100
) -> Timing:
    """Median wall time per call on the CPU with ``time.perf_counter`` (warm-up excluded)."""
    sets = _check_sets(arg_sets)
    t0 = time.perf_counter()
    fn(*sets[0])
    first_ms = (time.perf_counter() - t0) * 1e3
    est_ms = first_ms
    for i in range(max(warmup - 1, 0)):
        t0 = time.perf_counter()
        fn(*sets[(i + 1) % len(sets)])
        est_ms = (time.perf_counter() - t0) * 1e3
    n = int(min(max(rep_ms / max(est_ms, 1e-3), min_reps), max_reps))
    samples = []
    for i in range(n):
        args = sets[i % len(sets)]
        t0 = time.perf_counter()
        fn(*args)
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples, "cpu perf_counter", first_ms)


def _flush_buffer(device):
    import torch

    key = str(device)
    buf = _flush_buffers.get(key)
    if buf is None:
        buf = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        _flush_buffers[key] = buf
    return buf


def time_cuda(
    fn: Callable,
    arg_sets,
    *,
    warmup_ms: float = 25.0,
    rep_ms: float = 75.0,
    min_reps: int = 5,
    max_reps: int = 400,
    flush_l2: bool = True,
    method: str = "events",
) -> Timing:
    """Per-call device-event timing of ``fn`` on CUDA, host enqueue included (see module doc).

    ``method="do_bench"`` delegates to ``triton.testing.do_bench`` with the same rotation.
    """
    import torch

    sets = _check_sets(arg_sets)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(*sets[0])
    torch.cuda.synchronize()
    first_ms = (time.perf_counter() - t0) * 1e3
    if method == "do_bench":
        from triton.testing import do_bench

        state = {"i": 0}

        def call():
            fn(*sets[state["i"] % len(sets)])
            state["i"] += 1

        med, p20, p80 = do_bench(call, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES))
        n_est = max(1, int(rep_ms / max(med, 1e-6)))
        return Timing(med * 1e3, p20 * 1e3, p80 * 1e3, n_est, "triton do_bench", first_ms)
    if method != "events":
        raise ValueError(f"method: expected 'events' or 'do_bench', got {method!r}")
    flush = _flush_buffer(torch.cuda.current_device()) if flush_l2 else None
    # warm-up: at least two calls, until warmup_ms of wall time has passed
    i, start = 0, time.perf_counter()
    while i < 2 or (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn(*sets[i % len(sets)])
        i += 1
    torch.cuda.synchronize()
    est_ms = max((time.perf_counter() - start) * 1e3 / i, 1e-3)
    n = int(min(max(rep_ms / est_ms, min_reps), max_reps))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for j in range(n):
        args = sets[j % len(sets)]
        if flush is not None:
            flush.zero_()
        torch.cuda.synchronize()
        starts[j].record()
        fn(*args)
        ends[j].record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return summarize(samples, "cuda events, synchronised per call", first_ms)


def capture_graph(fn: Callable, arg_sets, *, warmup_iters: int = 3):
    """Capture ``fn`` on every argument set (in order) into one CUDA graph.

    Returns ``(graph, outputs)``. Warm-up runs on a side stream first, as PyTorch requires for
    autograd and optimizers. Raises :class:`CaptureError` with the reason when capture fails.
    """
    import torch

    sets = _check_sets(arg_sets)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_iters):
                for args in sets:
                    fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = [fn(*args) for args in sets]
        torch.cuda.synchronize()
    except Exception as exc:  # capture failures come as many exception types
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        raise CaptureError(short_reason(exc)) from exc
    return graph, outputs


def time_cuda_graph(
    fn: Callable, arg_sets, *, rep_ms: float = 75.0, min_reps: int = 5, max_reps: int = 400, warmup_replays: int = 3
) -> Timing:
    """Device time per call from replays of a CUDA graph holding one call per argument set."""
    import torch

    sets = _check_sets(arg_sets)
    t0 = time.perf_counter()
    graph, outputs = capture_graph(fn, sets)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup_replays):
        graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize()
    est_ms = max((time.perf_counter() - start) * 1e3, 1e-3)
    n = int(min(max(rep_ms / est_ms, min_reps), max_reps))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for j in range(n):
        starts[j].record()
        graph.replay()
        ends[j].record()
    torch.cuda.synchronize()
    k = len(sets)
    samples = [s.elapsed_time(e) / k for s, e in zip(starts, ends)]
    del outputs, graph
    return summarize(samples, f"cuda graph replay ({k} calls per graph)", first_ms)


def call_samples(fn: Callable, arg_sets, *, device, n_calls: int, warmup_calls: int = 3) -> tuple[list, float]:
    """(per-call times in ms of ``n_calls`` calls after ``warmup_calls``, first call's ms). Each call is
    isolated: on CUDA a synchronize, a start event, ``fn``, an end event (host enqueue included, as
    :func:`time_cuda` without the L2 flush: repeated inference keeps its weights in cache); on the CPU
    ``time.perf_counter`` around the call. The first call (compilation, capture) is timed on its own."""
    import torch

    sets = _check_sets(arg_sets)
    cuda = getattr(device, "type", str(device).split(":")[0]) == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn(*sets[0])
    sync()
    first_ms = (time.perf_counter() - t0) * 1e3
    for i in range(warmup_calls):
        fn(*sets[(i + 1) % len(sets)])
    sync()
    samples = []
    for j in range(n_calls):
        args = sets[j % len(sets)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(*args)
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples, first_ms


def time_fn(
    fn: Callable,
    arg_sets,
    *,
    device,
    warmup_ms: float = 25.0,
    rep_ms: float = 75.0,
    min_reps: int = 5,
    graph: bool = False,
) -> Timing:
    """Dispatch: CUDA events (or graph replays with ``graph=True``) on CUDA, perf_counter on the CPU."""
    dev_type = getattr(device, "type", str(device).split(":")[0])
    if dev_type == "cuda":
        if graph:
            return time_cuda_graph(fn, arg_sets, rep_ms=rep_ms, min_reps=min_reps)
        return time_cuda(fn, arg_sets, warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=min_reps)
    if graph:
        raise CaptureError("CUDA graphs need a CUDA device")
    return time_cpu(fn, arg_sets, rep_ms=rep_ms, min_reps=min(min_reps, 3), max_reps=50)


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` cut to ``limit`` characters (for reports)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
