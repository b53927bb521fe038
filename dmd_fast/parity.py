"""Parity against vectors produced by the real upstream DMD (``docs/fixture-format.md`` format).

Checks, in order: state_dict layout (names and order), a strict load (upstream's 24 encoder
buffers included), eval-mode forward outputs, every loss term and every stored gradient of the
total (train mode, all dropouts 0; gradient statistics where only those are stored). Gradients
are judged against a floor that scales with their group's gradient magnitude (``GROUP_NOISE_ULPS``).
The model runs with ``margin_no_anchor="upstream"``: a batch without a margin anchor leaves
``align_c_*`` without a gradient, as upstream (listed under the fixture's ``grads_none``).
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field

import torch

from dmd_fast import validation as check
from dmd_fast.model.config import config_from_fixture
from dmd_fast.model.system import DMDSystem
from dmd_fast.ops.backend import check_backend_name

REQUIRED_KEYS = (
    "config",
    "state_dict",
    "gd_homo_state_dict",
    "gd_hetero_state_dict",
    "param_names",
    "inputs",
    "outputs",
    "losses",
    "grads",
)
# fixture loss name → our loss name
LOSS_ALIASES = {
    "combined_loss": "total",
    "loss_ort_torch19_semantics": "loss_ort",
    "loss_ort_l_torch19_semantics": "loss_ort_l",
    "loss_ort_v_torch19_semantics": "loss_ort_v",
    "loss_ort_a_torch19_semantics": "loss_ort_a",
}
DEFAULT_TOL = {"reference": 1e-5, "triton": 1e-4, "auto": 1e-4}
# Gradients are judged per group: the parameters of one top-level DMD module (``trans_l_with_a``,
# ``proj1_c``, ...) or of one GD unit (``gd_homo``, ``gd_hetero``). A gradient's error is relative to
# max(max|ref|, floor) with floor = GROUP_NOISE_ULPS · eps(fp32) · S / tol, S the group's largest
# |gradient|: a gradient passes when its error is within tol of its own size, or within
# GROUP_NOISE_ULPS float32 ulps of its group's scale, what fp32 rounding leaves on a gradient that
# cancels to ~0. (The GD units' bias gradients are exactly 0 in exact arithmetic, the edge softmax being
# shift-invariant; upstream stores ~1e-10 of rounding noise, next to 1e-3..1e-2 for the unit's weights.)
# A real error larger than 32 ulps of the group's scale still fails, whatever the tolerance.
GROUP_NOISE_ULPS = 32
FP32_EPS = 2.0**-23


def grad_group(name: str) -> str:
    """The group of a gradient key: its first dotted component (``gd_hetero.W_edge.bias`` → ``gd_hetero``)."""
    return name.split(".", 1)[0]


def grad_floors(ref_grads: dict, tol: float) -> dict:
    """{group: relative-error floor} from the reference gradients (see GROUP_NOISE_ULPS)."""
    scale: dict = {}
    for key, ref in ref_grads.items():
        m = ref.detach().abs().max().item() if ref.numel() else 0.0
        scale[grad_group(key)] = max(scale.get(grad_group(key), 0.0), m)
    return {g: max(GROUP_NOISE_ULPS * FP32_EPS * s / tol, 1e-30) for g, s in scale.items()}


class FixtureError(ValueError):
    """The file is not a parity fixture in the expected format."""


@dataclass
class GroupResult:
    name: str
    count: int = 0
    worst: float = 0.0
    worst_key: str = ""
    failures: list = field(default_factory=list)

    def add(self, key: str, err: float, tol: float):
        self.count += 1
        if not self.worst_key or not err <= self.worst:  # NaN and inf count as worst
            self.worst, self.worst_key = err, key
        if not err <= tol:
            self.failures.append((key, err))


@dataclass
class ParityReport:
    backend: str
    tol: float
    groups: list
    errors: list

    @property
    def passed(self) -> bool:
        return not self.errors and all(not g.failures for g in self.groups)

    def table(self) -> str:
        lines = [
            f"parity vs upstream fixture (backend={self.backend}, tol={self.tol:g} max relative error)",
            f"{'group':<12} {'checked':>7} {'max rel err':>12}  {'status':<6} worst",
            "-" * 78,
        ]
        for g in self.groups:
            status = "ok" if not g.failures else f"FAIL({len(g.failures)})"
            lines.append(f"{g.name:<12} {g.count:>7} {g.worst:>12.3e}  {status:<6} {g.worst_key}")
        for e in self.errors:
            lines.append(f"error: {e}")
        for g in self.groups:
            for key, err in g.failures[:10]:
                lines.append(f"  {g.name}: {key}: {err:.3e} > {self.tol:g}")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def rel_err(mine: torch.Tensor, ref: torch.Tensor, floor: float = 1e-30) -> float:
    """max|mine − ref| / max(max|ref|, floor) (inf-norm relative error); inf on shape mismatch or NaN."""
    mine, ref = mine.detach().double().cpu(), ref.detach().double().cpu()
    if mine.shape != ref.shape:
        return math.inf
    diff = (mine - ref).abs().max().item() if ref.numel() else 0.0
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, floor)
    return diff / scale if math.isfinite(diff) else math.inf


def load_fixture(path) -> dict:
    path = pathlib.Path(path)
    if not path.exists():
        raise FixtureError(f"fixture: no file at {path}")
    try:
        fx = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise FixtureError(f"fixture: {path} is not a torch file loadable with weights_only=True ({exc})") from exc
    if not isinstance(fx, dict):
        raise FixtureError(f"fixture: expected a dict, got {type(fx).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in fx]
    if missing:
        raise FixtureError(
            f"fixture: missing keys {missing}; expected the format of docs/fixture-format.md, 'Top-level keys'"
        )
    return fx


def build_system(fx: dict, backend: str, model_factory=None) -> DMDSystem:
    cfg = config_from_fixture(fx["config"])
    c = fx["config"]
    factory = model_factory or DMDSystem
    # upstream's HingeLoss gives no gradient at all on a batch without a margin anchor: reproduced
    # (a host read of the labels, free here), see dmd_fast.model.losses
    system = factory(
        cfg,
        backend=backend,
        homo_prior=c.get("gd_prior_homo"),
        hetero_prior=c.get("gd_prior_hetero"),
        margin_no_anchor="upstream",
    )
    return system


def run_parity(
    path, backend: str = "reference", tol: float | None = None, model_factory=None, device: str = "cpu"
) -> ParityReport:
    """Compare dmd_fast against an upstream fixture; see the module docstring."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    check_backend_name(backend)
    tol = DEFAULT_TOL.get(backend, 1e-4) if tol is None else check.positive(tol, "tol")
    fx = load_fixture(path)
    report = ParityReport(backend, tol, [], [])
    system = build_system(fx, backend, model_factory)
    names = [n for n, _ in fx["param_names"]]
    layout = GroupResult("layout")
    mine = list(system.dmd.state_dict().keys())
    layout.add("state_dict keys", 0.0 if mine == names else math.inf, tol)
    report.groups.append(layout)
    try:
        system.dmd.load_state_dict(fx["state_dict"], strict=True)
        system.gd_homo.load_state_dict(fx["gd_homo_state_dict"], strict=True)
        system.gd_hetero.load_state_dict(fx["gd_hetero_state_dict"], strict=True)
    except RuntimeError as exc:
        report.errors.append(f"strict load failed: {str(exc).splitlines()[0]}")
        return report
    system.to(device)
    inp = {k: v.to(device) if torch.is_tensor(v) else v for k, v in fx["inputs"].items()}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    onednn = torch.backends.mkldnn.enabled
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    try:
        # oneDNN's fp32 convolution backward is off by up to 4e-4 relative on some CPUs (seen on an AVX2
        # AMD EPYC: proj_l, encoder_c and the text self-attention encoder's gradients); ATen's own CPU
        # kernels match the fixture to 4e-7, so the oracle runs without oneDNN
        torch.backends.mkldnn.enabled = False
        _compare(fx, system, inp, report, tol)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.mkldnn.enabled = onednn
    return report


def _compare(fx, system, inp, report, tol):
    """Forward outputs (eval), loss terms and gradients (train) against the fixture, into ``report``."""
    outputs = GroupResult("outputs")
    system.eval()
    with torch.no_grad():
        out, _ = system(inp["text"], inp["audio"], inp["vision"])
    for key, ref in fx["outputs"].items():
        outputs.add(key, rel_err(out[key], ref) if key in out else math.inf, tol)
    report.groups.append(outputs)

    system.train()
    system.zero_grad(set_to_none=True)
    out, losses = system(inp["text"], inp["audio"], inp["vision"], inp["labels"])
    loss_group = GroupResult("losses")
    for key, ref in fx["losses"].items():
        mine_key = LOSS_ALIASES.get(key, key)
        loss_group.add(key, rel_err(losses[mine_key], ref) if mine_key in losses else math.inf, tol)
    report.groups.append(loss_group)

    losses["total"].backward()
    params = {n: p for n, p in system.dmd.named_parameters()}
    params.update({f"gd_homo.{n}": p for n, p in system.gd_homo.named_parameters()})
    params.update({f"gd_hetero.{n}": p for n, p in system.gd_hetero.named_parameters()})
    grads = GroupResult("grads")
    floors = grad_floors(fx["grads"], tol)
    for key, ref in fx["grads"].items():
        p = params.get(key)
        err = math.inf if p is None or p.grad is None else rel_err(p.grad, ref, floors[grad_group(key)])
        grads.add(key, err, tol)
    for key in fx.get("grads_none", []):
        p = params.get(key)
        grads.add(f"{key} (no grad)", 0.0 if p is not None and p.grad is None else math.inf, tol)
    report.groups.append(grads)

    stats = GroupResult("grad_stats")
    for key in fx.get("grads_skipped", []):
        p = params.get(key)
        ref = torch.as_tensor(fx["grad_stats"][key], dtype=torch.float64)
        if p is None or p.grad is None:
            stats.add(key, math.inf, tol)
            continue
        g = p.grad.detach().double().cpu()
        mine_stats = torch.stack([g.sum(), g.abs().sum(), g.norm()])
        # sum can cancel; judge it relative to sum|g|
        err = max(abs(mine_stats[0] - ref[0]).item() / max(ref[1].item(), 1e-30), rel_err(mine_stats[1:], ref[1:]))
        stats.add(key, err, tol)
    report.groups.append(stats)
