"""train.grad_sum: one multi-tensor add into the running gradients, bitwise equal to loss.backward()."""

import collections

import torch

from dmd_fast.bench.launches import count_launches
from dmd_fast.model.config import get_preset
from dmd_fast.model.system import DMDSystem
from dmd_fast.train.grad_sum import backward_into_grads


def _batch(cfg, seed):
    (tl, ta, tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    g = torch.Generator().manual_seed(seed)
    shapes = ((3, tl, dl), (3, ta, da), (3, tv, dv), (3, 1))
    return [torch.randn(*s, generator=g) for s in shapes]  # text, audio, vision, labels


def _system():
    torch.manual_seed(0)
    return DMDSystem(get_preset("tiny"), backend="reference").train()


def _window(system, accumulate, batches=2):
    """A fresh window of ``batches`` mini-batches (same dropout draws for every caller)."""
    torch.manual_seed(1)
    params = list(system.parameters())
    for i in range(batches):
        _, losses = system(*_batch(system.config, i))
        accumulate(losses["total"], params)
        torch.nn.utils.clip_grad_value_(params, system.config.grad_clip)
    return {n: None if p.grad is None else p.grad.clone() for n, p in system.named_parameters()}


def test_equals_backward_bitwise_over_a_window():
    a, b = _system(), _system()
    want = _window(a, lambda loss, _params: loss.backward())
    got = _window(b, backward_into_grads)
    assert want.keys() == got.keys()
    for name in want:
        if want[name] is None:  # a parameter no loss reaches keeps no gradient, as with backward
            assert got[name] is None, name
        else:
            assert torch.equal(want[name], got[name]), name
    assert any(g is None for g in want.values()), "expected upstream's unused proj_cosine parameters"


def test_one_multi_tensor_add_replaces_every_per_parameter_add():
    def counts(accumulate):
        system = _system()
        _window(system, accumulate, batches=1)  # gradients exist: the next backward accumulates
        _, losses = system(*_batch(system.config, 5))
        with count_launches() as c:
            accumulate(losses["total"], list(system.parameters()))
        with_grad = sum(p.grad is not None for p in system.parameters())
        return collections.Counter(c.aten_ops), with_grad

    eager, n = counts(lambda loss, _params: loss.backward())
    fused, _ = counts(backward_into_grads)
    assert fused["aten._foreach_add_.List"] == 1
    assert eager["aten._foreach_add_.List"] == 0
    assert eager["aten.add_.Tensor"] - fused["aten.add_.Tensor"] == n  # no per-parameter add_ is left
    assert sum(eager.values()) - sum(fused.values()) == n - 1


def test_parameters_that_do_not_require_grad_are_left_alone():
    w = torch.ones(2, requires_grad=True)
    frozen = torch.ones(2)
    loss = (w * 3).sum()
    backward_into_grads(loss, [w, frozen])
    assert torch.equal(w.grad, torch.full((2,), 3.0)) and frozen.grad is None
