"""DMD with an in-model BERT text encoder (tiny random BertConfig, nothing downloaded)."""

import pytest
import torch

pytest.importorskip("transformers", reason="the [bert] extra is installed by the test command")

from dmd_fast.model.config import get_preset  # noqa: E402
from dmd_fast.model.dmd import DMD  # noqa: E402

TINY_BERT = dict(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
)


def test_dmd_with_bert_tokens_forward_backward():
    cfg = get_preset("tiny").replace(use_bert=True, bert_config=TINY_BERT)
    torch.manual_seed(0)
    model = DMD(cfg, backend="reference")
    assert any(n.startswith("text_model.model.") for n in model.state_dict())  # upstream's BERT key prefix
    B, Tl = 2, cfg.seq_lens[0]
    ids = torch.randint(1, 50, (B, Tl))
    mask = torch.ones(B, Tl)
    mask[1, 8:] = 0
    text = torch.stack([ids.float(), mask, torch.zeros(B, Tl)], dim=1)  # (B, 3, T) as MMSA text_bert
    _, ta, tv = cfg.seq_lens
    _, da, dv = cfg.feature_dims
    out = model(text, torch.randn(B, ta, da), torch.randn(B, tv, dv))
    out["output_logit"].sum().backward()
    assert model.text_model.model.embeddings.word_embeddings.weight.grad is not None  # fine-tuned
    with pytest.raises(ValueError, match="text"):
        model(torch.randn(B, Tl, 32), torch.randn(B, ta, da), torch.randn(B, tv, dv))


def _save_bert(path, vocab_size):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**dict(TINY_BERT, vocab_size=vocab_size, hidden_size=16))).save_pretrained(path)


def test_cli_train_with_local_bert(tmp_path, capsys):
    """dmd-fast train --bert DIR: the in-model BERT from a local folder fine-tunes on text_bert ids;
    the text feature width follows the BERT's hidden size; bad folders and vocabularies are refused."""
    from dmd_fast.cli import main
    from dmd_fast.train.checkpoint import read_checkpoint

    bert_dir = tmp_path / "bert"
    _save_bert(bert_dir, vocab_size=30522)  # the synthetic ids are < 30000, as BERT-base's vocabulary
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--bert",
            str(bert_dir),
            "--epochs",
            "1",
            "--synthetic-sizes",
            "16,8,8",
            "--out",
            str(out),
            "--backend",
            "reference",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["config"]["use_bert"] and ckpt["config"]["feature_dims"][0] == 16
    assert any(k.startswith("dmd.text_model.model.embeddings") for k in ckpt["model"])
    # the attention maps of a BERT checkpoint, without the BERT folder (weights come from the checkpoint)
    import shutil

    shutil.rmtree(bert_dir)
    assert main(["attention-map", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("*.png"))) == 6

    assert main(["train", "--bert", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "--bert: expected a local BERT folder" in capsys.readouterr().err
    small = tmp_path / "small"
    _save_bert(small, vocab_size=1000)
    assert (
        main(
            [
                "train",
                "--bert",
                str(small),
                "--epochs",
                "1",
                "--synthetic-sizes",
                "16,8,8",
                "--out",
                str(tmp_path / "r2"),
            ]
        )
        == 2
    )
    assert "expected [0, 1000) for this BERT's vocabulary" in capsys.readouterr().err
