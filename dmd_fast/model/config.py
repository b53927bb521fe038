"""DMD hyperparameters and presets (upstream ``config/config.json``, docs/upstream-semantics.md, "Presets")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dmd_fast import validation as check
from dmd_fast.model.losses import ORT_SEMANTICS

_DROPOUTS = (
    "attn_dropout",
    "attn_dropout_a",
    "attn_dropout_v",
    "relu_dropout",
    "res_dropout",
    "embed_dropout",
    "text_dropout",
    "output_dropout",
)


@dataclass
class DMDConfig:
    """Every hyperparameter the DMD model, its losses and its trainer read.

    feature_dims / seq_lens are (L, A, V); kernels are the temporal conv sizes (l, a, v).
    """

    name: str = "mosi-aligned"
    feature_dims: tuple = (768, 5, 20)
    seq_lens: tuple = (50, 50, 50)
    d_model: int = 50
    num_heads: int = 10
    nlevels: int = 4
    conv_kernels: tuple = (5, 5, 5)
    attn_dropout: float = 0.3
    attn_dropout_a: float = 0.2
    attn_dropout_v: float = 0.0
    relu_dropout: float = 0.0
    res_dropout: float = 0.0
    embed_dropout: float = 0.2
    text_dropout: float = 0.5
    output_dropout: float = 0.5
    attn_mask: bool = True
    use_bert: bool = False
    bert_config: dict | None = None  # a random BERT of this BertConfig (tests), or
    bert_path: str | None = None  # a local Hugging Face BERT folder (never downloaded)
    # Graph distillation (run.py)
    gd_size_homo: int = 64
    gd_size_hetero: int = 32
    gd_reg: float = 10.0
    gd_alpha: float = 0.125
    gd_w_losses: tuple = (1.0, 10.0)
    # Trainer (config.json / DMD.py)
    batch_size: int = 16
    learning_rate: float = 1e-4
    grad_clip: float = 0.6
    update_epochs: int = 10
    patience: int = 5
    early_stop: int = 10
    ort_semantics: str = "torch19"
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise TypeError/ValueError naming the first field out of range (``config.<field>``)."""
        for name in ("feature_dims", "seq_lens", "conv_kernels"):
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 3:
                raise TypeError(f"config.{name}: expected 3 positive integers (L, A, V), got {value!r}")
            for i, v in enumerate(value):
                check.dim(v, f"config.{name}[{i}]")
        for name in (
            "d_model",
            "num_heads",
            "nlevels",
            "gd_size_homo",
            "gd_size_hetero",
            "batch_size",
            "update_epochs",
            "early_stop",
        ):
            check.dim(getattr(self, name), f"config.{name}")
        check.divisible(self.d_model, self.num_heads, "config.d_model")
        check.integer(self.patience, "config.patience", low=0)
        for name in _DROPOUTS:
            check.probability(getattr(self, name), f"config.{name}")
        check.boolean(self.attn_mask, "config.attn_mask")
        check.boolean(self.use_bert, "config.use_bert")
        check.real(self.gd_reg, "config.gd_reg")
        check.real(self.gd_alpha, "config.gd_alpha")
        check.reals(self.gd_w_losses, "config.gd_w_losses", 2)
        check.positive(self.learning_rate, "config.learning_rate")
        if check.real(self.grad_clip, "config.grad_clip") != -1.0:
            check.positive(self.grad_clip, "config.grad_clip (-1 turns the clip off)")
        check.choice(self.ort_semantics, "config.ort_semantics", ORT_SEMANTICS)

    @property
    def conv_out_lens(self) -> tuple:
        """T' per modality (l, a, v) after the valid temporal convs."""
        return tuple(t - k + 1 for t, k in zip(self.seq_lens, self.conv_kernels))

    def replace(self, **kw) -> DMDConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DMDConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown keys {sorted(unknown)}")
        d = dict(d)
        for key in ("feature_dims", "seq_lens", "conv_kernels", "gd_w_losses"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        return cls(**d)


_MOSI = dict(
    feature_dims=(768, 5, 20),
    d_model=50,
    num_heads=10,
    conv_kernels=(5, 5, 5),
    attn_dropout=0.3,
    attn_dropout_a=0.2,
    attn_dropout_v=0.0,
    embed_dropout=0.2,
    text_dropout=0.5,
    output_dropout=0.5,
)
_MOSEI = dict(
    feature_dims=(768, 74, 35),
    d_model=30,
    num_heads=6,
    conv_kernels=(5, 1, 3),
    attn_dropout=0.4,
    attn_dropout_a=0.0,
    attn_dropout_v=0.0,
    embed_dropout=0.0,
    text_dropout=0.3,
    output_dropout=0.5,
)

PRESETS = {
    "mosi-aligned": DMDConfig(name="mosi-aligned", seq_lens=(50, 50, 50), **_MOSI),
    "mosi-unaligned": DMDConfig(name="mosi-unaligned", seq_lens=(50, 375, 500), **_MOSI),
    "mosei-aligned": DMDConfig(name="mosei-aligned", seq_lens=(50, 50, 50), **_MOSEI),
    "mosei-unaligned": DMDConfig(name="mosei-unaligned", seq_lens=(50, 500, 500), **_MOSEI),
    # Small model on small synthetic data: `dmd-fast train` on a CPU in about a minute.
    "tiny": DMDConfig(
        name="tiny",
        feature_dims=(32, 8, 12),
        seq_lens=(12, 14, 16),
        d_model=12,
        num_heads=2,
        nlevels=2,
        conv_kernels=(3, 1, 3),
        attn_dropout=0.1,
        attn_dropout_a=0.0,
        attn_dropout_v=0.0,
        embed_dropout=0.0,
        text_dropout=0.1,
        output_dropout=0.1,
        gd_size_homo=16,
        gd_size_hetero=8,
        update_epochs=2,
        learning_rate=1e-3,
    ),
}


def get_preset(name: str) -> DMDConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def config_from_fixture(fx_config: dict) -> DMDConfig:
    """DMDConfig from a parity fixture's ``config`` dict (docs/fixture-format.md, "config")."""
    try:
        d, h = fx_config["dst_feature_dim_nheads"]
        drops = fx_config["dropouts"]
        return DMDConfig(
            name=f"{fx_config['dataset']}-{'aligned' if fx_config['aligned'] else 'unaligned'}-fixture",
            feature_dims=tuple(fx_config["feature_dims_LAV"]),
            seq_lens=tuple(fx_config["seq_lens_LAV"]),
            d_model=int(d),
            num_heads=int(h),
            nlevels=int(fx_config["nlevels"]),
            conv_kernels=(
                int(fx_config["conv1d_kernel_size_l"]),
                int(fx_config["conv1d_kernel_size_a"]),
                int(fx_config["conv1d_kernel_size_v"]),
            ),
            attn_dropout=drops["attn_dropout"],
            attn_dropout_a=drops["attn_dropout_a"],
            attn_dropout_v=drops["attn_dropout_v"],
            relu_dropout=drops["relu_dropout"],
            res_dropout=drops["res_dropout"],
            embed_dropout=drops["embed_dropout"],
            text_dropout=drops["text_dropout"],
            output_dropout=drops["output_dropout"],
            attn_mask=bool(fx_config["attn_mask"]),
            use_bert=False,
            gd_size_homo=int(fx_config["gd_size_homo"]),
            gd_size_hetero=int(fx_config["gd_size_hetero"]),
            gd_reg=float(fx_config["gd_reg"]),
            gd_alpha=float(fx_config["gd_alpha_softmax_scale"]),
            gd_w_losses=tuple(float(w) for w in fx_config["gd_w_losses_homo"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"fixture config: missing or malformed entry ({exc!r}); expected the format "
            "of docs/fixture-format.md, 'config'"
        ) from exc
