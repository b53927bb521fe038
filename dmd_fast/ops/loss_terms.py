"""Fused loss-terms op: many mean-reduced loss terms, their group sums and a weighted total in 3 launches.

``loss_terms`` has the meaning of ``dmd_fast.reference.loss_terms`` (l1, mse, the clamped cosine over a
middle axis, and one-element values computed elsewhere). The Triton path (``dmd_fast.kernels.loss_terms``)
is two forward launches (block partial sums, then one deterministic reduction that also forms the group
sums and the total) and one backward launch that writes every input's gradient into one buffer. It is
registered as ``dmd_fast::loss_terms_fwd`` / ``dmd_fast::loss_terms_bwd`` with fake kernels and
autograd, so ``torch.compile(fullgraph=True)`` traces through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dmd_fast import validation as check
from dmd_fast.ops.backend import resolve_backend
from dmd_fast.ops.registration import define_op
from dmd_fast.reference.loss_terms import loss_terms as reference

OP = "loss_terms"
KINDS = ("l1", "mse", "cosine", "value")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_VALUE = KINDS.index("value")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _b_list(kinds, b_s) -> list:
    """The b of each term from the packed list (value terms have none)."""
    it = iter(b_s)
    return [None if k == _VALUE else next(it) for k in kinds]


def _fwd(
    a_s: list[Tensor],
    b_s: list[Tensor],
    kinds: list[int],
    groups: list[int],
    weights: list[float],
    n_groups: int,
    eps: float,
) -> list[Tensor]:
    """[values (n + n_groups,), total ()]; a_s (D0, D1, D2) each, b_s: the b of each non-value term."""
    from dmd_fast.kernels.loss_terms import loss_terms_fwd as launch

    return list(launch(kinds, a_s, _b_list(kinds, b_s), groups, weights, n_groups, eps))


def _fwd_fake(a_s, b_s, kinds, groups, weights, n_groups, eps):
    acc = _acc(a_s[0].dtype)
    return [a_s[0].new_empty((len(kinds) + n_groups,), dtype=acc), a_s[0].new_empty((), dtype=acc)]


def _fwd_setup(ctx, inputs, output):
    a_s, b_s, ctx.kinds, ctx.groups, ctx.weights, _, ctx.eps = inputs
    ctx.n = len(a_s)
    ctx.needs = ([a.requires_grad for a in a_s], [b.requires_grad for b in b_s])
    ctx.save_for_backward(*a_s, *b_s)


def _fwd_backward(ctx, grads):
    g_values, g_total = grads
    saved = list(ctx.saved_tensors)
    a_s, b_s = saved[: ctx.n], saved[ctx.n :]
    need_a, need_b = ctx.needs
    args = (a_s, b_s, ctx.kinds, ctx.groups, ctx.weights, need_a, need_b, g_values, g_total, ctx.eps)
    flat = iter(bwd_op.inner(ctx, *args))
    da = [next(flat) if n else None for n in need_a]
    db = [next(flat) if n else None for n in need_b]
    return da, db, None, None, None, None, None


def _bwd(
    a_s: list[Tensor],
    b_s: list[Tensor],
    kinds: list[int],
    groups: list[int],
    weights: list[float],
    need_a: list[bool],
    need_b: list[bool],
    g_values: Tensor | None,
    g_total: Tensor | None,
    eps: float,
) -> list[Tensor]:
    """One launch: the needed gradients in order (every needed da, then every needed db)."""
    from dmd_fast.kernels.loss_terms import loss_terms_bwd as launch

    it = iter(need_b)
    needs = [(na, False if k == _VALUE else next(it)) for k, na in zip(kinds, need_a)]
    grads = launch(kinds, a_s, _b_list(kinds, b_s), groups, weights, needs, g_values, g_total, eps)
    return [da for da, _ in grads if da is not None] + [db for _, db in grads if db is not None]


def _bwd_fake(a_s, b_s, kinds, groups, weights, need_a, need_b, g_values, g_total, eps):
    return [a.new_empty(a.shape) for a, n in zip(a_s, need_a) if n] + [
        b.new_empty(b.shape) for b, n in zip(b_s, need_b) if n
    ]


# registered as dmd_fast::loss_terms_fwd, dmd_fast::loss_terms_bwd
bwd_op = define_op("loss_terms_bwd", _bwd, fake=_bwd_fake)
fwd_op = define_op(
    "loss_terms_fwd", _fwd, fake=_fwd_fake, setup_context=_fwd_setup, backward=_fwd_backward, list_output=True
)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _fail(cls, msg):
    raise cls(f"{OP}: {msg}")


def _as_3d(t: Tensor) -> Tensor:
    """t as (D0, D1, D2): leading ones for fewer dims (views), leading dims merged for more."""
    if t.dim() > 3:
        return t.reshape(-1, *t.shape[-2:])
    return t.reshape((1,) * (3 - t.dim()) + tuple(t.shape))


def _check_term(i: int, term, like: Tensor | None):
    if not isinstance(term, (tuple, list)) or len(term) != 3:
        _fail(TypeError, f"terms[{i}]: expected a (kind, a, b) triple, got {type(term).__name__}")
    kind, a, b = term
    if kind not in KINDS:
        _fail(ValueError, f"terms[{i}]: kind: expected one of {KINDS}, got {kind!r}")
    for name, t in (("a", a), ("b", b)):
        if name == "b" and kind == "value":
            if t is not None:
                _fail(ValueError, f"terms[{i}]: b: a 'value' term takes b=None, got {type(t).__name__}")
            continue
        if not isinstance(t, Tensor):
            _fail(TypeError, f"terms[{i}]: {name}: expected a torch.Tensor, got {type(t).__name__}")
        ref = like if like is not None else a
        if t.dtype not in _DTYPES or t.dtype != ref.dtype or t.device != ref.device:
            _fail(TypeError, f"terms[{i}]: {name}: expected a floating tensor in {_DTYPES} like terms[0]'s a "
                  f"({ref.dtype} on {ref.device}), got {t.dtype} on {t.device}")  # fmt: skip
    if kind == "value":
        if a.numel() != 1:
            _fail(ValueError, f"terms[{i}]: a: a 'value' term takes a one-element tensor, got shape {tuple(a.shape)}")
        return
    if a.shape != b.shape:
        _fail(ValueError, f"terms[{i}]: b: expected a's shape {tuple(a.shape)}, got {tuple(b.shape)}")
    if a.numel() == 0:
        _fail(ValueError, f"terms[{i}]: a: expected at least one element (a mean), got shape {tuple(a.shape)}")
    if kind == "cosine" and a.dim() != 3:
        _fail(ValueError, f"terms[{i}]: a: a 'cosine' term takes (D0, D1, D2) tensors (cosine over dim 1), got "
              f"shape {tuple(a.shape)}")  # fmt: skip


def _validate(terms, weights, groups, n_groups, eps):
    if not isinstance(terms, Sequence) or isinstance(terms, (str, Tensor)) or not terms:
        _fail(TypeError, f"terms: expected a non-empty list of (kind, a, b), got {type(terms).__name__}")
    terms = list(terms)
    for i, term in enumerate(terms):
        _check_term(i, term, terms[0][1] if i else None)
    n = len(terms)
    weights = check.reals(weights, "weights", n, "term weights")
    n_groups = check.integer(n_groups, "n_groups", low=0)
    groups = [-1] * n if groups is None else groups
    if not isinstance(groups, (tuple, list)) or len(groups) != n:
        _fail(ValueError, f"groups: expected {n} group indices (one per term), got {groups!r}")
    groups = [check.integer(g, f"groups[{i}]", low=-1) for i, g in enumerate(groups)]
    bad = [g for g in groups if g >= n_groups]
    if bad:
        _fail(ValueError, f"groups: expected indices in [-1, {n_groups}) (n_groups={n_groups}), got {bad[0]}")
    eps = check.real(eps, "eps", low=0.0)
    return terms, list(weights), groups, n_groups, eps


# ----------------------------------------------------------------------------------------------
# functional API
# ----------------------------------------------------------------------------------------------


def loss_terms(
    terms: Sequence[tuple[str, Tensor, Tensor | None]],
    *,
    weights: Sequence[float],
    groups: Sequence[int] | None = None,
    n_groups: int = 0,
    eps: float = 1e-12,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """n mean-reduced loss terms, the sums of groups of them and their weighted total, fused.

    Args:
        terms: n (kind, a, b): kind "l1" | "mse" (a, b of one shape, any strides), "cosine" (a, b
            (D0, D1, D2): the clamped cosine over dim 1, meaned over (D0, D2)) or "value" (a one-element
            tensor, b None). All tensors of one floating dtype, on one device.
        weights: n floats (the total's weights); groups: n indices in [-1, n_groups) (−1: no group).
        eps: the cosine's epsilon (added to each squared norm). backend: "auto" | "triton" | "reference".
    Returns:
        (values (n + n_groups,), total ()): each term's value, then each group's sum; total = Σ w_t v_t.
        fp32 (fp64 for fp64 inputs). Gradients reach every input that requires them.
    """
    terms, weights, groups, n_groups, eps = _validate(terms, weights, groups, n_groups, eps)
    a0 = terms[0][1]
    if resolve_backend(backend, a0.device, OP) == "reference":
        return reference(terms, weights, groups, n_groups, eps)
    if a0.device.type == "cpu":
        check.interpreter_dtype(a0.dtype, "terms[0]: a", OP)
    kinds = [KINDS.index(k) for k, _, _ in terms]
    a_s = [_as_3d(a) for _, a, _ in terms]
    b_s = [_as_3d(b) for _, _, b in terms if b is not None]
    values, total = fwd_op(a_s, b_s, kinds, groups, weights, n_groups, eps)
    return values, total
