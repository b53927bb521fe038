"""One pattern for every op: a ``torch.library`` custom op and its eager autograd twin, sharing code.

:func:`define_op` registers ``body`` as the custom op ``dmd_fast::NAME`` (with its fake kernel and,
when given, its ``setup_context`` / ``backward``), and builds an ``autograd.Function`` that runs the
same body, setup and backward without torch.library's dispatch cost. :meth:`DefinedOp.__call__`
picks the custom op while torch.compile traces (the graph stays whole) and the twin otherwise.

The twin does not materialise gradients of unused outputs: a backward gets None for them.
Inside a backward, call other ops through :meth:`DefinedOp.inner`: the twin marks its ``ctx`` as
eager, so the body runs directly there, and the custom op is used while compiling.

List-of-tensor arguments (grouped ops) reach the twin flattened, so autograd sees every tensor;
the twin rebuilds the lists, and flattens the backward's per-argument gradients back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class DefinedOp:
    """A custom op (``.op``), its plain body (``.body``) and its eager autograd twin."""

    def __init__(self, op, body: Callable, eager: type | None):
        self.op, self.body, self._eager = op, body, eager

    def __call__(self, *args):
        if self._eager is None or torch.compiler.is_compiling():
            return self.op(*args)
        spec, flat = _flatten(args)
        out = self._eager.apply(spec, *flat)
        return list(out) if self._eager.list_output else out

    def inner(self, ctx, *args):
        """Call from another op's backward: the body when that op ran eagerly, else the custom op."""
        return self.body(*args) if getattr(ctx, "eager", False) else self.op(*args)


def _flatten(args) -> tuple[tuple[int, ...], list]:
    """Arguments as a flat list; spec[i] = the length of argument i if it was a list, else -1."""
    spec, flat = [], []
    for a in args:
        if isinstance(a, list):
            spec.append(len(a))
            flat.extend(a)
        else:
            spec.append(-1)
            flat.append(a)
    return tuple(spec), flat


def _unflatten(spec, flat) -> list:
    out, i = [], 0
    for n in spec:
        if n < 0:
            out.append(flat[i])
            i += 1
        else:
            out.append(list(flat[i : i + n]))
            i += n
    return out


def _eager_twin(name: str, body, setup_context, backward, list_output: bool) -> type:
    def forward(ctx, spec, *flat):
        inputs = _unflatten(spec, flat)
        output = body(*inputs)
        ctx.eager, ctx.spec = True, spec
        # outputs without a gradient (a log-sum-exp, edge means) arrive as None, not as a zeros kernel each
        ctx.set_materialize_grads(False)
        setup_context(ctx, inputs, output)
        return tuple(output)

    def backward_flat(ctx, *grads):
        grads_in = backward(ctx, list(grads)) if list_output else backward(ctx, *grads)
        flat = [None]  # the spec argument
        for n, g in zip(ctx.spec, grads_in):
            if n < 0:
                flat.append(g)
            else:
                flat.extend([None] * n if g is None else g)
        return tuple(flat)

    twin = type(
        f"Eager_{name}",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(forward),
            "backward": staticmethod(backward_flat),
            "list_output": list_output,
            "__doc__": f"Eager autograd twin of dmd_fast::{name} (same body, setup and backward).",
        },
    )
    return twin


def define_op(
    name: str,
    body: Callable,
    *,
    fake: Callable,
    setup_context: Callable | None = None,
    backward: Callable | None = None,
    list_output: bool = False,
) -> DefinedOp:
    """Register ``body`` as ``dmd_fast::name`` and build its eager twin (only with a ``backward``).

    ``body`` is annotated as torch.library requires; ``setup_context(ctx, inputs, output)`` and
    ``backward(ctx, *grads)`` follow ``torch.library.register_autograd`` (``backward`` returns one
    gradient per op argument; a list argument gets a list or None). ``list_output``: the op returns a
    list of tensors (its backward then receives one list of gradients).
    """
    op = torch.library.custom_op(f"dmd_fast::{name}", mutates_args=())(body)
    op.register_fake(fake)
    eager = None
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
        eager = _eager_twin(name, body, setup_context, backward, list_output)
    return DefinedOp(op, body, eager)
