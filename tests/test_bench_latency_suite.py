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


def test_cli_latency_errors(tmp_path, capsys):
    assert main(["bench", "--suite", "latency", "--quick", "--backend-list", "sdpa", "--out", str(tmp_path)]) == 2
    assert "--backend-list: expected latency providers" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--suite", "latency", "--out", str(tmp_path)]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
