"""The latency suite's library on the CPU: rows with percentiles, GPU-only rows without numbers, report files."""

import json

import pytest
import torch

from dmd_fast.bench.suites import latency as lt
from dmd_fast.cli import main


def test_quick_rows_report_and_gpu_only_marking(tmp_path, monkeypatch):
    monkeypatch.setattr(lt, "QUICK_ROW_SECONDS", 0.05)
    res = lt.run_latency(
        True, "cpu", providers=("ref_eager", "ours_cudagraph", "ref_compile_ro"), batch_sizes=(1, 2), log=lambda m: None
    )
    rows = {(r["provider"], r["batch"]): r for r in res["rows"]}
    for B in (1, 2):
        r = rows[("ref_eager", B)]
        assert r["status"] == "ok" and r["n_calls"] >= 5 and r["p50_us"] <= r["p90_us"] <= r["p99_us"]
        assert r["max_abs_diff_vs_ref_eager"] == 0.0 and r["kernels_per_call"]["kernels"] > 100
        assert r["peak_extra_mb"] is None and r["samples_per_s"] == pytest.approx(B / (r["p50_us"] * 1e-6))
        if r["n_calls"] < lt.MIN_CALLS:
            assert f"{r['n_calls']} timed calls" in r["note"]
        for p in ("ours_cudagraph", "ref_compile_ro"):
            g = rows[(p, B)]
            assert g["status"] == "skipped" and g["reason"].startswith("GPU only") and "p50_us" not in g
    written = lt.write_latency_report(res, str(tmp_path))
    md = (tmp_path / "latency.md").read_text()
    assert "| 1 | ours_cudagraph | GPU only |" in md and "| 2 | ref_eager |" in md
    assert json.loads((tmp_path / "latency.json").read_text())["rows"][0]["provider"] == "ref_eager"
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(written) == 3


def test_aoti_rows_compile_once_and_reuse_the_package(monkeypatch):
    """The aoti provider's plumbing (the package itself: tests/test_export.py), with the two-minute
    AOTInductor build replaced by a torch.export program: one build at the first batch size, reused
    by the next, its time as that row's first call, the reference backend's outputs."""
    import dmd_fast.inference.export as ex

    builds = []

    def fake_save_aoti(program, path, model, B, dynamic_batch=False):
        builds.append((B, dynamic_batch, model.backend))
        return ex.save_exported(program, path, model, B, dynamic_batch=dynamic_batch)

    monkeypatch.setattr(ex, "save_aoti", fake_save_aoti)
    monkeypatch.setattr(lt, "QUICK_ROW_SECONDS", 0.05)
    res = lt.run_latency(True, "cpu", providers=("aoti",), batch_sizes=(1, 3), log=lambda m: None)
    assert builds == [(1, True, "reference")]
    r1, r3 = res["rows"]
    assert r1["status"] == r3["status"] == "ok", (r1, r3)
    assert r1["max_abs_diff_vs_ref_eager"] <= 1e-6 and r3["max_abs_diff_vs_ref_eager"] <= 1e-6
    assert r1["extra"]["compiled_at_batch"] == r3["extra"]["compiled_at_batch"] == 1
    assert r1["first_call_ms"] == pytest.approx(r1["extra"]["export_and_compile_s"] * 1e3, rel=0.1, abs=100)
    assert r3["first_call_ms"] < r1["first_call_ms"]
    assert r1["kernels_per_call"]["kernels"] is None and "inductor" in r1["kernels_per_call"]["how"]


def test_cli_latency_errors(tmp_path, capsys):
    assert main(["bench", "--suite", "latency", "--quick", "--backend-list", "sdpa", "--out", str(tmp_path)]) == 2
    assert "--backend-list: expected latency providers" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--suite", "latency", "--out", str(tmp_path)]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
