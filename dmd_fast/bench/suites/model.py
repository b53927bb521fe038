"""The model suite: one DMD training step (precomputed text features, MOSI unaligned, B=16, every
dropout of the preset; forward, backward, ``clip_grad_value_``, Adam step) and one hetero-branch
step (the six cross-modal and three memory encoders, forward+backward on s features (T', B, d)),
as samples/s, peak memory and kernels per call."""

from __future__ import annotations

import torch

from dmd_fast.bench import baselines as bl
from dmd_fast.bench.memory import MiB, peak_extra_memory
from dmd_fast.bench.suites.runner import (
    COMPILED_ON_CPU,
    Budget,
    Recorder,
    SuiteOptions,
    measure,
    need_seconds,
    run_item,
)
from dmd_fast.bench.timing import time_fn

MODEL_PROVIDERS = ("eager", "compiled", "ours", "cudagraph")
LABELS = {
    "eager": "reference eager",
    "compiled": "reference + torch.compile",
    "ours": "dmd_fast Triton",
    "cudagraph": "dmd_fast Triton + CUDA graph",
}


def _model_config(quick: bool):
    from dmd_fast.model.config import get_preset

    return get_preset("tiny" if quick else "mosi-unaligned"), (4 if quick else 16)


class HeteroBranch(torch.nn.Module):
    """DMD's six cross-modal encoders and three memory encoders on s features (T', B, d), through the
    model's own ``hetero_branch`` (grouped launches on the Triton backend, one by one on the reference)."""

    def __init__(self, dmd):
        super().__init__()
        self.dmd = dmd

    def forward(self, s_l, s_a, s_v):
        h = self.dmd.hetero_branch({"l": s_l, "a": s_a, "v": s_v})
        return h["l"], h["a"], h["v"]


def _backend_for(pname: str, device) -> str:
    from dmd_fast.ops.backend import interpreter_enabled

    if pname in ("ours", "cudagraph"):
        if device.type == "cpu" and not interpreter_enabled():
            raise bl.Unsupported("ours on the CPU needs the Triton interpreter: set TRITON_INTERPRET=1 (skipped)")
        return "triton"
    return "reference"


def _build_model_step(pname: str, device, quick: bool):
    """(step fn, arg sets, samples per call, note) for one DMD training step."""
    try:
        from dmd_fast.model.system import DMDSystem
    except ImportError as exc:
        raise bl.Unsupported(f"dmd_fast.model.system not importable yet ({exc})") from exc
    cfg, B = _model_config(quick)
    backend = _backend_for(pname, device)
    torch.manual_seed(0)
    system = DMDSystem(cfg, backend=backend).to(device).train()
    opt = torch.optim.Adam(system.parameters(), lr=cfg.learning_rate, capturable=(pname == "cudagraph"))
    model = torch.compile(system) if pname == "compiled" else system
    params = [p for p in system.parameters() if p.requires_grad]
    clip = cfg.grad_clip

    def step(text, audio, vision, labels):
        opt.zero_grad(set_to_none=True)
        _, losses = model(text, audio, vision, labels)
        losses["total"].backward()
        if clip != -1.0:
            torch.nn.utils.clip_grad_value_(params, clip)
        opt.step()
        return losses["total"].detach()

    (Tl, Ta, Tv), (dl, da, dv) = cfg.seq_lens, cfg.feature_dims
    gen = torch.Generator(device="cpu").manual_seed(1)
    sets = []
    for _ in range(2):
        sets.append(
            (
                torch.randn(B, Tl, dl, generator=gen).to(device),
                torch.randn(B, Ta, da, generator=gen).to(device),
                torch.randn(B, Tv, dv, generator=gen).to(device),
                (torch.rand(B, generator=gen) * 6 - 3).to(device),
            )
        )
    note = (
        f"preset {cfg.name}, B={B}, backend={backend}; step = fwd + losses + bwd + clip_grad_value_ + Adam "
        f"(upstream steps Adam every {cfg.update_epochs} batches)"
    )
    return step, sets, B, note


def _build_hetero_step(pname: str, device, quick: bool):
    """(fwd+bwd fn, arg sets, samples per call, note) for the hetero branch."""
    from dmd_fast.model.dmd import DMD

    cfg, B = _model_config(quick)
    backend = _backend_for(pname, device)
    torch.manual_seed(0)
    branch = HeteroBranch(DMD(cfg, backend=backend)).to(device).train()
    model = torch.compile(branch) if pname == "compiled" else branch
    params = [
        p
        for n, p in branch.named_parameters()
        if p.requires_grad and n.startswith(("dmd.trans_l_", "dmd.trans_a_", "dmd.trans_v_"))
    ]
    tl_, ta_, tv_ = cfg.conv_out_lens
    d = cfg.d_model
    gen = torch.Generator(device="cpu").manual_seed(2)

    def rnd(*shape, grad=False):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_(grad)

    sets = []
    for _ in range(2):
        s = (rnd(tl_, B, d, grad=True), rnd(ta_, B, d, grad=True), rnd(tv_, B, d, grad=True))
        g = (rnd(tl_, B, 2 * d), rnd(ta_, B, 2 * d), rnd(tv_, B, 2 * d))
        sets.append(s + g)

    def fwdbwd(s_l, s_a, s_v, g_l, g_a, g_v):
        outs = model(s_l, s_a, s_v)
        return torch.autograd.grad(outs, params + [s_l, s_a, s_v], (g_l, g_a, g_v), allow_unused=True)

    note = f"preset {cfg.name}, B={B}, T'=(l {tl_}, a {ta_}, v {tv_}), d={d}, backend={backend}"
    return fwdbwd, sets, B, note


def run_model_item(rec: Recorder, opts: SuiteOptions, device, what: str, pname: str, budget: Budget):
    cuda = device.type == "cuda"
    base = {
        "suite": "model",
        "case": "DMD train step" if what == "step" else "hetero branch fwd+bwd",
        "provider": pname,
        "label": LABELS[pname],
        "equivalent": True,
    }
    refuse = None
    if pname == "cudagraph" and not cuda:
        refuse = "CUDA graphs need CUDA"
    elif pname == "compiled" and not cuda and opts.providers is None:
        refuse = COMPILED_ON_CPU
    elif pname == "ours" and not cuda and opts.providers is None:
        refuse = (
            "model-level ours on the CPU runs every kernel in the Triton interpreter (~20-35 s per step); "
            "name 'ours' in --backend-list to run it anyway"
        )

    def build():
        builder = _build_model_step if what == "step" else _build_hetero_step
        return builder(pname, device, opts.quick)

    def measure_into(built, row):
        fn, sets, samples, note = built
        row["note"] = note
        graph = pname == "cudagraph"
        tkw = dict(device=device, warmup_ms=opts.warmup_ms * 4, rep_ms=opts.rep_ms * 5, min_reps=5 if cuda else 1)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_mb = torch.cuda.memory_allocated() / MiB
        m = measure(lambda: time_fn(fn, sets, graph=graph, **tkw))
        if graph and m["status"] != "ok":
            m["reason"] = m.get("reason", "") + " (the whole step must be capturable: no host syncs, no CPU tensors)"
        row["modes"]["step"] = m
        row["reason"] = m.get("reason")
        if m["status"] != "ok":
            return
        row["samples_per_s"] = samples / (m["median_us"] * 1e-6)
        row["step_ms"] = m["median_us"] / 1e3
        if cuda and graph:  # warm-up steps + capture: the graph's private pool included
            torch.cuda.synchronize()
            row["memory"]["step"] = round(torch.cuda.max_memory_allocated() / MiB - base_mb, 3)
            row["extra"]["memory_note"] = "peak during warm-up and capture (graph pool included)"
        elif cuda:
            row["memory"]["step"] = measure(lambda: peak_extra_memory(fn, *sets[0], device=device)).get("peak_extra_mb")
            # device kernels per call, from the profiler (warm: the timing above compiled everything)
            row["extra"]["kernels_per_call"] = measure(lambda: bl.count_kernel_launches(fn, *sets[0]))

    kind = pname if pname in ("compiled", "cudagraph") else "plain"
    run_item(
        rec,
        device,
        base,
        need_s=need_seconds("model", kind, cuda),
        budget=budget,
        refuse=refuse,
        build=build,
        measure_into=measure_into,
    )
