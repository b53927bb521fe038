"""dmd-fast predict: train -> predict round trip, CSV rows, metrics, unlabelled pickles, clear errors."""

import csv
import json

import numpy as np
import pytest
import torch

from dmd_fast.cli import main
from dmd_fast.data.mmsa import write_mmsa_pickle
from dmd_fast.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(["train", "--epochs", "1", "--synthetic-sizes", "32,16,20", "--out", str(out), "--backend", "reference"])
        == 0
    )
    return out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_then_predict_writes_one_row_per_test_sample_and_metrics(trained, capsys):
    capsys.readouterr()
    preds = trained / "preds.csv"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained / "best.pt"),
                "--synthetic-sizes",
                "32,16,20",
                "--batch-size",
                "3",
                "--backend",
                "reference",
                "--out",
                str(preds),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = _rows(preds)
    test = make_synthetic({"feature_dims": (32, 8, 12), "seq_lens": (12, 14, 16)}, 32, 16, 20)["test"]
    assert len(rows) == 20 and list(rows[0]) == ["index", "id", "prediction", "label"]
    assert [r["id"] for r in rows] == list(test["id"])
    np.testing.assert_array_equal(np.array([r["label"] for r in rows], dtype=np.float32), test["regression_labels"])
    # the trainer's last epoch evaluated the same checkpoint on the same split with the full forward
    logged = json.loads((trained / "log.jsonl").read_text().splitlines()[-1])["test"]
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("test"))
    loss, non0, f1, acc7, mae, corr = (float(v) for v in line.split()[2:])
    assert loss == pytest.approx(logged["Loss"], abs=1e-4) and corr == pytest.approx(logged["Corr"], abs=1e-4)
    pred = np.array([float(r["prediction"]) for r in rows])
    assert np.abs(pred - test["regression_labels"]).mean() == pytest.approx(logged["Loss"], abs=1e-5)
    assert "20 rows (test split) written" in out


def test_predict_unlabelled_pickle_with_one_split_to_stdout(trained, tmp_path, capsys):
    data = make_synthetic({"feature_dims": (32, 8, 12), "seq_lens": (12, 14, 16)}, 2, 2, 5, seed=3)
    test = {k: v for k, v in data["test"].items() if k not in ("regression_labels", "id")}
    pkl = write_mmsa_pickle(tmp_path / "mine.pkl", {"test": test})
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(trained / "best.pt"), "--data", pkl, "--backend", "reference"]) == 0
    cap = capsys.readouterr()
    rows = list(csv.DictReader(cap.out.splitlines()))
    assert len(rows) == 5 and list(rows[0]) == ["index", "prediction"]
    assert "Loss" not in cap.err and all(np.isfinite(float(r["prediction"])) for r in rows)


def test_predict_errors_are_one_line_with_exit_2(trained, tmp_path, capsys):
    ckpt = str(trained / "best.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    broken = tmp_path / "broken.pt"
    obj = torch.load(ckpt, weights_only=False)
    obj["model"].pop("dmd.out_layer.bias")
    torch.save(obj, broken)
    mosi = write_mmsa_pickle(tmp_path / "mosi.pkl", make_synthetic("mosi_aligned", 1, 1, 2))
    no_test = write_mmsa_pickle(
        tmp_path / "train_only.pkl",
        {"train": make_synthetic({"feature_dims": (32, 8, 12), "seq_lens": (12, 14, 16)}, 2, 1, 1)["train"]},
    )
    cases = [
        (["--checkpoint", str(bad)], "could not be read"),
        (["--checkpoint", str(other)], "expected 'dmd_fast.checkpoint/1'"),
        (["--checkpoint", str(broken)], "DMD weights do not match preset 'tiny'"),
        (["--checkpoint", ckpt, "--data", mosi], "feature dim 768 does not match expected 32"),
        (["--checkpoint", ckpt, "--data", no_test], "missing split(s) ['test']"),
        (["--checkpoint", ckpt, "--data", str(tmp_path / "nope.pkl")], "nope.pkl"),
        (["--checkpoint", ckpt, "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    ]
    for argv, expected in cases:
        capsys.readouterr()
        assert main(["predict", "--backend", "reference"] + argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith("dmd-fast predict: error:")
