"""The benchmark library itself (CPU): NVML fallback, report files, floor arithmetic, baselines'
equivalence, timing helpers and the ``bench`` command line."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.bench import floors as fl
from dmd_fast.bench import memory, report, timing
from dmd_fast.bench.cli import add_bench_parser
from dmd_fast.bench.cli import main as bench_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# NVML and memory
# ------------------------------------------------------------------------------------------------


def test_nvml_missing_module_gives_clean_dict(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    snap = memory.nvml_snapshot()
    assert snap["available"] is False
    assert "pynvml" in snap["reason"]


def test_nvml_init_failure_gives_clean_dict(monkeypatch):
    class FakeNVML:
        @staticmethod
        def nvmlInit():
            raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML)
    snap = memory.nvml_snapshot()
    assert snap == {"available": False, "reason": snap["reason"]}
    assert "NVML init failed" in snap["reason"] and "Not Found" in snap["reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_nvml_real_call_never_raises_without_gpu():
    snap = memory.nvml_snapshot()
    assert snap["available"] is False and snap["reason"]


def test_peak_memory_on_cpu_is_reported_as_unmeasured():
    out = memory.peak_extra_memory(lambda x: x * 2, torch.ones(3), device="cpu")
    assert out["peak_extra_mb"] is None and "CUDA" in out["reason"]


# ------------------------------------------------------------------------------------------------
# floors
# ------------------------------------------------------------------------------------------------


def test_floor_terms_match_the_documented_floor():
    # docs/performance-floor.md, "Floor terms at DMD's shapes", 500x500, B=32, H=6, d=5:
    # exp 12.3 us, ~8 ops/score 11.5 us,
    # HBM bf16 fwd 4.2 MB -> 1.3 us, bwd 8.5 MB -> 2.5 us, fp32 fwd 2.4 us, bwd 4.8 us.
    r = fl.device_rates()
    t = fl.attention_terms(32, 6, 500, 500, 5, dtype="bf16", pass_="fwd", rates=r)
    assert t["exp"] * 1e6 == pytest.approx(12.3, rel=0.01)
    assert t["alu"] * 1e6 == pytest.approx(11.46, rel=0.01)
    assert t["hbm"] * 1e6 == pytest.approx(1.26, rel=0.02)
    assert t["rng"] == 0.0
    assert t["mma"] * 1e6 == pytest.approx(4 * 16 * 48e6 / 989e12 * 1e6, rel=1e-6)
    tb = fl.attention_terms(32, 6, 500, 500, 5, dtype="bf16", pass_="bwd", rates=r)
    assert tb["hbm"] * 1e6 == pytest.approx(2.52, rel=0.02)
    t32 = fl.attention_terms(32, 6, 500, 500, 5, dtype="fp32", pass_="fwd", rates=r)
    assert t32["hbm"] * 1e6 == pytest.approx(2.41, rel=0.02)
    # fp32 IEEE dots run on the FP32 lanes: 8 + 2*d ops per score
    assert t32["alu"] == pytest.approx(t["alu"] * (8 + 10) / 8)
    assert t32["mma"] == 0.0
    td = fl.attention_terms(32, 6, 500, 500, 5, dtype="bf16", pass_="fwd", dropout=True, rates=r)
    assert td["rng"] * 1e6 == pytest.approx(
        19.4, rel=0.01
    )  # 8-bit thresholds (docs/performance-floor.md, "Floor terms at DMD's shapes")


def test_floor_sums_passes_and_takes_the_binding_term():
    r = fl.device_rates()
    f = fl.attention_floor(32, 6, 500, 500, 5, dtype="bf16", mode="fwdbwd", dropout=True, rates=r)
    fwd, bwd = f["passes"]["fwd"], f["passes"]["bwd"]
    assert fwd["bound"] == "rng" and fwd["us"] == pytest.approx(max(fwd["terms_us"].values()))
    assert f["floor_us"] == pytest.approx(fwd["us"] + bwd["us"])
    assert f["launch_us"] == 3 * fl.LAUNCH_US
    assert f["scores"] == 32 * 6 * 500 * 500
    only = fl.attention_floor(32, 6, 500, 500, 5, dtype="bf16", mode="fwd", dropout=True, rates=r)
    assert only["floor_us"] == pytest.approx(fwd["us"])
    assert fl.floor_fraction(10.0, 40.0) == pytest.approx(0.25)
    assert fl.floor_fraction(10.0, None) is None and fl.floor_fraction(None, 5.0) is None
    with pytest.raises(ValueError, match="mode"):
        fl.attention_floor(1, 1, 2, 2, 5, mode="sideways")
    with pytest.raises(ValueError, match="dtype"):
        fl.attention_terms(1, 1, 2, 2, 5, dtype="int8")


def test_rates_scale_with_sm_count_and_clock():
    base = fl.device_rates()
    half = fl.device_rates(sm_count=66, clock_hz=1.98e9)
    assert half.exp_per_s == pytest.approx(base.exp_per_s / 2)
    assert half.fp32_lane_ops_per_s == pytest.approx(base.fp32_lane_ops_per_s / 2)
    fast = fl.device_rates(sm_count=132, clock_hz=2 * 1.98e9, copy_bytes_per_s=2e12)
    assert fast.exp_per_s == pytest.approx(2 * base.exp_per_s)
    assert fast.copy_bytes_per_s == 2e12 and "measured" in fast.bandwidth_source
    assert "not read" in base.source


def test_copy_bandwidth_on_cpu_is_positive():
    out = fl.measure_copy_bandwidth("cpu", nbytes=4 << 20)
    assert out["bytes"] == 2 * (4 << 20) and out["bytes_per_s"] > 0


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------


def test_quantile_matches_numpy_rule():
    import numpy as np

    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert timing.quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)))
    with pytest.raises(ValueError):
        timing.quantile([], 0.5)


def test_time_cpu_rotates_argument_sets_and_excludes_first_call():
    seen = []
    t = timing.time_cpu(lambda x: seen.append(x), [(0,), (1,), (2,)], warmup=1, rep_ms=0.0, min_reps=6)
    assert t.n == 6 and seen[0] == 0 and seen[1:] == [0, 1, 2, 0, 1, 2]
    assert t.p20_us <= t.median_us <= t.p80_us and t.first_call_ms is not None


def test_graph_timing_on_cpu_is_a_capture_error():
    with pytest.raises(timing.CaptureError, match="CUDA"):
        timing.time_fn(lambda: None, [()], device="cpu", graph=True)


def test_short_reason_is_one_line():
    r = timing.short_reason(RuntimeError("first line\nsecond line"))
    assert r == "RuntimeError: first line"
    assert len(timing.short_reason(ValueError("x" * 1000))) == 300


# ------------------------------------------------------------------------------------------------
# baselines compute the same function
# ------------------------------------------------------------------------------------------------


def test_upstream_future_mask_is_the_offset_causal_rule():
    from dmd_fast.reference.attention import offset_causal_mask

    for lq, lk in ((4, 9), (9, 4), (6, 6)):
        m = bl.upstream_future_mask(lq, lk)
        assert torch.equal(torch.isfinite(m), offset_causal_mask(lq, lk))
        assert (m[torch.isfinite(m)] == 0).all()


@pytest.mark.parametrize("provider", ["eager", "sdpa", "reference", "ours"])
@pytest.mark.parametrize("lq,lk", [(5, 9), (9, 4)])
def test_attention_providers_agree_with_reference_without_dropout(provider, lq, lk):
    from dmd_fast.reference.attention import cross_modal_attention

    case = bl.AttnCase(2, 3, lq, lk, 5, "fp32", offset_causal=True, dropout_p=0.0)
    q, k, v, g = bl.make_attention_inputs(case, "cpu", n_sets=1, seed=3)[0]
    try:
        built = bl.ATTENTION_PROVIDERS[provider].build(case, "cpu", (q, k, v, g))
    except bl.Unsupported as exc:
        pytest.skip(str(exc))
    ref = cross_modal_attention(q.double(), k.double(), v.double(), offset_causal=True)
    out = built.fn(q, k, v)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < 1e-5, err


def test_gd_eager_provider_is_the_reference():
    from dmd_fast.reference.graph_distill import graph_distill

    case = bl.GDCase("hetero", 4, 24, 8, "cosine")
    inputs = bl.make_gd_inputs(case, "cpu", n_sets=1)[0]
    got = bl.GD_PROVIDERS["eager"].build(case, "cpu", inputs).fn(*inputs)
    want = graph_distill(*inputs, repr_metric="cosine")
    for a, b in zip(bl.gd_losses(got), bl.gd_losses(want)):
        assert torch.equal(a, b)
    assert bl.gd_prior("homo").sum().item() == pytest.approx(1.0)


def test_cuda_only_providers_refuse_cpu_with_a_reason():
    case = bl.AttnCase(1, 1, 4, 4, 5)
    sample = bl.make_attention_inputs(case, "cpu", n_sets=1)[0]
    for name in ("sdpa_flash_nomask", "flex"):
        with pytest.raises(bl.Unsupported, match="CUDA"):
            bl.ATTENTION_PROVIDERS[name].build(case, "cpu", sample)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _fake_results():
    def t(us):
        return {"status": "ok", "median_us": us, "p20_us": 0.9 * us, "p80_us": 1.1 * us, "n": 10, "method": "x"}

    rows = []
    for case in ("46x496 d5 H10 B16 fp32 oc p0.3", "496x496 d10 H10 B16 bf16 oc p0.3"):
        for prov, us, mb in (("eager", 900.0, 80.0), ("ours", 90.0, 2.0), ("sdpa", 700.0, 60.0)):
            g = t(us / 2)
            g["floor_fraction"] = 0.2
            rows.append(
                {
                    "suite": "attention",
                    "case": case,
                    "provider": prov,
                    "equivalent": True,
                    "status": "ok",
                    "modes": {"fwd": t(us / 3), "fwdbwd": t(us), "graph_fwdbwd": g},
                    "memory": {"fwdbwd": mb},
                    "floor": {"fwdbwd_us": 20.0},
                    "note": "n|ote",
                }
            )
    rows.append(
        {
            "suite": "attention",
            "case": "46x46 d5 H10 B16 fp32 oc p0.3",
            "provider": "flex",
            "status": "error",
            "reason": "NotImplementedError: NYI",
            "modes": {},
        }
    )
    for prov, sps, mb in (("eager", 200.0, 900.0), ("ours", 900.0, 300.0)):
        rows.append(
            {
                "suite": "model",
                "case": "DMD train step",
                "provider": prov,
                "status": "ok",
                "modes": {"step": t(16e6 / sps)},
                "samples_per_s": sps,
                "memory": {"step": mb},
            }
        )
    rows.append(
        {
            "suite": "gd",
            "case": "homo",
            "provider": "eager",
            "status": "ok",
            "modes": {"fwd": t(100.0), "fwdbwd": t(300.0)},
            "memory": {"fwdbwd": 0.01},
        }
    )
    rows.append(
        {
            "suite": "gd",
            "case": "homo",
            "provider": "ours",
            "status": "ok",
            "modes": {"fwd": t(10.0), "fwdbwd": t(20.0)},
            "memory": {"fwdbwd": 0.01},
            "extra": {"launches_fwdbwd": {"status": "ok", "kernels": 2, "memcpy_memset": 0}},
        }
    )
    return {
        "schema": 1,
        "env": report.collect_environment("cpu"),
        "options": {"suites": ["all"], "quick": True},
        "rows": rows,
        "checks": {
            "recompile": {
                "status": "ok",
                "passed": True,
                "pairs": [[46, 46]],
                "per_dtype": {"fp32": {"variants_after_each_pair": [3, 3], "recompiles_after_first_pair": 0}},
            }
        },
        "floors": {},
        "notes": ["a note"],
        "elapsed_s": 1.0,
    }


def test_report_writes_json_markdown_and_pngs(tmp_path):
    results = _fake_results()
    written = report.write_report(results, str(tmp_path))
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted(report.RESULT_FILES)
    assert sorted(os.listdir(tmp_path)) == names  # flat, nothing else left behind
    data = json.loads((tmp_path / "results.json").read_text())
    for key in ("date", "git_commit", "torch", "triton", "device_name", "driver"):
        assert key in data["env"]
    assert len(data["rows"]) == len(results["rows"])
    md = (tmp_path / "results.md").read_text()
    assert "| case | provider | fwd | fwd+bwd | graph fwd+bwd |" in md
    assert "10.00x" in md  # eager 900 us / ours 90 us
    assert "20.0%" in md  # floor fraction of the graph replay
    assert "NotImplementedError: NYI" in md and "n/ote" in md
    assert "PASS" in md and "2 kernels fwd+bwd" in md and "4.50x" in md
    for png in ("speedup.png", "memory.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC


def test_speedups_and_card_slug():
    sp = report.speedups(_fake_results()["rows"], "attention")
    assert sp[("46x496 d5 H10 B16 fp32 oc p0.3", "ours")] == pytest.approx(10.0)
    assert sp[("46x496 d5 H10 B16 fp32 oc p0.3", "eager")] == pytest.approx(1.0)
    assert report.card_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert report.card_slug("  ") == "unknown"


def test_git_commit_env_override(monkeypatch):
    monkeypatch.setenv("DMD_FAST_GIT_COMMIT", "abc123")
    assert report.git_commit() == "abc123"


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def test_cli_quick_runs_on_cpu(tmp_path, capsys):
    rc = bench_main(
        [
            "--quick",
            "--suite",
            "all",
            "--backend-list",
            "eager,reference",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--rep-ms",
            "5",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "## Attention core" in out and "## Model level" in out
    data = json.loads((tmp_path / "results.json").read_text())
    ran = {(r["suite"], r["provider"]) for r in data["rows"] if r["status"] == "ok"}
    assert {("attention", "eager"), ("attention", "reference"), ("graph_distill", "eager"), ("model", "eager")} <= ran
    assert (tmp_path / "results.md").exists()
    assert set(os.listdir(tmp_path)) <= set(report.RESULT_FILES)


def test_cli_quick_without_interpreter_skips_ours_with_reason(tmp_path, capsys):
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or torch.cuda.is_available():
        # the interpreter is on in this process: run the command in a child without it
        env = dict(os.environ, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dmd_fast.bench.cli",
                "--quick",
                "--suite",
                "attention",
                "--backend-list",
                "ours,eager",
                "--out",
                str(tmp_path),
                "--rep-ms",
                "5",
                "--no-plots",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    else:
        assert (
            bench_main(
                [
                    "--quick",
                    "--suite",
                    "attention",
                    "--backend-list",
                    "ours,eager",
                    "--out",
                    str(tmp_path),
                    "--rep-ms",
                    "5",
                    "--no-plots",
                ]
            )
            == 0
        )
    data = json.loads((tmp_path / "results.json").read_text())
    ours = [r for r in data["rows"] if r["provider"] == "ours"]
    assert ours and all(r["status"] == "skipped" and "TRITON_INTERPRET" in r["reason"] for r in ours)


def test_cli_bad_suite_exits_2_naming_the_argument():
    proc = subprocess.run(
        [sys.executable, "-m", "dmd_fast.bench.cli", "--suite", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "--suite" in proc.stderr and "nope" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_subcommand_wiring_and_bad_suite(capsys):
    parser = argparse.ArgumentParser(prog="dmd-fast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(["bench", "--quick", "--suite", "gd"])
    assert args.func.__name__ == "run_bench" and args.suite == "gd" and args.quick
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["bench", "--suite", "nope"])
    assert exc.value.code == 2
    assert "--suite" in capsys.readouterr().err


def test_cli_unknown_provider_and_gpu_only_configurations(tmp_path, capsys):
    assert bench_main(["--quick", "--backend-list", "eager,warp9", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--backend-list" in err and "warp9" in err and "Traceback" not in err
    assert bench_main(["--quick", "--suite", "op", "--backend-list", "cudagraph", "--out", str(tmp_path)]) == 2
    assert "applies" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench_main(["--suite", "attention", "--out", str(tmp_path)]) == 2
        assert "--quick" in capsys.readouterr().err
        assert bench_main(["--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "CUDA" in capsys.readouterr().err
    # an argparse error (exit code 2, returned by main), as NaN and 0
    assert bench_main(["--quick", "--time-budget", "-1", "--out", str(tmp_path)]) == 2
    assert "--time-budget" in capsys.readouterr().err
    assert bench_main(["--backend-list", "list"]) == 0
    assert "sdpa_flash_nomask" in capsys.readouterr().out


def test_recompile_counter_reads_triton_jit_caches():
    from triton.runtime.jit import JITFunction

    from dmd_fast.bench.suites import attention as sa

    def kern(x_ptr):
        pass

    jf = JITFunction(kern)
    wrapper = type("Autotuned", (), {"fn": jf})()  # autotuner/heuristics wrappers expose .fn
    module = type(sys)("fake_kernels")
    module.kern, module.tuned, module.other = jf, wrapper, 3
    found = sa._jit_functions(module)
    assert set(found) == {"kern", "tuned"} and found["tuned"] is jf
    assert sa._variant_count({"kern": jf}) == 0
    # Triton 3.6: device_caches[device] = (kernel_cache, kernel_key_cache, target, backend, binder)
    jf.device_caches = {0: ({"a": 1, "b": 2}, {}, None, None, None)}
    assert sa._variant_count({"kern": jf}) == 2


def test_recompile_check_skips_on_cpu():
    from dmd_fast.bench import suites as st
    from dmd_fast.bench.suites import attention as sa

    out = sa.recompile_check(st.SuiteOptions(quick=True), torch.device("cpu"), st.Budget(None))
    assert out["status"] == "skipped" and "interpreter" in out["reason"]


def test_step_launch_counts_tiny():
    """Kernels per DMD step counted at dispatch: the Triton backend launches fewer, never syncs, and
    its Triton launches are 3 forward and 6 backward per grouped layer, one embedding launch each way
    per encoder group (3 groups) and one per GD unit."""
    from dmd_fast.bench.launches import format_counts, step_launch_counts
    from dmd_fast.model.config import get_preset

    res = step_launch_counts("tiny", batch=2)
    ref, ours = res["backends"]["reference"], res["backends"]["triton"]
    cfg = get_preset("tiny")
    per_dir = 2 * cfg.nlevels + max(cfg.nlevels, 3)
    assert ref["triton"] == 0 and ours["triton"] == 9 * per_dir + 2 * 3 + 2 + 3 + 2 + 6  # + losses, margin, heads
    assert ours["host_syncs"] == ref["host_syncs"] == 0
    assert ours["kernels"] < ref["kernels"]
    assert "| triton |" in format_counts(res)


def test_launches_cli_bad_batch(capsys):
    from dmd_fast.bench.launches import main

    assert main(["--batch", "0"]) == 2
    assert "--batch: expected >= 1, got 0" in capsys.readouterr().err


def test_suite_names_and_their_earlier_aliases():
    from dmd_fast.bench import suites as st

    assert [st.canonical_suite(s) for s in ("op", "gd", "attention", "graph_distill", "model")] == [
        "attention",
        "graph_distill",
        "attention",
        "graph_distill",
        "model",
    ]
    assert set(st.BUDGET_S) >= {("attention", "plain"), ("graph_distill", "compiled"), ("model", "cudagraph")}
    assert report._suite({"suite": "gd"}) == "graph_distill"
