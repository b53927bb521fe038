"""Fused LN0 + q/k/v in-projection: Triton kernels (interpreter on CPU) and op vs the float64 reference.

CPU tier: float64 parity of outputs and every gradient for E in {30, 50, 60, 100}, Tq != Tk both ways,
self-attention and cross-modal problems mixed in one group, strided inputs, missing output gradients,
gradcheck, launch counts, determinism, fp32 tolerance, input errors.
"""

import pytest
import torch

from dmd_fast.kernels import encoder_in_proj as kp
from dmd_fast.reference.encoder_in_proj import encoder_in_projection as reference

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy >= 1.25 in Triton's interpreter
EMBED_DIMS = (30, 50, 60, 100)


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every kernel output starts as NaN: unwritten elements show up."""
    empty = kp._empty
    monkeypatch.setattr(kp, "_empty", lambda shape, dtype, device: empty(shape, dtype, device).fill_(float("nan")))


def make_problem(E, Tq, Tk, B, seed, dtype=torch.float64, device=DEV, strided=False):
    """Fresh random (x, source or None, ln_w, ln_b, in_w, in_b); Tk None → self-attention.
    ``strided``: x and the source are (T, B, E) views of (B, T, E) tensors."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731

    def seq(T):
        t = rnd(B, T, E).transpose(0, 1) if strided else rnd(T, B, E)
        return t * 2 + 0.5

    x = seq(Tq)
    s = None if Tk is None else seq(Tk)
    ts = (x, s, 1 + 0.3 * rnd(E), 0.3 * rnd(E), rnd(3 * E, E) / E**0.5, 0.3 * rnd(3 * E))
    return tuple(None if t is None else t.to(device=device, dtype=dtype) for t in ts)


def group(problems):
    """Lists (xs, sources, ln_ws, ln_bs, in_ws, in_bs) of a group of problems."""
    return [list(col) for col in zip(*problems)]


# (Tq, Tk) per problem: cross with Tq < Tk and Tq > Tk, and self-attention (Tk None)
MIXED = ((5, 9, 3), (7, None, 2), (11, 4, 3), (3, None, 1))


def mixed_group(E, seed, **kw):
    return [make_problem(E, Tq, Tk, B, seed + i, **kw) for i, (Tq, Tk, B) in enumerate(MIXED)]


# ------------------------------------------------------------------------------------------------
# kernels: forward
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("E", EMBED_DIMS)
def test_forward_single_problem(E):
    for Tk in (None, 9):
        p = make_problem(E, 6, Tk, 2, seed=E)
        qs, ks, vs, stats = kp.in_proj_fwd_grouped(*group([p]))
        for name, ours, ref in zip("qkv", (qs[0], ks[0], vs[0]), reference(*p)):
            assert ours.is_contiguous() and ours.shape == ref.shape
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12, msg=f"{name}, Tk={Tk}")
        x = p[0]
        mean = x.mean(-1).reshape(-1)
        torch.testing.assert_close(stats[: mean.numel(), 0], mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("E", EMBED_DIMS)
def test_forward_grouped_mixed(E):
    problems = mixed_group(E, seed=10 * E, strided=E == 50)
    qs, ks, vs, _ = kp.in_proj_fwd_grouped(*group(problems))
    for g, p in enumerate(problems):
        for name, ours, ref in zip("qkv", (qs[g], ks[g], vs[g]), reference(*p)):
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12, msg=f"problem {g} {name}")
