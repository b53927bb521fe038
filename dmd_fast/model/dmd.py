"""The DMD model (Decoupled Multimodal Distilling, CVPR 2023), upstream-compatible.

Module names and registration order follow upstream ``trains/singleTask/model/dmd.py`` so an
upstream ``state_dict`` (BERT aside) loads with ``strict=True``. ``backend`` selects the
attention core of all 12 transformer encoders ("auto" | "triton" | "reference").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmd_fast import validation as check
from dmd_fast.model.config import DMDConfig
from dmd_fast.model.heads import MODALITIES, grouped_heads, grouped_heads_apply
from dmd_fast.nn.grouped import run_encoders_grouped
from dmd_fast.nn.transformer import TransformerEncoder
from dmd_fast.ops.backend import check_backend_name
from dmd_fast.ops.linear_grouped import linear_grouped


def _conv(cin, cout, k):
    return nn.Conv1d(cin, cout, kernel_size=k, padding=0, bias=False)


class DMD(nn.Module):
    """forward(text (B, T_l, 768) | (B, 3, T_l) with BERT, audio (B, T_a, d_a), vision (B, T_v, d_v))
    → dict of every upstream output (see docs/upstream-semantics.md, "Model outputs").

    ``forward(..., inference=True)`` (eval mode only) → {"output_logit": (B, 1)} computed by the pruned
    inference path; ``predict(text, audio, vision)`` → (B, 1) runs it without autograd."""

    def __init__(self, config: DMDConfig, backend: str = "auto", grouped: bool | None = None):
        super().__init__()
        if not isinstance(config, DMDConfig):
            raise TypeError(
                f"config: expected a DMDConfig (dmd_fast.model.get_preset(...)), got {type(config).__name__}"
            )
        self.config = c = config
        self.backend = check_backend_name(backend)
        # grouped launches: the 3 self-attention, 6 cross-modal and 3 memory encoders each share
        # one attention launch per layer (per dropout value); default on unless backend="reference"
        self.grouped = backend != "reference" if grouped is None else bool(grouped)
        if c.use_bert:
            from dmd_fast.model.text_encoder import BertTextEncoder

            self.text_model = BertTextEncoder(c.bert_config, pretrained_path=c.bert_path)
        d = c.d_model
        dl, da, dv = c.feature_dims
        kl, ka, kv = c.conv_kernels
        tl, ta, tv = c.conv_out_lens
        if min(tl, ta, tv) < 1:
            raise ValueError(f"config: seq_lens {c.seq_lens} shorter than conv_kernels {c.conv_kernels}")
        self.proj_l, self.proj_a, self.proj_v = _conv(dl, d, kl), _conv(da, d, ka), _conv(dv, d, kv)
        self.encoder_s_l, self.encoder_s_v, self.encoder_s_a = _conv(d, d, 1), _conv(d, d, 1), _conv(d, d, 1)
        self.encoder_c = _conv(d, d, 1)
        self.decoder_l, self.decoder_v, self.decoder_a = _conv(2 * d, d, 1), _conv(2 * d, d, 1), _conv(2 * d, d, 1)
        self.proj_cosine_l, self.proj_cosine_v, self.proj_cosine_a = (nn.Linear(d * t, d) for t in (tl, tv, ta))
        self.align_c_l, self.align_c_v, self.align_c_a = (nn.Linear(d * t, d) for t in (tl, tv, ta))
        self.self_attentions_c_l = self._encoder("l")
        self.self_attentions_c_v = self._encoder("v")
        self.self_attentions_c_a = self._encoder("a")
        self.proj1_c, self.proj2_c, self.out_layer_c = (
            nn.Linear(3 * d, 3 * d),
            nn.Linear(3 * d, 3 * d),
            nn.Linear(3 * d, 1),
        )
        self.trans_l_with_a = self._encoder("la")
        self.trans_l_with_v = self._encoder("lv")
        self.trans_a_with_l = self._encoder("al")
        self.trans_a_with_v = self._encoder("av")
        self.trans_v_with_l = self._encoder("vl")
        self.trans_v_with_a = self._encoder("va")
        self.trans_l_mem = self._encoder("l_mem", layers=3)
        self.trans_a_mem = self._encoder("a_mem", layers=3)
        self.trans_v_mem = self._encoder("v_mem", layers=3)
        for m, t in (("l", tl), ("v", tv), ("a", ta)):
            setattr(self, f"proj1_{m}_low", nn.Linear(d * t, d))
            setattr(self, f"proj2_{m}_low", nn.Linear(d, d * t))
            setattr(self, f"out_layer_{m}_low", nn.Linear(d * t, 1))
        for m in MODALITIES:
            setattr(self, f"proj1_{m}_high", nn.Linear(2 * d, 2 * d))
            setattr(self, f"proj2_{m}_high", nn.Linear(2 * d, 2 * d))
            setattr(self, f"out_layer_{m}_high", nn.Linear(2 * d, 1))
        self.weight_l, self.weight_v, self.weight_a = (nn.Linear(2 * d, 2 * d) for _ in range(3))
        self.weight_c = nn.Linear(3 * d, 3 * d)
        fused = 2 * 3 * d + 3 * d
        self.proj1, self.proj2, self.out_layer = nn.Linear(fused, fused), nn.Linear(fused, fused), nn.Linear(fused, 1)

    def _encoder(self, kind: str, layers: int = -1) -> TransformerEncoder:
        c = self.config
        if kind in ("l", "al", "vl"):
            dim, drop = c.d_model, c.attn_dropout
        elif kind in ("a", "la", "va"):
            dim, drop = c.d_model, c.attn_dropout_a
        elif kind in ("v", "lv", "av"):
            dim, drop = c.d_model, c.attn_dropout_v
        else:  # memory encoders
            dim, drop = 2 * c.d_model, c.attn_dropout
        return TransformerEncoder(
            dim,
            c.num_heads,
            max(c.nlevels, layers),
            attn_dropout=drop,
            relu_dropout=c.relu_dropout,
            res_dropout=c.res_dropout,
            embed_dropout=c.embed_dropout,
            offset_causal=c.attn_mask,
            backend=self.backend,
        )

    def encoders(self) -> dict:
        """The 12 transformer encoders by upstream name."""
        return {n: m for n, m in self.named_children() if isinstance(m, TransformerEncoder)}

    def check_inputs(self, text, audio, vision):
        """Shape/dtype checks with messages naming the argument (no host sync)."""
        c = self.config
        (Tl, Ta, Tv), (dl, da, dv) = c.seq_lens, c.feature_dims
        text_shape = ("B", 3, Tl) if c.use_bert else ("B", Tl, dl)
        weight = self.proj_a.weight
        B = None
        for name, x, want in (
            ("text", text, text_shape),
            ("audio", audio, ("B", Ta, da)),
            ("vision", vision, ("B", Tv, dv)),
        ):
            if not torch.is_tensor(x):
                raise TypeError(f"{name}: expected a tensor, got {type(x).__name__}")
            if x.dim() != 3 or tuple(x.shape[1:]) != tuple(want[1:]):
                raise ValueError(f"{name}: expected shape {want} for preset {c.name!r}, got {tuple(x.shape)}")
            if name != "text" or not c.use_bert:
                if not x.is_floating_point():
                    raise TypeError(f"{name}: expected a floating tensor, got {x.dtype}")
                check.module_dtype(x, name, weight, "the model")
            B = x.shape[0] if B is None else B
            if x.shape[0] != B:
                raise ValueError(f"{name}: batch size {x.shape[0]} differs from text's {B}")
            if B < 1:
                raise ValueError(f"{name}: expected a batch of at least 1 sample, got shape {tuple(x.shape)}")
            if x.device != weight.device:
                raise ValueError(f"{name}: on {x.device}, expected the model's device {weight.device}")

    def _run(self, encoders, streams, last_row=False, pair_outputs=False):
        """Independent encoders: grouped launches, or one after another (as upstream). ``last_row``: the
        last layer computes only the last query row, each output is (1, B, E); ``pair_outputs``: encoders
        2i and 2i + 1 side by side along E, (T, B, 2E) each (written so by the fused kernels)."""
        if self.grouped:
            return run_encoders_grouped(encoders, streams, last_row=last_row, pair_outputs=pair_outputs)
        outs = [enc(*stream, last_row=last_row) for enc, stream in zip(encoders, streams)]
        return [torch.cat(outs[i : i + 2], dim=2) for i in range(0, len(outs), 2)] if pair_outputs else outs

    @staticmethod
    def flatten_channel_major(x):
        """(B, d, T') → (B, d·T'), channel-major (upstream's c_sim input)."""
        return x.reshape(x.shape[0], -1)

    @staticmethod
    def flatten_time_major(x):
        """(T', B, d) → (B, T'·d), time-major (upstream's homo-head and proj_cosine input)."""
        return x.transpose(0, 1).reshape(x.shape[1], -1)

    def hetero_branch(self, s_seq: dict, last_row: bool = False) -> dict:
        """The six cross-modal encoders then the three memory encoders on the private features
        s_seq[m] (T'_m, B, d) → {m: (T'_m, B, 2d)} (grouped launches unless the backend is the reference);
        ``last_row``: the memory encoders' last layer computes only the last row, {m: (1, B, 2d)}."""
        pairs = [(tgt, src) for tgt, srcs in (("l", "av"), ("a", "lv"), ("v", "la")) for src in srcs]
        # the memory encoders' inputs (l, a, v): each target's two cross-modal outputs side by side
        mem_in = self._run(
            [getattr(self, f"trans_{t}_with_{s}") for t, s in pairs],
            [(s_seq[t], s_seq[s], s_seq[s]) for t, s in pairs],
            pair_outputs=True,
        )
        mem = self._run(
            [self.trans_l_mem, self.trans_a_mem, self.trans_v_mem], [(x, None, None) for x in mem_in], last_row=last_row
        )
        return dict(zip("lav", mem))

    def inference_logit(self, text, audio, vision):
        """The pruned eval forward → output_logit (B, 1): only what the fusion head reads. No decoders,
        reconstructions, re-encodings, c_sim, proj_cosine, homogeneous/hetero/c heads; the self-attention
        and memory encoders compute only the last query row in their last layer; no dropout."""
        if self.training:
            raise RuntimeError(
                "inference: the model is in training mode; call .eval() first (the inference "
                "forward has no dropout, so it equals the eval forward only)"
            )
        self.check_inputs(text, audio, vision)
        if self.config.use_bert:
            text = self.text_model(text)
        x = {"l": text.transpose(1, 2), "a": audio.transpose(1, 2), "v": vision.transpose(1, 2)}
        origin = {m: getattr(self, f"proj_{m}")(x[m]) for m in MODALITIES}  # (B, d, T')
        s_seq = {m: getattr(self, f"encoder_s_{m}")(origin[m]).permute(2, 0, 1) for m in MODALITIES}  # (T', B, d)
        c_seq = {m: self.encoder_c(origin[m]).permute(2, 0, 1) for m in MODALITIES}
        c_att = self._run(
            [getattr(self, f"self_attentions_c_{m}") for m in MODALITIES],
            [(c_seq[m], None, None) for m in MODALITIES],
            last_row=True,
        )  # (1, B, d) each
        c_fusion = torch.cat([h[-1] for h in c_att], dim=1)  # (B, 3d)
        h = self.hetero_branch(s_seq, last_row=True)  # {m: (1, B, 2d)}
        if self.grouped and grouped_heads_apply(c_fusion):  # the four gates in one grouped launch, one sigmoid
            mods = [getattr(self, f"weight_{m}") for m in MODALITIES] + [self.weight_c]
            xs = [h[m][-1] for m in MODALITIES] + [c_fusion]
            a = linear_grouped(xs, [m.weight for m in mods], [m.bias for m in mods], backend=self.backend)
            z = torch.sigmoid(torch.cat(a, dim=1))  # (B, 9d)
        else:
            gates = [torch.sigmoid(getattr(self, f"weight_{m}")(h[m][-1])) for m in MODALITIES]
            z = torch.cat(gates + [torch.sigmoid(self.weight_c(c_fusion))], dim=1)  # (B, 9d)
        return self.out_layer(self.proj2(F.relu(self.proj1(z))) + z)

    @torch.no_grad()
    def predict(self, text, audio, vision):
        """output_logit (B, 1) of the eval forward, by the pruned path, without autograd (eval mode)."""
        return self.inference_logit(text, audio, vision)

    def forward(self, text, audio, vision, inference: bool = False):
        if inference:
            return {"output_logit": self.inference_logit(text, audio, vision)}
        self.check_inputs(text, audio, vision)
        c = self.config
        if c.use_bert:
            text = self.text_model(text)
        x_l = F.dropout(text.transpose(1, 2), p=c.text_dropout, training=self.training)
        x_a, x_v = audio.transpose(1, 2), vision.transpose(1, 2)
        origin = {"l": self.proj_l(x_l), "v": self.proj_v(x_v), "a": self.proj_a(x_a)}  # (B, d, T')
        s = {m: getattr(self, f"encoder_s_{m}")(origin[m]) for m in MODALITIES}
        c_feat = {m: self.encoder_c(origin[m]) for m in MODALITIES}
        recon = {m: getattr(self, f"decoder_{m}")(torch.cat([s[m], c_feat[m]], dim=1)) for m in MODALITIES}
        s_r = {m: getattr(self, f"encoder_s_{m}")(recon[m]) for m in MODALITIES}
        s_seq = {m: s[m].permute(2, 0, 1) for m in MODALITIES}  # (T', B, d)
        c_seq = {m: c_feat[m].permute(2, 0, 1) for m in MODALITIES}
        if self.grouped and grouped_heads_apply(text):
            # encoders first, then every head level by level in grouped linear launches (model/heads.py)
            c_att = [h[-1] for h in self._run(self._self_attentions(), [(c_seq[m], None, None) for m in MODALITIES])]
            c_fusion = torch.cat(c_att, dim=1)
            h = self.hetero_branch(s_seq)
            last_h = {m: h[m][-1] for m in MODALITIES}
            out = grouped_heads(self, c_seq, s_seq, c_feat, c_fusion, last_h)
            return self._with_features(out, origin, s_seq, c_seq, s_r, recon, last_h)
        c_sim = {m: getattr(self, f"align_c_{m}")(self.flatten_channel_major(c_feat[m])) for m in MODALITIES}

        out = {}
        for m in MODALITIES:  # homogeneous heads on time-major flattened c
            h_low = self.flatten_time_major(c_seq[m])
            repr_low = F.relu(getattr(self, f"proj1_{m}_low")(h_low))
            h_proj = getattr(self, f"proj2_{m}_low")(F.dropout(repr_low, p=c.output_dropout, training=self.training))
            out[f"logits_{m}_homo"] = getattr(self, f"out_layer_{m}_low")(h_proj + h_low)
            out[f"repr_{m}_homo"] = repr_low
        proj_s = {m: getattr(self, f"proj_cosine_{m}")(self.flatten_time_major(s_seq[m])) for m in MODALITIES}

        c_att = [h[-1] for h in self._run(self._self_attentions(), [(c_seq[m], None, None) for m in MODALITIES])]
        c_fusion = torch.cat(c_att, dim=1)
        c_proj = self.proj2_c(F.dropout(F.relu(self.proj1_c(c_fusion)), p=c.output_dropout, training=self.training))
        logits_c = self.out_layer_c(c_proj + c_fusion)

        h = self.hetero_branch(s_seq)
        last_h = {m: h[m][-1] for m in MODALITIES}
        for m in MODALITIES:  # heterogeneous heads
            hp = getattr(self, f"proj2_{m}_high")(
                F.dropout(
                    F.relu(getattr(self, f"proj1_{m}_high")(last_h[m])), p=c.output_dropout, training=self.training
                )
            )
            hp = hp + last_h[m]
            out[f"logits_{m}_hetero"] = getattr(self, f"out_layer_{m}_high")(hp)
            out[f"repr_{m}_hetero"] = hp

        gates = [torch.sigmoid(getattr(self, f"weight_{m}")(last_h[m])) for m in MODALITIES]
        z = torch.cat(gates + [torch.sigmoid(self.weight_c(c_fusion))], dim=1)
        z_proj = self.proj2(F.dropout(F.relu(self.proj1(z)), p=c.output_dropout, training=self.training)) + z
        out["output_logit"] = self.out_layer(z_proj)
        out["logits_c"] = logits_c
        for m in MODALITIES:
            out[f"c_{m}_sim"] = c_sim[m]
            out[f"proj_s_{m}"] = proj_s[m]
        return self._with_features(out, origin, s_seq, c_seq, s_r, recon, last_h)

    def _self_attentions(self) -> list:
        return [getattr(self, f"self_attentions_c_{m}") for m in MODALITIES]

    @staticmethod
    def _with_features(out, origin, s_seq, c_seq, s_r, recon, last_h) -> dict:
        """``out`` with the per-modality features every loss reads."""
        for m in MODALITIES:
            out[f"origin_{m}"] = origin[m]
            out[f"s_{m}"] = s_seq[m]
            out[f"c_{m}"] = c_seq[m]
            out[f"s_{m}_r"] = s_r[m]
            out[f"recon_{m}"] = recon[m]
            out[f"last_h_{m}"] = last_h[m]
        return out
