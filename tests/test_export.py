"""dmd-fast export / dmd_fast.load_exported: the exported inference program reproduces eager outputs.

Verified here on torch 2.13.0, CPU. The reference backend exports plain ATen ops, the Triton backend
keeps the grouped attention as the custom op dmd_fast::attention_fwd_grouped (run by the interpreter
on the CPU). Both run the eager path's ATen ops in the same order, so the outputs are expected to be
equal bit for bit on one machine; the assertion allows 1e-6 (a few fp32 ulps of |logit| ~ 1) so that
a torch release which decomposes an op differently is not mistaken for a wrong export.
"""

import pytest
import torch

import dmd_fast
from dmd_fast.cli import main
from dmd_fast.inference.export import example_inputs, export_model, save_exported
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


def test_triton_backend_export_keeps_the_custom_op(tmp_path):
    torch.manual_seed(0)
    model = DMD(get_preset("tiny"), backend="triton").eval()
    program = export_model(model, batch_size=1)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    # one grouped launch per layer: 3 self-attention + 6 cross-modal encoders (2 layers), 3 memory ones (3)
    assert targets.count("dmd_fast.attention_fwd_grouped.default") == 2 + 2 + 3
    save_exported(program, tmp_path / "t.pt2", model, 1)
    exported = dmd_fast.load_exported(tmp_path / "t.pt2")
    x = example_inputs(model.config, 1, "cpu", seed=5)
    torch.testing.assert_close(exported(*x), model.predict(*x), rtol=0, atol=1e-6)


def test_load_exported_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="could not be loaded"):
        dmd_fast.load_exported(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        dmd_fast.load_exported(tmp_path / "missing.pt2")
    with pytest.raises(ValueError, match="--batch-size"):
        export_model(DMD(get_preset("tiny"), backend="reference").eval(), batch_size=0)
