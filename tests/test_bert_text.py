"""DMD with an in-model BERT text encoder (tiny random BertConfig, nothing downloaded)."""
import pytest
import torch

pytest.importorskip("transformers", reason="the [bert] extra is installed by the test command")

from dmd_fast.model.config import get_preset  # noqa: E402
from dmd_fast.model.dmd import DMD  # noqa: E402

TINY_BERT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=37, max_position_embeddings=64)


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
