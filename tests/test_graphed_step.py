"""Whole-step CUDA-graph training (dmd_fast.train.graphed_step).

CPU tier: the trainer's graph plumbing (static inputs refreshed each call, outputs cloned before the
next replay, warm-up, eager fallback for the short last batch, in-place gradient accumulation)
through an engine that replays by re-running the captured function; the result must equal the
eager trainer bit for bit. GPU tier: a real CUDA graph against the eager trainer.
"""

import pytest
import torch

from dmd_fast.data.mmsa import make_loaders
from dmd_fast.data.synthetic import synthetic_datasets
from dmd_fast.model.config import get_preset
from dmd_fast.model.system import DMDSystem
from dmd_fast.train.graphed_step import CaptureError, GraphedTrainStep
from dmd_fast.train.trainer import Trainer, TrainOptions

CFG = get_preset("tiny").replace(batch_size=8, update_epochs=2)
NO_DROPOUT = dict(
    attn_dropout=0.0,
    attn_dropout_a=0.0,
    attn_dropout_v=0.0,
    embed_dropout=0.0,
    text_dropout=0.0,
    output_dropout=0.0,
    relu_dropout=0.0,
    res_dropout=0.0,
)


class RerunEngine:
    """Capture records the function and undoes its one run (gradients, RNG); replay re-runs it on
    the static inputs and writes the static outputs in place, as a CUDA graph replay would."""

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]
        self.replays = 0

    def warmup(self, fn, *args):
        return fn(*args)

    def capture(self, fn, *args):
        self.fn, self.args = fn, args
        saved = [None if p.grad is None else p.grad.clone() for p in self.params]
        rng = torch.get_rng_state()
        out = fn(*args)
        for p, g in zip(self.params, saved):
            if g is not None:
                p.grad.copy_(g)
        torch.set_rng_state(rng)
        self.static = out
        return out

    def replay(self):
        self.replays += 1
        for k, v in self.fn(*self.args).items():
            self.static[k].copy_(v)


def _trainer(
    tmp,
    cfg=CFG,
    n=(44, 8, 8),
    epochs=2,
    device="cpu",
    cuda_graph=False,
    engine_cls=None,
    backend="reference",
    **options,
):
    torch.manual_seed(5)
    loaders = make_loaders(synthetic_datasets(cfg, *n, seed=5), batch_size=cfg.batch_size, seed=5)
    system = DMDSystem(cfg, backend=backend)
    engine = engine_cls(system.parameters()) if engine_cls else None
    tr = Trainer(
        system,
        loaders,
        TrainOptions(
            max_epochs=epochs, out_dir=str(tmp), device=device, log_every_epoch=False, cuda_graph=cuda_graph, **options
        ),
        graph_engine=engine,
    )
    return tr, engine


def test_graphed_trainer_equals_eager_bitwise(tmp_path):
    eager, _ = _trainer(tmp_path / "eager")
    eager.fit()
    graphed, engine = _trainer(tmp_path / "graph", cuda_graph=True, engine_cls=RerunEngine)
    step = graphed._step
    graphed.fit()
    assert isinstance(step, GraphedTrainStep) and step.captured
    # 44 samples / 8 → 5 full batches + 1 short per epoch; 3 warm-ups, then replays; short ones eager
    assert step.calls == {"warmup": 3, "replay": 7, "eager": 2} and engine.replays == 7
    for k, v in eager.system.state_dict().items():
        assert torch.equal(graphed.system.state_dict()[k], v), k
    for he, hg in zip(eager.history, graphed.history):
        he["train"].pop("samples_per_s"), hg["train"].pop("samples_per_s")
        assert he["train"] == hg["train"] and he["valid"] == hg["valid"] and he["edges"] == hg["edges"]


def test_graph_options_refused_cleanly(tmp_path):
    with pytest.raises(ValueError, match="cuda_graph: whole-step capture needs a CUDA device, got cpu"):
        _trainer(tmp_path, cuda_graph=True)
    torch.manual_seed(0)
    system = DMDSystem(CFG, backend="reference")
    loaders = make_loaders(synthetic_datasets(CFG, 8, 8, 8, seed=0), batch_size=8, seed=0)
    with pytest.raises(ValueError, match="not supported together with --compile"):
        Trainer(system, loaders, TrainOptions(device="cpu", cuda_graph=True, compile=True, out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedTrainStep(lambda: {}, [], "cpu", warmup=0, engine=object())


def test_gradient_reallocation_during_capture_is_caught():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.zeros(3)

    class Reallocates(RerunEngine):
        def capture(self, fn, *args):
            p.grad = torch.zeros(3)  # what an out-of-place accumulation would do
            return {}

    step = GraphedTrainStep(lambda x: {"y": x}, [p], "cpu", warmup=1, engine=Reallocates([p]))
    step(torch.ones(2))
    with pytest.raises(CaptureError, match="re-allocated during capture"):
        step(torch.ones(2))


@pytest.mark.gpu
def test_gpu_cuda_graph_trainer_matches_eager(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = get_preset("mosi-unaligned").replace(batch_size=16, **NO_DROPOUT)
    n = (16 * 6 + 5, 16, 16)
    for backend in ("reference", "triton"):
        eager, _ = _trainer(tmp_path / f"eager_{backend}", cfg, n, epochs=1, device="cuda", backend=backend)
        eager.fit()
        graphed, _ = _trainer(
            tmp_path / f"graph_{backend}", cfg, n, epochs=1, device="cuda", cuda_graph=True, backend=backend
        )
        graphed.fit()
        assert graphed._step.captured and graphed._step.calls["replay"] == 3
        for k, v in eager.system.state_dict().items():
            torch.testing.assert_close(
                graphed.system.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{backend} {k}: {m}"
            )


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_gpu_cuda_graph_with_autocast_and_dropout(tmp_path, amp):
    """Graph replay with autocast (fp16: the loss scaler's device tensors inside the graph) and
    dropout (in-kernel Philox and torch's generator, fresh bits per replay): trains, stays finite."""
    cfg = get_preset("mosi-unaligned").replace(batch_size=16)
    tr, _ = _trainer(
        tmp_path, cfg, (16 * 8, 16, 16), epochs=2, device="cuda", cuda_graph=True, backend="triton", amp=amp
    )
    tr.fit()
    assert tr._step.captured and tr._step.calls["replay"] == 2 * 8 - 3
    losses = [h["train"]["Loss"] for h in tr.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0] * 1.5


@pytest.mark.gpu
def test_gpu_replays_draw_fresh_dropout():
    """Each replay draws new dropout bits (the kernels' seed and torch's dropout both come from the
    graph-safe default generator), as eager calls do."""
    from dmd_fast.ops.attention import cross_modal_attention

    gen = torch.Generator(device="cuda").manual_seed(0)
    k, v = (torch.randn(2, 2, 16, 5, device="cuda", generator=gen) for _ in range(2))

    def fn(q):
        o = cross_modal_attention(q, k, v, dropout_p=0.5, backend="triton")
        return {"attn": o.detach(), "torch": torch.nn.functional.dropout(q, 0.5).detach()}

    step = GraphedTrainStep(fn, [], "cuda", warmup=1)
    q = torch.randn(2, 2, 8, 5, device="cuda", generator=gen)
    step(q)
    first = {n: t.clone() for n, t in step(q).items()}
    second = step(q)
    assert step.captured and step.calls["replay"] == 2
    for name in ("attn", "torch"):
        assert not torch.equal(first[name], second[name]), name
