"""The dmd-fast command line: train (seeds table), attention-map export, clear errors."""

import torch

from dmd_fast.cli import main
from dmd_fast.model.attention_maps import cross_modal_maps
from dmd_fast.model.config import get_preset
from dmd_fast.model.dmd import DMD


def test_train_two_seeds_writes_tables(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--epochs",
            "1",
            "--seeds",
            "1,2",
            "--synthetic-sizes",
            "32,16,16",
            "--out",
            str(out),
            "--backend",
            "reference",
        ]
    )
    assert rc == 0
    text = (out / "seeds.md").read_text()
    assert "| mean ± STD |" in text
    for edge in ("V→L", "A→L", "L→V", "A→V", "L→A", "V→A"):
        assert f"| {edge} |" in text
    assert (out / "seed-1" / "best.pt").exists() and (out / "seed-2" / "log.jsonl").exists()

    maps_dir = tmp_path / "maps"
    assert main(["attention-map", "--checkpoint", str(out / "seed-1" / "best.pt"), "--out", str(maps_dir)]) == 0
    pngs = sorted(p.name for p in maps_dir.glob("*.png"))
    assert len(pngs) == 6 and all(p.endswith(".png") for p in pngs)
    assert (maps_dir / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cross_modal_maps_are_distributions():
    cfg = get_preset("tiny")
    model = DMD(cfg, backend="reference")
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    maps = cross_modal_maps(model, torch.randn(2, tl, dl), torch.randn(2, ta, da), torch.randn(2, tv, dv))
    Tl, Ta, Tv = cfg.conv_out_lens
    assert maps["l_with_a"].shape == (Tl, Ta) and maps["v_with_l"].shape == (Tv, Tl)
    for w in maps.values():
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0]))


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--preset", "iemocap", "--out", str(tmp_path)]) == 2
    assert "preset" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing.pkl"), "--out", str(tmp_path)]) == 2
    assert "missing.pkl" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"xx")
    assert main(["attention-map", "--checkpoint", str(bad)]) == 2
    assert "could not be read" in capsys.readouterr().err


def test_cross_modal_maps_with_grouped_launches():
    """The default (non-reference) backend runs grouped launches; maps must still be recorded."""
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    grouped = DMD(cfg, backend="auto", grouped=True)
    plain = DMD(cfg, backend="reference")
    plain.load_state_dict(grouped.state_dict())
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    x = (torch.randn(1, tl, dl), torch.randn(1, ta, da), torch.randn(1, tv, dv))
    a, b = cross_modal_maps(grouped, *x), cross_modal_maps(plain, *x)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
