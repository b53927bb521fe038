"""Peak extra device memory of a region, and an NVML view of the device.

``peak_extra_memory`` is what the caching allocator had to hand out on top of what was already
allocated when the region started (``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``): activations, saved tensors, outputs and gradients of one call.

``nvml_snapshot`` reads the driver's view (memory used on the whole device, power, SM clock)
through ``pynvml`` (package nvidia-ml-py). Without NVML or an NVIDIA driver it returns
``{"available": False, "reason": ...}`` and never raises.
"""

from __future__ import annotations

from collections.abc import Callable

MiB = 1024 * 1024


def peak_extra_memory(fn: Callable, *args, device=None) -> dict:
    """Run ``fn(*args)`` once and return ``{"peak_extra_mb", "baseline_mb"}`` (CUDA only).

    On a non-CUDA device returns ``{"peak_extra_mb": None, "reason": ...}``.
    """
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda":
        return {"peak_extra_mb": None, "reason": "peak memory is measured on CUDA only"}
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    out = fn(*args)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    del out
    return {"peak_extra_mb": round((peak - base) / MiB, 3), "baseline_mb": round(base / MiB, 3)}


def _nvml():
    try:
        import pynvml  # nvidia-ml-py
    except Exception as exc:  # ImportError, or a broken install
        raise RuntimeError(f"pynvml not importable ({type(exc).__name__}: {exc}); install nvidia-ml-py") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        raise RuntimeError(f"NVML init failed ({type(exc).__name__}: {exc}); no NVIDIA driver here?") from exc
    return pynvml


def _handle(pynvml, index):
    """NVML handle of the CUDA device ``index`` (matched by UUID when torch can give it)."""
    try:
        import torch

        if torch.cuda.is_available():
            cuda_index = torch.cuda.current_device() if index is None else index
            uuid = getattr(torch.cuda.get_device_properties(cuda_index), "uuid", None)
            if uuid is not None:
                text = str(uuid)
                for cand in (text if text.startswith("GPU-") else f"GPU-{text}", text):
                    try:
                        return pynvml.nvmlDeviceGetHandleByUUID(cand)
                    except Exception:
                        pass
    except Exception:
        pass
    return pynvml.nvmlDeviceGetHandleByIndex(0 if index is None else index)


def _text(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def nvml_snapshot(index: int | None = None) -> dict:
    """Device view: name, driver, memory used/total (MiB), power (W), SM clock (MHz), temperature.

    Returns ``{"available": False, "reason": str}`` when NVML or the device is not there.
    Fields NVML cannot read on this device are ``None``.
    """
    try:
        pynvml = _nvml()
    except RuntimeError as exc:
        return {"available": False, "reason": str(exc)}
    try:
        h = _handle(pynvml, index)
    except Exception as exc:
        _shutdown(pynvml)
        return {"available": False, "reason": f"no NVML device ({type(exc).__name__}: {exc})"}

    def read(f, *a):
        try:
            return f(h, *a)
        except Exception:
            return None

    snap = {"available": True}
    snap["name"] = _text(read(pynvml.nvmlDeviceGetName))
    try:
        snap["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
    except Exception:
        snap["driver"] = None
    mem = read(pynvml.nvmlDeviceGetMemoryInfo)
    snap["memory_used_mb"] = None if mem is None else round(mem.used / MiB, 1)
    snap["memory_total_mb"] = None if mem is None else round(mem.total / MiB, 1)
    power = read(pynvml.nvmlDeviceGetPowerUsage)
    snap["power_w"] = None if power is None else power / 1000.0
    limit = read(pynvml.nvmlDeviceGetEnforcedPowerLimit)
    snap["power_limit_w"] = None if limit is None else limit / 1000.0
    snap["sm_clock_mhz"] = read(pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_SM)
    snap["sm_clock_max_mhz"] = read(pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_SM)
    snap["mem_clock_mhz"] = read(pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_MEM)
    snap["temperature_c"] = read(pynvml.nvmlDeviceGetTemperature, pynvml.NVML_TEMPERATURE_GPU)
    util = read(pynvml.nvmlDeviceGetUtilizationRates)
    snap["utilization_pct"] = None if util is None else util.gpu
    _shutdown(pynvml)
    return snap


def _shutdown(pynvml):
    try:
        pynvml.nvmlShutdown()
    except Exception:
        pass
