"""Regression metrics (docs/upstream-semantics.md, "Metrics"), checked against hand computations."""

import math

import numpy as np
import pytest
import torch

from dmd_fast.train.metrics import format_metrics_table, regression_metrics, upstream_metrics, weighted_f1

# idx:            0    1    2    3    4    5     6
PRED = np.array([1.2, 0.5, 0.3, 3.4, 0.1, 0.4, -0.1])
TRUTH = np.array([1.0, 0.6, 0.0, 2.4, -2.0, -0.2, 0.0])


def test_hand_computed_case():
    m = regression_metrics(PRED, TRUTH)
    # Has0: truth>=0 TTTTFFT, pred>=0 TTTTTTF -> 4/7 correct.
    assert m["Has0_acc_2"] == pytest.approx(4 / 7)
    # class True: tp 4, fp 2, fn 1 -> F1 8/11, support 5; class False: tp 0 -> F1 0, support 2.
    assert m["Has0_F1_score"] == pytest.approx(5 * (8 / 11) / 7)
    # Non0 drops idx 2 and 6 (truth == 0): truth>0 TTTFF, pred>0 TTTTT -> 3/5.
    assert m["Non0_acc_2"] == pytest.approx(3 / 5)
    # True: tp 3, fp 2, fn 0 -> 6/8 (support 3); False: 0 (support 2) -> 9/20.
    assert m["Non0_F1_score"] == pytest.approx(9 / 20)
    # round(clip(.,-3,3)): pred 1,0,0,3,0,0,-0 vs truth 1,1,0,2,-2,-0,0 (0.5 -> 0, half to even).
    assert m["Acc_7"] == pytest.approx(4 / 7)
    # clip +-2: pred 1,0,0,2,0,0,0 vs truth 1,1,0,2,-2,0,0.
    assert m["Acc_5"] == pytest.approx(5 / 7)
    # clip +-1: pred 1,0,0,1,0,0,0 vs truth 1,1,0,1,-1,0,0.
    assert m["Acc_3"] == pytest.approx(5 / 7)
    assert m["MAE"] == pytest.approx((0.2 + 0.1 + 0.3 + 1.0 + 2.1 + 0.6 + 0.1) / 7)
    assert m["Corr"] == pytest.approx(np.corrcoef(PRED, TRUTH)[0, 1])
    assert set(m) == {
        "Has0_acc_2",
        "Has0_F1_score",
        "Non0_acc_2",
        "Non0_F1_score",
        "Acc_7",
        "Acc_5",
        "Acc_3",
        "MAE",
        "Corr",
    }
    assert all(isinstance(v, float) for v in m.values())


def test_upstream_subset():
    u = upstream_metrics(PRED, TRUTH)
    m = regression_metrics(PRED, TRUTH)
    assert u == {"Acc_2": m["Non0_acc_2"], "F1_score": m["Non0_F1_score"], "Acc_7": m["Acc_7"], "MAE": m["MAE"]}
    assert u["Acc_2"] == pytest.approx(3 / 5)  # not rounded to 4 decimals
    assert u["F1_score"] == 0.45


def test_ties_at_zero():
    # pred exactly 0: counts as ">= 0" for Has0 but not "> 0" for Non0.
    pred = np.array([0.0, 0.0, 1.0])
    truth = np.array([-1.0, 2.0, 0.0])
    m = regression_metrics(pred, truth)
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)  # truth>=0 FTT, pred>=0 TTT
    assert m["Non0_acc_2"] == pytest.approx(1 / 2)  # idx 2 dropped; truth>0 FT, pred>0 FF
    # Non0 F1: True: tp0 -> 0 (support 1); False: tp 1, fp 1, fn 0 -> 2/3 (support 1).
    assert m["Non0_F1_score"] == pytest.approx((2 / 3) / 2)


def test_truth_zero_excluded_from_non0_only():
    pred = np.array([-1.0, 1.0, -2.0])
    truth = np.array([0.0, 1.0, 0.0])
    m = regression_metrics(pred, truth)
    assert m["Non0_acc_2"] == 1.0 and m["Non0_F1_score"] == 1.0
    assert m["Has0_acc_2"] == pytest.approx(1 / 3)


def test_all_truth_zero_gives_nan_non0():
    m = regression_metrics([0.3, -0.2], [0.0, 0.0])
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == 0.5


def test_round_half_to_even_like_numpy():
    # np.round: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0
    m = regression_metrics([0.5, 1.5, 2.5, -0.5], [0.0, 2.0, 2.0, 0.0])
    assert m["Acc_7"] == 1.0
    # clip to +-1 first: 1.5 -> 1, 2.5 -> 1; truth 2 -> 1
    assert m["Acc_3"] == 1.0


def test_clip_before_round():
    m = regression_metrics([5.0, -9.0], [3.0, -3.0])
    assert m["Acc_7"] == 1.0 and m["Acc_5"] == 1.0 and m["Acc_3"] == 1.0
    assert m["MAE"] == pytest.approx(4.0)


def test_corr_constant_and_perfect():
    assert regression_metrics([1.0, 1.0, 1.0], [0.2, -1.0, 2.0])["Corr"] == 0.0
    assert regression_metrics([0.2, -1.0, 2.0], [1.0, 1.0, 1.0])["Corr"] == 0.0
    assert regression_metrics([0.5], [0.4])["Corr"] == 0.0
    assert regression_metrics([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])["Corr"] == pytest.approx(1.0)
    assert regression_metrics([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])["Corr"] == pytest.approx(-1.0)


def test_weighted_f1_manual_multiclass():
    truth = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 2, 2])
    # class 0: tp2 fp0 fn1 -> 4/5 (support 3); class 1: tp1 fp1 fn1 -> 1/2 (2); class 2: tp1 fp1 fn0 -> 2/3 (1)
    expect = (3 * 4 / 5 + 2 * 1 / 2 + 1 * 2 / 3) / 6
    assert weighted_f1(truth, pred) == pytest.approx(expect)
    # class only in pred has support 0 -> contributes nothing, but its FPs hurt class 0
    assert weighted_f1(np.array([0, 0]), np.array([0, 3])) == pytest.approx(2 / 3)
    assert weighted_f1(np.array([True, False]), np.array([True, False])) == 1.0


def test_torch_and_shapes():
    p = torch.tensor(PRED, dtype=torch.float32).reshape(-1, 1).requires_grad_()
    t = torch.tensor(TRUTH, dtype=torch.float32).reshape(-1, 1)
    m_t = regression_metrics(p, t)
    m_n = regression_metrics(PRED.astype(np.float32), TRUTH.astype(np.float32))
    assert m_t == m_n
    assert regression_metrics(p.to(torch.bfloat16), t.reshape(-1))["Has0_acc_2"] == pytest.approx(4 / 7)
    assert regression_metrics(PRED.reshape(7, 1), TRUTH)["Non0_acc_2"] == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    "pred,truth,msg",
    [
        ([1.0, 2.0], [1.0], r"pred/truth: expected the same number of elements; received pred 2, truth 1"),
        ([], [], r"expected at least one element"),
        ([1.0, float("nan")], [1.0, 2.0], r"pred: expected all finite values; received 1 NaN/inf of 2"),
        ([1.0, 2.0], [float("inf"), 2.0], r"truth: expected all finite"),
        (["a", "b"], [1.0, 2.0], r"pred: expected a numeric array"),
    ],
)
def test_bad_inputs(pred, truth, msg):
    with pytest.raises(ValueError, match=msg):
        regression_metrics(pred, truth)


def test_format_metrics_table():
    rows = [
        {"epoch": 1, "loss": 1.23456, "Acc_2": 0.5},
        {"epoch": 2, "loss": 0.5, "Acc_2": float("nan"), "extra": "x"},
    ]
    out = format_metrics_table(rows, ["epoch", "loss", "Acc_2", "MAE"])
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["epoch", "loss", "Acc_2", "MAE"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["1", "1.2346", "0.5000", "-"]
    assert lines[3].split() == ["2", "0.5000", "nan", "-"]
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert format_metrics_table(rows).splitlines()[0].split() == ["epoch", "loss", "Acc_2", "extra"]
    with pytest.raises(ValueError, match=r"rows\[0\]: expected a dict"):
        format_metrics_table([1], ["a"])
