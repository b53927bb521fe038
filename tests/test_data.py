"""MMSA pickle loader, synthetic generator and DataLoaders (docs/upstream-semantics.md, "Input data")."""

import copy
import pickle

import numpy as np
import pytest
import torch

from dmd_fast.data.mmsa import (
    DATASET_SHAPES,
    DataError,
    MMSADataset,
    datasets_from_splits,
    load_mmsa,
    make_loaders,
    write_mmsa_pickle,
)
from dmd_fast.data.synthetic import make_synthetic, synthetic_datasets

SMALL = {"feature_dims": (12, 5, 7), "seq_lens": (10, 14, 18)}


@pytest.fixture(scope="module")
def small():
    return make_synthetic(SMALL, 24, 8, 10, seed=5)


def _write(tmp_path, splits, name="d.pkl"):
    return write_mmsa_pickle(tmp_path / name, splits)


# ------------------------------------------------------------------ round trip / schema


def test_round_trip(tmp_path, small):
    ds = load_mmsa(_write(tmp_path, small), expected=SMALL)
    assert set(ds) == {"train", "valid", "test"}
    assert [len(ds[s]) for s in ("train", "valid", "test")] == [24, 8, 10]
    tr = ds["train"]
    assert isinstance(tr, MMSADataset)
    assert tr.feature_dims == (12, 5, 7) and tr.seq_lens == (10, 14, 18)
    item = tr[3]
    assert set(item) == {"text", "audio", "vision", "label", "index"}
    assert item["text"].shape == (10, 12) and item["audio"].shape == (14, 5) and item["vision"].shape == (18, 7)
    assert item["label"].shape == (1,) and item["index"].item() == 3
    for k in ("text", "audio", "vision", "label"):
        assert item[k].dtype == torch.float32
    np.testing.assert_array_equal(item["audio"].numpy(), small["train"]["audio"][3])
    assert item["label"].item() == pytest.approx(float(small["train"]["regression_labels"][3]))
    np.testing.assert_array_equal(tr.audio_lengths, small["train"]["audio_lengths"].astype(np.float32))
    assert tr.ids[0] == small["train"]["id"][0] and len(tr.raw_text) == 24


def test_casts_float64_and_label_column(tmp_path, small):
    s = copy.deepcopy(small)
    for sp in s.values():
        sp["vision"] = sp["vision"].astype(np.float64)
        sp["regression_labels"] = sp["regression_labels"].reshape(-1, 1).astype(np.float64)
    ds = load_mmsa(_write(tmp_path, s))
    assert ds["valid"].vision.dtype == torch.float32
    assert ds["valid"][0]["label"].shape == (1,)


def test_text_bert_mode(small):
    ds = datasets_from_splits(small, text_key="text_bert")
    it = ds["train"][0]
    assert it["text"].shape == (3, 10)
    assert it["text"][0, 0].item() == 101 and it["text"][1, 0].item() == 1


def test_audio_neg_inf_replaced_by_zero(tmp_path, small):
    s = copy.deepcopy(small)
    s["test"]["audio"][2, 0, :3] = -np.inf
    ds = load_mmsa(_write(tmp_path, s))
    assert torch.isfinite(ds["test"].audio).all()
    assert (ds["test"][2]["audio"][0, :3] == 0).all()
    assert ds["test"][2]["audio"][0, 3] == float(s["test"]["audio"][2, 0, 3])
    # in-memory input: the caller's array is not modified
    ds2 = datasets_from_splits(s)
    assert (ds2["test"].audio[2, 0, :3] == 0).all() and np.isneginf(s["test"]["audio"][2, 0, :3]).all()


def test_audio_pos_inf_rejected(tmp_path, small):
    s = copy.deepcopy(small)
    s["valid"]["audio"][1, 1, 1] = np.inf
    with pytest.raises(DataError, match=r"split 'valid' key 'audio': 1 non-finite .*after replacing -inf"):
        load_mmsa(_write(tmp_path, s))


def test_nan_vision_rejected(tmp_path, small):
    s = copy.deepcopy(small)
    s["train"]["vision"][0, :2, 0] = np.nan
    with pytest.raises(DataError, match=r"split 'train' key 'vision': 2 non-finite values \(2 NaN, 0 \+/-inf\)"):
        load_mmsa(_write(tmp_path, s))


def test_missing_key(tmp_path, small):
    s = copy.deepcopy(small)
    del s["valid"]["vision"]
    with pytest.raises(DataError, match=r"split 'valid': missing key\(s\) \['vision'\]"):
        load_mmsa(_write(tmp_path, s))


def test_missing_split(tmp_path, small):
    s = {k: v for k, v in small.items() if k != "test"}
    with pytest.raises(DataError, match=r"missing split\(s\) \['test'\]"):
        load_mmsa(_write(tmp_path, s))


def test_wrong_rank(tmp_path, small):
    s = copy.deepcopy(small)
    s["train"]["audio"] = s["train"]["audio"].mean(1)
    with pytest.raises(
        DataError, match=r"split 'train' key 'audio': expected rank 3 \(N, T, d\); received shape \(24, 5\)"
    ):
        load_mmsa(_write(tmp_path, s))


def test_label_wrong_shape(small):
    s = copy.deepcopy(small)
    s["test"]["regression_labels"] = np.zeros((10, 2), np.float32)
    with pytest.raises(DataError, match=r"split 'test' key 'regression_labels'.*received \(10, 2\)"):
        datasets_from_splits(s)


def test_n_mismatch(tmp_path, small):
    s = copy.deepcopy(small)
    s["test"]["vision"] = s["test"]["vision"][:9]
    with pytest.raises(DataError, match=r"split 'test' key 'vision': has 9 samples; expected N=10"):
        load_mmsa(_write(tmp_path, s))
    s = copy.deepcopy(small)
    s["train"]["regression_labels"] = s["train"]["regression_labels"][:-1]
    with pytest.raises(DataError, match=r"split 'train' key 'regression_labels': has 23 samples; expected N=24"):
        datasets_from_splits(s)


def test_feature_dim_differs_across_splits(small):
    s = copy.deepcopy(small)
    s["valid"]["vision"] = s["valid"]["vision"][:, :, :6]
    with pytest.raises(
        DataError, match=r"split 'valid' key 'vision': feature dim differs across splits.*\(18, 7\).*\(18, 6\)"
    ):
        datasets_from_splits(s)


def test_expected_feature_dim_and_length(tmp_path, small):
    path = _write(tmp_path, small)
    with pytest.raises(DataError, match=r"split 'train' key 'audio': feature dim 5 does not match expected 74"):
        load_mmsa(path, expected={"feature_dims": (12, 74, 7)})
    with pytest.raises(DataError, match=r"split 'train' key 'text': feature dim 12 does not match expected 768"):
        load_mmsa(path, expected="mosei_aligned")
    with pytest.raises(DataError, match=r"key 'vision': sequence length 18 does not match expected 50"):
        load_mmsa(path, expected={"seq_lens": (10, 14, 50)})

    class Preset:  # any object with the attributes works
        feature_dims = (12, 5, 7)
        seq_lens = (10, 14, 18)

    assert len(load_mmsa(path, expected=Preset())["train"]) == 24
    with pytest.raises(ValueError, match="expected: unknown dataset preset 'mosx'"):
        load_mmsa(path, expected="mosx")


def test_not_a_dict_pickle(tmp_path):
    p = tmp_path / "list.pkl"
    p.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=r"expected a dict with splits .*received list"):
        load_mmsa(p)


def test_not_a_pickle(tmp_path):
    p = tmp_path / "junk.pkl"
    p.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="not a readable pickle"):
        load_mmsa(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MMSA pickle not found: .*nope\.pkl"):
        load_mmsa(tmp_path / "nope.pkl")


def test_split_not_a_dict_and_non_numeric(small):
    s = copy.deepcopy(small)
    s["valid"] = [1, 2]
    with pytest.raises(DataError, match=r"split 'valid': expected a dict of arrays; received list"):
        datasets_from_splits(s)
    s = copy.deepcopy(small)
    s["train"]["text"] = np.array(["a"] * 24)
    with pytest.raises(DataError, match=r"split 'train' key 'text': expected a numeric array"):
        datasets_from_splits(s)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------ loaders


def test_loader_batches(small):
    ds = datasets_from_splits(small)
    loaders = make_loaders(ds, batch_size=16)
    b = next(iter(loaders["train"]))
    assert b["text"].shape == (16, 10, 12) and b["audio"].shape == (16, 14, 5) and b["vision"].shape == (16, 18, 7)
    assert b["label"].shape == (16, 1) and b["index"].shape == (16,) and b["index"].dtype == torch.int64
    # eval splits: in order, nothing dropped
    idx = torch.cat([b["index"] for b in loaders["test"]])
    assert idx.tolist() == list(range(10))
    # train: drop_last only affects train
    dl = make_loaders(ds, batch_size=16, drop_last=True)
    assert len(dl["train"]) == 1 and len(dl["valid"]) == 1
    np.testing.assert_array_equal(b["label"][:, 0].numpy(), ds["train"].labels[b["index"], 0].numpy())


def _epoch(loader):
    return torch.cat([b["index"] for b in loader]).tolist()


def test_seeded_shuffle_reproducible(small):
    ds = datasets_from_splits(small)
    a = make_loaders(ds, batch_size=5, seed=7)["train"]
    b = make_loaders(ds, batch_size=5, seed=7)["train"]
    c = make_loaders(ds, batch_size=5, seed=8)["train"]
    ea = [_epoch(a) for _ in range(2)]
    assert ea == [_epoch(b) for _ in range(2)]
    assert ea[0] != ea[1] and sorted(ea[0]) == list(range(24))
    assert _epoch(c) != ea[0]
    # checkpoint / resume through the exposed generator
    g = a.generator
    assert isinstance(g, torch.Generator) and a.sampler.generator is g
    state = g.get_state()
    nxt = _epoch(a)
    g.set_state(state)
    assert _epoch(a) == nxt
    # unshuffled train keeps order
    assert _epoch(make_loaders(ds, batch_size=5, shuffle_train=False)["train"]) == list(range(24))


def test_make_loaders_bad_args(small):
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        make_loaders(datasets_from_splits(small), batch_size=0)


# ------------------------------------------------------------------ synthetic


@pytest.mark.parametrize("name", sorted(DATASET_SHAPES))
def test_synthetic_presets_shapes(name):
    d = make_synthetic(name, 2, 1, 1, seed=0)
    fd, sl = DATASET_SHAPES[name]["feature_dims"], DATASET_SHAPES[name]["seq_lens"]
    tr = d["train"]
    assert tr["text"].shape == (2, sl[0], fd[0])
    assert tr["audio"].shape == (2, sl[1], fd[1])
    assert tr["vision"].shape == (2, sl[2], fd[2])
    assert tr["text_bert"].shape == (2, 3, sl[0])
    assert tr["regression_labels"].shape == (2,)
    ds = synthetic_datasets(name, 2, 1, 1, seed=0)  # passes the loader's expected-shape check
    assert ds["test"].seq_lens == tuple(sl)


def test_synthetic_deterministic_and_split_streams():
    a = make_synthetic(SMALL, 20, 6, 6, seed=3)
    b = make_synthetic(SMALL, 20, 6, 6, seed=3)
    c = make_synthetic(SMALL, 30, 6, 6, seed=3)
    d = make_synthetic(SMALL, 20, 6, 6, seed=4)
    for s in a:
        for k in ("text", "audio", "vision", "regression_labels", "audio_lengths"):
            np.testing.assert_array_equal(a[s][k], b[s][k])
    np.testing.assert_array_equal(a["test"]["vision"], c["test"]["vision"])  # n_train does not move test
    assert not np.array_equal(a["train"]["text"], d["train"]["text"])


def test_synthetic_padding_and_labels():
    d = make_synthetic(SMALL, 400, 4, 4, seed=1)["train"]
    for key, lk in (("audio", "audio_lengths"), ("vision", "vision_lengths")):
        x, L = d[key], d[lk]
        T = x.shape[1]
        assert L.min() >= 1 and L.max() <= T
        valid = np.arange(T)[None] < L[:, None]
        assert (x[~valid] == 0).all()  # right zero padding, exactly 0
        assert (x[valid] != 0).all(axis=-1).all()
    mask = d["text_bert"][:, 1]
    tl = mask.sum(1).astype(int)
    assert (d["text"][np.arange(10)[None] >= tl[:, None]] == 0).all()
    assert not np.array_equal(d["audio_lengths"], d["vision_lengths"])  # unaligned -> independent
    y = d["regression_labels"]
    assert y.dtype == np.float32 and y.min() >= -3 and y.max() <= 3
    np.testing.assert_allclose(y * 5, np.round(y * 5), atol=1e-4)  # 0.2 grid
    assert 0.01 <= np.mean(y == 0) <= 0.12 and len(np.unique(y)) > 10
    al = make_synthetic({"feature_dims": (4, 3, 2), "seq_lens": (9, 9, 9)}, 50, 1, 1, seed=0)["train"]
    np.testing.assert_array_equal(al["audio_lengths"], al["vision_lengths"])  # aligned -> shared length


def test_synthetic_audio_inf_handled_by_loader():
    ds = synthetic_datasets(SMALL, 8, 2, 2, seed=0, audio_inf_frac=0.05)
    assert torch.isfinite(ds["train"].audio).all()


def _ridge_r2(Xtr, ytr, Xte, yte, lam=1.0):
    Xtr = np.c_[Xtr, np.ones(len(Xtr))]
    Xte = np.c_[Xte, np.ones(len(Xte))]
    w = np.linalg.solve(Xtr.T @ Xtr + lam * np.eye(Xtr.shape[1]), Xtr.T @ ytr)
    r = yte - Xte @ w
    return 1.0 - (r @ r) / ((yte - yte.mean()) @ (yte - yte.mean()))


def test_synthetic_labels_need_all_modalities():
    d = make_synthetic({"feature_dims": (32, 5, 20), "seq_lens": (20, 30, 40)}, 1500, 4, 500, seed=0)

    def feats(s):
        out = {}
        for m in ("text", "audio", "vision"):
            x = s[m].astype(np.float64)
            n_valid = (x != 0).any(-1).sum(1, keepdims=True)
            out[m] = x.sum(1) / np.maximum(n_valid, 1)  # mean over valid frames
        return out

    F, G = feats(d["train"]), feats(d["test"])
    ytr, yte = d["train"]["regression_labels"], d["test"]["regression_labels"]
    single = {m: _ridge_r2(F[m], ytr, G[m], yte) for m in F}
    full = _ridge_r2(np.hstack([F[m] for m in F]), ytr, np.hstack([G[m] for m in G]), yte)
    assert full > 0.7, (full, single)
    assert all(0.05 < r < full - 0.3 for r in single.values()), (full, single)
