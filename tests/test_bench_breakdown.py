"""bench.breakdown (kernels by model part) and bench.host_time (host time per mini-batch, device stubbed)."""

import json

import pytest

from dmd_fast.bench import breakdown as bd
from dmd_fast.bench import host_time as ht
from dmd_fast.bench.launches import step_launch_counts


@pytest.fixture(scope="module")
def tiny_breakdown():
    return bd.breakdown("tiny", 2)


def test_every_kernel_has_a_part_and_the_total_is_the_launch_count(tiny_breakdown):
    counts = step_launch_counts("tiny", 2)["backends"]
    for backend, row in tiny_breakdown["backends"].items():
        assert sum(row["parts"].values()) == row["total"] == counts[backend]["kernels"], backend
        for key in row["parts"]:
            assert key.split(" | ")[0] in bd.PARTS, key


def test_tiny_step_kernel_count_is_pinned():
    """Exact: a kernel more or less per mini-batch (tiny preset, B=2, Triton backend) is a change to explain
    (the mosi-unaligned B=16 figure is in benchmarks/results, from python -m dmd_fast.bench.launches)."""
    assert step_launch_counts("tiny", 2, backends=("triton",))["backends"]["triton"]["kernels"] == 277


def test_parts_land_where_they_belong(tiny_breakdown):
    ref, tri = (tiny_breakdown["backends"][b]["parts"] for b in ("reference", "triton"))
    # the fused GD op: 1 forward launch + 1 backward launch per unit, nothing else
    assert tri["graph distillation | forward"] == 2 and tri["graph distillation | backward"] == 2
    assert ref["graph distillation | forward"] > 100
    # upstream's backward adds into every .grad; the trainer's sum is one multi-tensor add (+ the seed)
    assert ref["gradient accumulation | step"] > 100
    assert tri["gradient accumulation | step"] <= 2
    assert tri["clip | step"] == ref["clip | step"] > 0
    assert tri["encoder layers | forward"] < ref["encoder layers | forward"]


def test_part_names():
    assert bd.part_of("dmd.trans_l_with_a.layers.1.fc1") == "encoder layers"
    assert bd.part_of("dmd.trans_l_with_a.layer_norm") == "encoder embedding + final LN"
    assert bd.part_of("dmd.proj_l") == "stem convs"
    assert bd.part_of("dmd.proj_cosine_l") == "heads"
    assert bd.part_of("dmd.decoder_a") == "decoupling convs + decoders"
    assert bd.part_of("gd_homo") == "graph distillation"
    assert bd.part_of("") == "losses + glue"


def test_breakdown_cli_writes_its_table(tmp_path, capsys):
    assert bd.main(["--preset", "tiny", "--batch", "1", "--out", str(tmp_path)]) == 0
    assert "| **total** |" in capsys.readouterr().out
    assert json.loads((tmp_path / "breakdown.json").read_text())["preset"] == "tiny"
    assert bd.main(["--batch", "0"]) == 2


def test_host_time_measures_both_backends(tmp_path):
    assert ht.main(["--preset", "tiny", "--seq", "8", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "host_time.json").read_text())
    ref, tri = res["backends"]["reference"], res["backends"]["triton"]
    assert 0 < ref["min_ms"] <= ref["median_ms"] and 0 < tri["min_ms"] <= tri["median_ms"]
    assert ref["triton_launches"] == 0 and tri["triton_launches"] > 0
    assert tri["launchers"]["attention_fwd_grouped"]["calls_per_step"] > 0
    assert (tmp_path / "host_time.md").exists()


@pytest.mark.parametrize(
    "argv, word", [(["--steps", "1"], "--steps"), (["--batch", "0"], "--batch"), (["--seq", "2"], "seq")]
)
def test_host_time_bad_arguments(argv, word, capsys):
    assert ht.main(["--preset", "tiny", *argv]) == 2
    assert word in capsys.readouterr().err
