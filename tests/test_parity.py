"""Parity with the real upstream DMD (shared fixture), and proof that the check catches bugs."""

import pytest
import torch
from tiers import fixture_path

import dmd_fast.reference.attention as ref_attention
from dmd_fast.cli import main
from dmd_fast.model.dmd import DMD
from dmd_fast.model.system import DMDSystem
from dmd_fast.parity import FixtureError, run_parity


def test_reference_parity_passes(capsys):
    report = run_parity(fixture_path(), backend="reference")
    print(report.table())
    assert report.passed, report.table()
    counts = {g.name: g.count for g in report.groups}
    assert counts["outputs"] == 38 and counts["losses"] == 32
    assert counts["grads"] >= 681 and counts["grad_stats"] == 3
    worst = max(g.worst for g in report.groups)
    assert worst < 1e-5


def test_cli_parity_exit_code(capsys):
    assert main(["parity", "--fixture", str(fixture_path())]) == 0
    assert "PASS" in capsys.readouterr().out


def test_parity_catches_wrong_loss_weight(monkeypatch):
    import dmd_fast.model.system as system_mod

    real = system_mod.dmd_losses

    def wrong_weight(*a, **k):
        L = real(*a, **k)
        L["total"] = L["total"] + 0.01 * L["loss_ort"]  # ort weight 0.02 instead of 0.01
        return L

    monkeypatch.setattr(system_mod, "dmd_losses", wrong_weight)
    report = run_parity(fixture_path(), backend="reference")
    assert not report.passed
    failed = {g.name for g in report.groups if g.failures}
    assert {"losses", "grads"} <= failed and "outputs" not in failed


def test_parity_catches_wrong_mask(monkeypatch):
    def plain_causal(len_q, len_k, device=None):
        i = torch.arange(len_q, device=device).unsqueeze(1)
        return torch.arange(len_k, device=device).unsqueeze(0) <= i  # no |Lk − Lq| offset

    monkeypatch.setattr(ref_attention, "offset_causal_mask", plain_causal)
    report = run_parity(fixture_path(), backend="reference")
    assert not report.passed
    assert any(g.name == "outputs" and g.failures for g in report.groups)


def test_parity_catches_transposed_flatten():
    class TransposedFlatten(DMD):
        @staticmethod
        def flatten_channel_major(x):  # time-major instead of upstream's channel-major
            return x.transpose(1, 2).reshape(x.shape[0], -1)

    class System(DMDSystem):
        def __init__(self, cfg, **kw):
            super().__init__(cfg, **kw)
            self.dmd = TransposedFlatten(cfg, backend=kw.get("backend", "auto"))

    report = run_parity(fixture_path(), backend="reference", model_factory=System)
    failures = {k for g in report.groups for k, _ in g.failures}
    assert "c_l_sim" in failures and "loss_sim" in failures


def test_parity_rejects_bad_fixture(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"config": {}}, bad)
    with pytest.raises(FixtureError, match="missing keys"):
        run_parity(bad)
    with pytest.raises(FixtureError, match="no file"):
        run_parity(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(FixtureError, match="not a torch file"):
        run_parity(junk)
    assert main(["parity", "--fixture", str(bad)]) == 2


def test_upstream_state_dict_loads_strictly(upstream_fixture):
    from dmd_fast.model.config import config_from_fixture

    model = DMD(config_from_fixture(upstream_fixture["config"]), backend="reference")
    assert [n for n, _ in upstream_fixture["param_names"]] == list(model.state_dict().keys())
    model.load_state_dict(upstream_fixture["state_dict"], strict=True)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == upstream_fixture["param_counts"]["dmd"]
