"""What the card can do at our shapes: measured copy bandwidth and the per-score floor.

docs/performance-floor.md, "What binds at DMD's head dims": at DMD's head dims (5, 10) neither the
HBM roofline nor the tensor cores bind once the scores stay on chip; per-score scalar work does.
For N = B·H·Lq·Lk scores a pass costs at least the largest of

- ``exp``:  N exponentials on the MUFU units (H100 SXM: 16/SM/clk × 132 SMs × 1.83 GHz ≈ 3.9e12/s);
- ``alu``:  about 8 fp32 lane-ops per score for the online softmax (max, subtract, scale, sum,
  rescale, dropout select), plus the dots' FMAs when fp32 dots run on the FP32 lanes
  (IEEE fp32, as torch's default), at 33.5e12 lane-ops/s (128 lanes/SM/clk × 132 × 1.98 GHz);
- ``rng``:  with dropout, Philox with 8-bit thresholds: ~100 int ops per 16 decisions at 15.5e12/s;
- ``mma``:  16-bit dots on tensor cores, head dim padded to 16, at 989e12 flop/s;
- ``hbm``:  each input read once and each output written once (real head dim), at the measured
  copy bandwidth (3.35e12 B/s datasheet when not measured).

The backward recomputes P (another N exps and the softmax ALU work), does 5 dots instead of 2,
and moves q, k, v, o, dO, LSE, Δ in and dq, dk, dv out. Passes are summed, terms within a pass are
assumed to overlap perfectly (max), and launch overhead is reported separately (≈3 µs per launch
measured on an H200). ``floor_fraction = floor_us / measured_us`` (1.0 = at the floor).

Rates scale from the H100 SXM anchors by (SM count / 132) × (SM clock / 1.98 GHz) when the SM
count and clock can be read.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

H100_SMS = 132
H100_CLOCK_HZ = 1.98e9
EXP_PER_S_H100 = 3.9e12
FP32_LANE_OPS_PER_S_H100 = 33.5e12
INT32_OPS_PER_S_H100 = 15.5e12
BF16_TENSOR_FLOPS_H100 = 989e12
HBM_BYTES_PER_S_H100 = 3.35e12
SOFTMAX_OPS_PER_SCORE = 8.0
RNG_INT_OPS_PER_SCORE = 100.0 / 16.0
LAUNCH_US = 3.0


@dataclass
class DeviceRates:
    """Per-second rates used by the floor model and where they came from."""

    exp_per_s: float
    fp32_lane_ops_per_s: float
    int32_ops_per_s: float
    tensor_flops_per_s: float
    copy_bytes_per_s: float
    source: str
    bandwidth_source: str

    def as_dict(self) -> dict:
        return asdict(self)


def device_rates(
    sm_count: int | None = None, clock_hz: float | None = None, copy_bytes_per_s: float | None = None
) -> DeviceRates:
    """H100 anchors, scaled by SM count × clock when both are given; bandwidth as measured if given."""
    if sm_count and clock_hz:
        f = (sm_count / H100_SMS) * (clock_hz / H100_CLOCK_HZ)
        source = f"H100 anchors scaled to {sm_count} SMs x {clock_hz / 1e9:.3g} GHz (x{f:.3g})"
    else:
        f = 1.0
        source = (
            "H100 SXM anchors (docs/performance-floor.md, 'Device rates (H100 SXM anchors)'); SM count/clock not read"
        )
    if copy_bytes_per_s:
        bw, bw_src = float(copy_bytes_per_s), "measured device-to-device copy"
    else:
        bw, bw_src = HBM_BYTES_PER_S_H100, "H100 SXM datasheet 3.35 TB/s (not measured)"
    return DeviceRates(
        EXP_PER_S_H100 * f,
        FP32_LANE_OPS_PER_S_H100 * f,
        INT32_OPS_PER_S_H100 * f,
        BF16_TENSOR_FLOPS_H100 * f,
        bw,
        source,
        bw_src,
    )


def _dtype_bytes(dtype) -> int:
    name = str(dtype).replace("torch.", "")
    table = {
        "float32": 4,
        "fp32": 4,
        "float": 4,
        "bfloat16": 2,
        "bf16": 2,
        "float16": 2,
        "fp16": 2,
        "half": 2,
        "float64": 8,
        "fp64": 8,
        "double": 8,
    }
    if name not in table:
        raise ValueError(f"dtype: expected fp32/bf16/fp16/fp64, got {dtype!r}")
    return table[name]


def attention_terms(
    B: int,
    H: int,
    Lq: int,
    Lk: int,
    D: int,
    *,
    dtype="float32",
    pass_: str = "fwd",
    dropout: bool = False,
    rates: DeviceRates | None = None,
    fp32_dots_on_alu: bool | None = None,
) -> dict:
    """Seconds per floor term for one pass ('fwd' or 'bwd') of cross-modal attention."""
    if pass_ not in ("fwd", "bwd"):
        raise ValueError(f"pass_: expected 'fwd' or 'bwd', got {pass_!r}")
    rates = rates or device_rates()
    eb = _dtype_bytes(dtype)
    if fp32_dots_on_alu is None:
        fp32_dots_on_alu = eb >= 4
    N = float(B) * H * Lq * Lk
    bh = float(B) * H
    n_dots = 2 if pass_ == "fwd" else 5
    alu_ops = SOFTMAX_OPS_PER_SCORE + (n_dots * D if fp32_dots_on_alu else 0.0)
    terms = {
        "exp": N / rates.exp_per_s,
        "alu": N * alu_ops / rates.fp32_lane_ops_per_s,
        "rng": (N * RNG_INT_OPS_PER_SCORE / rates.int32_ops_per_s) if dropout else 0.0,
        "mma": 0.0 if fp32_dots_on_alu else N * n_dots * 2 * max(16, D) / rates.tensor_flops_per_s,
    }
    if pass_ == "fwd":  # read q, k, v; write o and the fp32 row LSE
        nbytes = bh * ((2 * Lq + 2 * Lk) * D * eb + 4 * Lq)
    else:  # read q, k, v, o, dO, LSE, Δ; write dq, dk, dv
        nbytes = bh * ((3 * Lq + 2 * Lk) * D * eb + 8 * Lq + (Lq + 2 * Lk) * D * eb)
    terms["hbm"] = nbytes / rates.copy_bytes_per_s
    return terms


def attention_floor(
    B: int,
    H: int,
    Lq: int,
    Lk: int,
    D: int,
    *,
    dtype="float32",
    mode: str = "fwdbwd",
    dropout: bool = False,
    rates: DeviceRates | None = None,
) -> dict:
    """Floor in µs for 'fwd', 'bwd' or 'fwdbwd'; with the binding term of each pass.

    Returns ``{"floor_us", "launch_us", "scores", "passes": {pass: {"us", "bound", "terms_us"}}}``.
    """
    passes = {"fwd": ("fwd",), "bwd": ("bwd",), "fwdbwd": ("fwd", "bwd")}.get(mode)
    if passes is None:
        raise ValueError(f"mode: expected 'fwd', 'bwd' or 'fwdbwd', got {mode!r}")
    out = {"scores": B * H * Lq * Lk, "passes": {}}
    total = 0.0
    for p in passes:
        terms = attention_terms(B, H, Lq, Lk, D, dtype=dtype, pass_=p, dropout=dropout, rates=rates)
        bound = max(terms, key=terms.get)
        us = terms[bound] * 1e6
        total += us
        out["passes"][p] = {"us": us, "bound": bound, "terms_us": {k: v * 1e6 for k, v in terms.items()}}
    out["floor_us"] = total
    out["launch_us"] = LAUNCH_US * (1 if mode == "fwd" else 2 if mode == "bwd" else 3)
    return out


def floor_fraction(floor_us: float | None, measured_us: float | None) -> float | None:
    """floor / measured: 1.0 means at the floor, 0.1 means ten times slower than the floor."""
    if not floor_us or not measured_us or measured_us <= 0:
        return None
    return floor_us / measured_us


def measure_copy_bandwidth(device=None, nbytes: int | None = None) -> dict:
    """Bytes read + written per second of a large device-to-device copy (random data, not zeros).

    CUDA: 1 GiB by default, timed with ``triton.testing.do_bench`` (median). CPU: 64 MiB with
    perf_counter (host memcpy, for the record only).
    """
    import torch

    from dmd_fast.bench.timing import time_cpu, time_cuda

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if nbytes is None:
        nbytes = (1 << 30) if dev.type == "cuda" else (64 << 20)
    n = nbytes // 4
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    copy = functools.partial(dst.copy_, src)
    if dev.type == "cuda":
        try:
            t = time_cuda(copy, [()], warmup_ms=20, rep_ms=100, method="do_bench")
        except ImportError:
            t = time_cuda(copy, [()], warmup_ms=20, rep_ms=100)
    else:
        t = time_cpu(copy, [()], warmup=2, rep_ms=200, min_reps=5)
    bw = 2.0 * n * 4 / (t.median_us * 1e-6)
    del src, dst, copy
    return {
        "bytes": 2 * n * 4,
        "median_us": t.median_us,
        "p20_us": t.p20_us,
        "p80_us": t.p80_us,
        "bytes_per_s": bw,
        "gb_per_s": bw / 1e9,
        "device": str(dev),
        "method": t.method,
    }


def read_sm_count_and_clock(device=None, nvml: dict | None = None) -> tuple[int | None, float | None]:
    """(SM count, max SM clock in Hz) from torch and NVML (either may be None)."""
    sm, clock = None, None
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
            sm = int(props.multi_processor_count)
            rate_khz = getattr(props, "clock_rate", None)
            if rate_khz:
                clock = float(rate_khz) * 1e3
    except Exception:
        pass
    if nvml and nvml.get("available") and nvml.get("sm_clock_max_mhz"):
        clock = float(nvml["sm_clock_max_mhz"]) * 1e6
    return sm, clock
