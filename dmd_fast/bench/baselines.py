"""The implementations we compare ("providers") for the attention core and the GD op.

Attention providers, all on (B, H, L, D) inputs with DMD's offset-causal mask and dropout on the
attention weights (docs/performance-floor.md, "How benchmarks compare providers"):

========================  ==========================================================================
``ours``                  ``dmd_fast.ops.attention.cross_modal_attention(backend="triton")``
``eager``                 upstream MulT/DMD core exactly: bmm of the pre-scaled q, ``+=`` the additive
                          float mask ``triu(-inf, 1 + |Lk - Lq|)``, ``softmax(float).type_as``,
                          ``F.dropout``, bmm (mask built once on the device, as a layer would cache it)
``compiled``              the same function under ``torch.compile`` (inductor, static shapes)
``sdpa``                  ``F.scaled_dot_product_attention`` with the same mask as bool; the backend
                          PyTorch picks is read from ``torch._fused_sdp_choice``
``sdpa_flash_nomask``     SDPA forced to FLASH_ATTENTION, bf16, **no mask**: not equivalent, a lower bound
``flex``                  FlexAttention compiled, head dim zero-padded to 16, BlockMask from the
                          offset-causal mask_mod, **no dropout** (it has none): not equivalent when p > 0
``reference``             ``dmd_fast.reference.attention`` (the oracle; CPU quick mode)
========================  ==========================================================================

GD providers: ``ours`` (``dmd_fast.ops.graph_distill``, backend="triton"), ``eager``
(``dmd_fast.reference.graph_distill``), ``compiled`` (the reference under ``torch.compile``).

A provider that cannot run a case raises :class:`Unsupported` with the reason; suites record it.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


class Unsupported(Exception):
    """This provider cannot run this case (the message says why); not a failure of the benchmark."""


@dataclass(frozen=True)
class AttnCase:
    """One attention problem: (B, H, Lq, D) queries against (B, H, Lk, D) keys/values."""

    B: int
    H: int
    Lq: int
    Lk: int
    D: int
    dtype: str = "fp32"
    offset_causal: bool = True
    dropout_p: float = 0.3

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def name(self) -> str:
        mask = "oc" if self.offset_causal else "nomask"
        return f"{self.Lq}x{self.Lk} d{self.D} H{self.H} B{self.B} {self.dtype} {mask} p{self.dropout_p:g}"

    def as_dict(self) -> dict:
        return {
            "B": self.B,
            "H": self.H,
            "Lq": self.Lq,
            "Lk": self.Lk,
            "D": self.D,
            "dtype": self.dtype,
            "offset_causal": self.offset_causal,
            "dropout_p": self.dropout_p,
        }


@dataclass
class Built:
    """A provider made ready for one case: ``fn(q, k, v) -> o``.

    ``prepare`` (untimed) maps one input set (q, k, v, g) to the tensors the provider takes (e.g. a
    bf16 copy); ``extra`` holds facts for the report (chosen SDPA backend, block-mask build time).
    """

    fn: Callable
    equivalent: bool = True
    note: str = ""
    prepare: Callable | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    label: str
    build: Callable
    compiled: bool = False  # goes through torch.compile (slow first call)
    cuda_only: bool = False


def make_attention_inputs(case: AttnCase, device, n_sets: int = 3, seed: int = 0) -> list[tuple]:
    """``n_sets`` independent (q, k, v, grad_out) sets of random normal values (never zeros)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        q = torch.randn(case.B, case.H, case.Lq, case.D, generator=gen)
        k = torch.randn(case.B, case.H, case.Lk, case.D, generator=gen)
        v = torch.randn(case.B, case.H, case.Lk, case.D, generator=gen)
        g = torch.randn(case.B, case.H, case.Lq, case.D, generator=gen)
        sets.append(
            tuple(t.to(device=device, dtype=case.torch_dtype).requires_grad_(i < 3) for i, t in enumerate((q, k, v, g)))
        )
    return sets


def upstream_future_mask(len_q: int, len_k: int, device=None) -> torch.Tensor:
    """MulT/DMD ``buffered_future_mask``: float (Lq, Lk), -inf where j > i + |Lk - Lq|, else 0."""
    neg_inf = torch.ones(len_q, len_k).float().fill_(float("-inf"))
    return torch.triu(neg_inf, 1 + abs(len_k - len_q)).to(device)


def _is_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


# ------------------------------------------------------------------------------------------------
# attention providers
# ------------------------------------------------------------------------------------------------


def _build_ours(case: AttnCase, device, sample) -> Built:
    from dmd_fast.ops.backend import interpreter_enabled

    if _is_cpu(device):
        if not interpreter_enabled():
            raise Unsupported(
                "ours on the CPU needs the Triton interpreter: set TRITON_INTERPRET=1 before starting (skipped)"
            )
        if case.dtype in ("bf16", "fp16"):
            raise Unsupported(
                f"{case.dtype} under the Triton interpreter is unreliable "
                "(docs/testing.md, 'The interpreter and 16-bit dtypes')"
            )
    try:
        from dmd_fast.ops.attention import cross_modal_attention
    except ImportError as exc:
        raise Unsupported(f"dmd_fast.ops.attention not importable yet ({exc})") from exc
    kw = dict(offset_causal=case.offset_causal, dropout_p=case.dropout_p, backend="triton")

    def fn(q, k, v):
        return cross_modal_attention(q, k, v, **kw)

    return Built(fn, note="fused Triton kernel, in-kernel dropout")


def _eager_core(q, k, v, mask, scale: float, dropout_p: float):
    """Upstream MulT ``MultiheadAttention.forward`` core on (B, H, L, D) views."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    qq = (q * scale).reshape(B * H, Lq, D)
    kk = k.reshape(B * H, Lk, D)
    vv = v.reshape(B * H, Lk, D)
    attn_weights = torch.bmm(qq, kk.transpose(1, 2))
    if mask is not None:
        attn_weights += mask.unsqueeze(0)
    attn_weights = F.softmax(attn_weights.float(), dim=-1).type_as(attn_weights)
    attn_weights = F.dropout(attn_weights, p=dropout_p, training=True)
    attn = torch.bmm(attn_weights, vv)
    return attn.view(B, H, Lq, D)


def _eager_fn(case: AttnCase, device):
    mask = upstream_future_mask(case.Lq, case.Lk, device) if case.offset_causal else None
    scale, p = case.D**-0.5, case.dropout_p

    def fn(q, k, v):
        return _eager_core(q, k, v, mask, scale, p)

    return fn


def _build_eager(case: AttnCase, device, sample) -> Built:
    return Built(_eager_fn(case, device), note="upstream MulT core: bmm, +=mask, softmax(float), dropout, bmm")


def _build_compiled(case: AttnCase, device, sample) -> Built:
    compiled = torch.compile(_eager_fn(case, device), dynamic=False)
    return Built(compiled, note="upstream core under torch.compile (inductor, static shapes)")


def sdpa_backend_name(q, k, v, attn_mask, dropout_p: float, scale: float | None) -> str:
    """Which SDPA backend PyTorch would run (``torch._fused_sdp_choice``), or why it is unknown."""
    choice = getattr(torch, "_fused_sdp_choice", None)
    if choice is None:
        return "unknown (torch._fused_sdp_choice missing)"
    try:
        idx = choice(q, k, v, attn_mask, dropout_p, False, scale=scale)
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(idx).name
    except Exception:
        return {
            -1: "ERROR",
            0: "MATH",
            1: "FLASH_ATTENTION",
            2: "EFFICIENT_ATTENTION",
            3: "CUDNN_ATTENTION",
            4: "OVERRIDEABLE",
        }.get(int(idx), str(idx))


def _build_sdpa(case: AttnCase, device, sample) -> Built:
    from dmd_fast.reference.attention import offset_causal_mask

    mask = offset_causal_mask(case.Lq, case.Lk, device) if case.offset_causal else None
    scale, p = case.D**-0.5, case.dropout_p

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)

    q, k, v = sample[:3]
    backend = sdpa_backend_name(q, k, v, mask, p, scale)
    return Built(fn, note=f"bool mask; dispatch {backend}", extra={"sdpa_backend": backend})


def _build_sdpa_flash(case: AttnCase, device, sample) -> Built:
    if _is_cpu(device):
        raise Unsupported("SDPA flash needs CUDA")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    scale, p = case.D**-0.5, case.dropout_p

    def fn(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale)

    def prepare(q, k, v, g):
        return tuple(t.detach().to(torch.bfloat16).requires_grad_(i < 3) for i, t in enumerate((q, k, v, g)))

    note = "NOT equivalent, lower bound: no mask, bf16"
    if case.dtype != "bf16":
        note += f" (case is {case.dtype})"
    return Built(fn, equivalent=False, note=note, prepare=prepare)


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _build_flex(case: AttnCase, device, sample) -> Built:
    if _is_cpu(device):
        raise Unsupported("FlexAttention baseline runs on CUDA only in this suite")
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as exc:
        raise Unsupported(f"FlexAttention not available in torch {torch.__version__} ({exc})") from exc
    D, Dp = case.D, max(16, _next_pow2(case.D))
    scale = D**-0.5
    block_mask, build_us = None, None
    if case.offset_causal:
        off = abs(case.Lk - case.Lq)

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + off

        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            block_mask = create_block_mask(mask_mod, None, None, case.Lq, case.Lk, device=device)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e6)
        build_us = sorted(times)[1]

    def padded(q, k, v):
        pad = (0, Dp - D)
        o = flex_attention(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), block_mask=block_mask, scale=scale)
        return o[..., :D]

    fn = torch.compile(padded, dynamic=False)
    equivalent = case.dropout_p == 0.0
    note = f"compiled with the pad, d padded {D}->{Dp}, BlockMask prebuilt"
    if not equivalent:
        note = f"NOT equivalent: no dropout (p=0 instead of {case.dropout_p:g}); " + note
    return Built(fn, equivalent=equivalent, note=note, extra={"block_mask_build_us": build_us, "head_dim_padded": Dp})


def _build_reference(case: AttnCase, device, sample) -> Built:
    from dmd_fast.reference.attention import cross_modal_attention

    kw = dict(offset_causal=case.offset_causal, dropout_p=case.dropout_p)

    def fn(q, k, v):
        return cross_modal_attention(q, k, v, **kw)

    return Built(fn, note="dmd_fast.reference (oracle)")


ATTENTION_PROVIDERS = {
    "ours": ProviderSpec("ours", "dmd_fast Triton", _build_ours),
    "eager": ProviderSpec("eager", "eager MulT/DMD", _build_eager),
    "compiled": ProviderSpec("compiled", "eager + torch.compile", _build_compiled, compiled=True),
    "sdpa": ProviderSpec("sdpa", "SDPA + bool mask", _build_sdpa),
    "sdpa_flash_nomask": ProviderSpec(
        "sdpa_flash_nomask", "SDPA flash, no mask, bf16 (lower bound)", _build_sdpa_flash, cuda_only=True
    ),
    "flex": ProviderSpec("flex", "FlexAttention (no dropout)", _build_flex, compiled=True, cuda_only=True),
    "reference": ProviderSpec("reference", "dmd_fast reference", _build_reference),
}


# ------------------------------------------------------------------------------------------------
# graph-distillation providers
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GDCase:
    """One GD-unit problem: M modalities, batch B, logits (M, B, C), reprs (M, B, R), gd size G."""

    kind: str
    B: int
    R: int
    G: int
    repr_metric: str
    M: int = 3
    C: int = 1
    dtype: str = "fp32"

    @property
    def name(self) -> str:
        return f"{self.kind} M{self.M} B{self.B} R{self.R} g{self.G} {self.repr_metric} {self.dtype}"

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "M": self.M,
            "B": self.B,
            "C": self.C,
            "R": self.R,
            "G": self.G,
            "repr_metric": self.repr_metric,
            "dtype": self.dtype,
        }


def gd_prior(kind: str, device=None) -> torch.Tensor:
    """DMD's fixed prior softmax(logits / 0.25) for the homo or hetero unit (fp32)."""
    from dmd_fast.nn.graph_distill import HETERO_PRIOR_LOGITS, HOMO_PRIOR_LOGITS, prior_from_logits

    return prior_from_logits(HOMO_PRIOR_LOGITS if kind == "homo" else HETERO_PRIOR_LOGITS).to(device)


def make_gd_inputs(case: GDCase, device, n_sets: int = 3, seed: int = 0) -> list[tuple]:
    """Sets of (logits, reprs, w_logit, b_logit, w_repr, b_repr, w_edge, b_edge, prior)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dt = DTYPES[case.dtype]
    sets = []
    for _ in range(n_sets):

        def u(*shape, fan_in):
            bound = fan_in**-0.5
            return (torch.rand(*shape, generator=gen) * 2 - 1) * bound

        tensors = (
            torch.randn(case.M, case.B, case.C, generator=gen),
            torch.randn(case.M, case.B, case.R, generator=gen),
            u(case.G, case.C, fan_in=case.C),
            u(case.G, fan_in=case.C),
            u(case.G, case.R, fan_in=case.R),
            u(case.G, fan_in=case.R),
            u(1, 4 * case.G, fan_in=4 * case.G),
            u(1, fan_in=4 * case.G),
        )
        ts = tuple(t.to(device=device, dtype=dt).requires_grad_(True) for t in tensors)
        sets.append(ts + (gd_prior(case.kind, device).to(dt),))
    return sets


def _gd_kwargs(case: GDCase) -> dict:
    from dmd_fast.nn.graph_distill import HETERO_TOTAL_WEIGHTS, HOMO_TOTAL_WEIGHTS

    return dict(
        alpha=0.125,
        softmax_scope="joint",
        logit_metric="l1",
        repr_metric=case.repr_metric,
        w_losses=(1.0, 10.0),
        reg=10.0,
        total_weights=HOMO_TOTAL_WEIGHTS if case.kind == "homo" else HETERO_TOTAL_WEIGHTS,
    )


def _build_gd_ours(case: GDCase, device, sample) -> Built:
    from dmd_fast.ops.backend import interpreter_enabled

    if _is_cpu(device) and not interpreter_enabled():
        raise Unsupported("ours on the CPU needs the Triton interpreter: set TRITON_INTERPRET=1 (skipped)")
    try:
        from dmd_fast.ops.graph_distill import graph_distill
    except ImportError as exc:
        raise Unsupported(f"dmd_fast.ops.graph_distill not importable yet ({exc})") from exc
    kw = dict(_gd_kwargs(case), backend="triton")
    params = inspect.signature(graph_distill).parameters
    checks_off = [n for n in ("check_finite", "check_prior") if n in params]
    kw.update({n: False for n in checks_off})

    def fn(*inputs):
        return graph_distill(*inputs, **kw)

    note = "fused Triton kernel"
    if checks_off:
        note += f" ({', '.join(checks_off)}=False: host-syncing input checks off)"
    return Built(fn, note=note)


def _build_gd_eager(case: GDCase, device, sample) -> Built:
    from dmd_fast.reference.graph_distill import graph_distill

    kw = _gd_kwargs(case)

    def fn(*inputs):
        return graph_distill(*inputs, **kw)

    return Built(fn, note="dmd_fast.reference (upstream semantics, eager)")


def _build_gd_compiled(case: GDCase, device, sample) -> Built:
    from dmd_fast.reference.graph_distill import graph_distill

    kw = _gd_kwargs(case)

    def fn(*inputs):
        return graph_distill(*inputs, **kw)

    return Built(torch.compile(fn, dynamic=False), note="reference under torch.compile")


GD_PROVIDERS = {
    "ours": ProviderSpec("ours", "dmd_fast Triton", _build_gd_ours),
    "eager": ProviderSpec("eager", "eager reference", _build_gd_eager),
    "compiled": ProviderSpec("compiled", "reference + torch.compile", _build_gd_compiled, compiled=True),
}


def gd_losses(result) -> list:
    """What the backward starts from: the unit's total (DMD's homo: logit + reg; hetero: all three terms)."""
    return [result.loss_total]


# ------------------------------------------------------------------------------------------------
# kernel launch counting
# ------------------------------------------------------------------------------------------------


def count_kernel_launches(fn: Callable, *args) -> dict:
    """Device kernels and memcpy/memset events of one ``fn(*args)``, from ``torch.profiler`` (CUDA).

    ``fn`` must already be warm (compiled, autotuned).
    """
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = fn(*args)
        torch.cuda.synchronize()
    del out
    kernels, memops, names = 0, 0, {}
    cuda_type = torch.autograd.DeviceType.CUDA
    for evt in prof.events():
        if getattr(evt, "device_type", None) != cuda_type:
            continue
        name = evt.name
        if "memcpy" in name.lower() or "memset" in name.lower():
            memops += 1
        else:
            kernels += 1
            short = name if len(name) <= 60 else name[:57] + "..."
            names[short] = names.get(short, 0) + 1
    top = sorted(names.items(), key=lambda kv: -kv[1])[:12]
    return {"kernels": kernels, "memcpy_memset": memops, "kernel_names": dict(top)}
