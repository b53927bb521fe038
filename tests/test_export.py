"""dmd-fast export / dmd_fast.load_exported: the exported inference program reproduces eager outputs.

Verified here on torch 2.13.0, CPU. The reference backend exports plain ATen ops, the Triton backend
keeps the grouped attention as the custom op dmd_fast::attention_fwd_grouped (run by the interpreter
on the CPU). Both run the eager path's ATen ops in the same order, so the outputs are expected to be
equal bit for bit on one machine; the assertion allows 1e-6 (a few fp32 ulps of |logit| ~ 1) so that
a torch release which decomposes an op differently is not mistaken for a wrong export. The
AOTInductor package runs inductor's own fused C++ kernels (other summation orders): 1e-5.
"""

import pytest
import torch

import dmd_fast
from dmd_fast.cli import main
from dmd_fast.inference.export import example_inputs, export_model, save_aoti, save_exported
from dmd_fast.inference.loading import load_model
from dmd_fast.model.config import get_preset
from dmd_fast.model.dmd import DMD


def test_export_cli_round_trip_reproduces_eager_on_cpu(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "--epochs", "1", "--synthetic-sizes", "16,8,8", "--out", str(run), "--backend", "reference"])
        == 0
    )
    pt2 = tmp_path / "model.pt2"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(run / "best.pt"),
                "--out",
                str(pt2),
                "--batch-size",
                "2",
                "--backend",
                "reference",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "batch size 2" in capsys.readouterr().out
    exported = dmd_fast.load_exported(pt2)
    assert exported.batch_size == 2 and exported.config.name == "tiny" and exported.meta["backend"] == "reference"
    eager = load_model(run / "best.pt", backend="reference")
    for seed in (1, 2):  # fresh inputs, not the example the program was traced with
        x = example_inputs(eager.config, 2, "cpu", seed=seed)
        torch.testing.assert_close(exported(*x), eager.predict(*x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"audio: expected shape \(2, 14, 8\) .*batch size 2"):
        exported(x[0], x[1][:1], x[2])


def test_triton_backend_export_keeps_the_custom_op_at_any_batch(tmp_path):
    torch.manual_seed(0)
    model = DMD(get_preset("tiny"), backend="triton").eval()
    program = export_model(model, batch_size=1, dynamic_batch=True)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    # one grouped launch per layer: 3 self-attention + 6 cross-modal encoders (2 layers), 3 memory ones (3)
    assert targets.count("dmd_fast.attention_fwd_grouped.default") == 2 + 2 + 3
    save_exported(program, tmp_path / "t.pt2", model, 1, dynamic_batch=True)
    exported = dmd_fast.load_exported(tmp_path / "t.pt2")
    assert exported.batch_size is None and exported.kind == "program"
    for B in (1, 3):
        x = example_inputs(model.config, B, "cpu", seed=5 + B)
        torch.testing.assert_close(exported(*x), model.predict(*x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"vision: expected shape \(3, 16, 12\) .*any batch 1\.\.4096"):
        exported(x[0], x[1], x[2][:2])


def test_aoti_package_cli_round_trip_at_any_batch(tmp_path, capsys):
    """AOTInductor (C++ build, ~2 min on 2 cores): the package runs without the Python graph."""
    run = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--synthetic-sizes", "16,8,8", "--out", str(run), "--backend", "reference"]
    assert main(argv) == 0
    pkg = tmp_path / "pkg" / "model.pt2"
    export = ["export", "--checkpoint", str(run / "best.pt"), "--out", str(pkg), "--device", "cpu", "--aoti"]
    assert main([*export, "--dynamic-batch"]) == 0
    assert "AOTInductor package" in capsys.readouterr().out
    exported = dmd_fast.load_exported(pkg)
    assert exported.kind == "aoti" and exported.program is None and exported.meta["backend"] == "reference"
    eager = load_model(run / "best.pt", backend="reference")
    for B in (1, 5):
        x = example_inputs(eager.config, B, "cpu", seed=B)
        torch.testing.assert_close(exported(*x), eager.predict(*x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"text: expected shape \(5, 12, 32\)"):
        exported(x[0][:, :3], x[1], x[2])
    assert main([*export, "--backend", "triton"]) == 2
    assert "--aoti: expected --backend reference" in capsys.readouterr().err


def test_save_aoti_refuses_the_triton_backend(tmp_path):
    model = DMD(get_preset("tiny"), backend="triton").eval()
    with pytest.raises(ValueError, match="--aoti: expected a reference-backend model, got backend 'triton'"):
        save_aoti(None, tmp_path / "x.pt2", model, 1)
    assert not (tmp_path / "x.pt2").exists()


def test_load_exported_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="could not be loaded"):
        dmd_fast.load_exported(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        dmd_fast.load_exported(tmp_path / "missing.pt2")
    with pytest.raises(ValueError, match="--batch-size"):
        export_model(DMD(get_preset("tiny"), backend="reference").eval(), batch_size=0)
