"""EMA forms checked against closed-form expectations on toy parameter trajectories."""

import pytest
import torch
from torch import nn

from mugv.train.ema import (
    EMA,
    PowerEMA,
    ensemble_checkpoints,
    ensemble_weights,
    gamma_to_sigma_rel,
    posthoc_coefficients,
    reconstruct,
    sigma_rel_to_gamma,
)


class Toy(nn.Module):
    def __init__(self, size=4):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(size, dtype=torch.float64))


def set_weights(model: Toy, value) -> None:
    with torch.no_grad():
        model.w.copy_(torch.as_tensor(value, dtype=torch.float64))


def test_online_ema_of_a_linear_trajectory():
    """theta_k = k from theta_0 = 0: shadow_n = n - d (1 - d^n) / (1 - d)."""
    model, d, n = Toy(), 0.9, 50
    ema = EMA(model, decay=d)
    for k in range(1, n + 1):
        set_weights(model, [float(k)] * 4)
        ema.update(model)
    expected = n - d * (1 - d**n) / (1 - d)
    torch.testing.assert_close(ema.shadow["w"], torch.full((4,), expected, dtype=torch.float32))


def test_online_ema_state_round_trips_and_copies_into_a_model():
    model = Toy()
    ema = EMA(model, decay=0.5)
    set_weights(model, [2.0] * 4)
    ema.update(model)
    restored = EMA(Toy(), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    target = Toy()
    restored.copy_to(target)
    assert torch.equal(target.w, torch.full((4,), 1.0, dtype=torch.float64))
    with pytest.raises(KeyError, match="missing"):
        restored.load_state_dict({})


def test_sigma_rel_and_gamma_are_inverse_and_match_edm2():
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)  # EDM2's quoted pair
    for sigma in (0.02, 0.05, 0.1, 0.2):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma)) == pytest.approx(sigma, rel=1e-9)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10])
def test_power_ema_of_a_linear_trajectory_is_a_fixed_fraction_of_the_end(sigma_rel):
    """Weights tau^gamma over theta(tau) = tau average to (gamma + 1) / (gamma + 2) * t."""
    model = Toy(1)
    ema = PowerEMA(model, sigma_rels=(sigma_rel,))
    steps = 4000
    for t in range(1, steps + 1):
        set_weights(model, [float(t)])
        ema.update(model)
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert ema.averages[0]["w"].item() == pytest.approx((gamma + 1) / (gamma + 2) * steps, rel=2e-3)


def trajectory(t: int) -> list[float]:
    return [torch.sin(torch.tensor(t / 400.0)).item() + 1e-3 * t, 0.5 * torch.cos(torch.tensor(t / 250.0)).item()]


def test_posthoc_reconstruction_matches_a_directly_tracked_average(tmp_path):
    model = Toy(2)
    tracked = PowerEMA(model, sigma_rels=(0.05, 0.10))
    direct = PowerEMA(model, sigma_rels=(0.07,))
    for t in range(1, 3001):
        set_weights(model, trajectory(t))
        tracked.update(model)
        direct.update(model)
        if t % 250 == 0:
            tracked.snapshot(tmp_path)
    rebuilt = reconstruct(tmp_path, sigma_rel=0.07)["w"]
    want = direct.averages[0]["w"]
    assert ((rebuilt - want).norm() / want.norm()).item() < 1e-3  # the nearest snapshot alone is off by ~7e-2
    # a snapshot's own width is rebuilt almost exactly from itself
    coeffs = posthoc_coefficients([(3000, sigma_rel_to_gamma(0.05)), (3000, sigma_rel_to_gamma(0.1))], 3000,
                                  sigma_rel_to_gamma(0.1))
    assert coeffs == pytest.approx([0.0, 1.0], abs=1e-6)


def test_posthoc_reconstruction_at_an_earlier_step(tmp_path):
    model = Toy(2)
    tracked, direct = PowerEMA(model, (0.05, 0.10)), PowerEMA(model, (0.08,))
    at_1500 = None
    for t in range(1, 2001):
        set_weights(model, trajectory(t))
        tracked.update(model)
        direct.update(model)
        if t % 250 == 0:
            tracked.snapshot(tmp_path)
        if t == 1500:
            at_1500 = direct.averages[0]["w"].clone()
    rebuilt = reconstruct(tmp_path, sigma_rel=0.08, at_step=1500)["w"]
    assert ((rebuilt - at_1500).norm() / at_1500.norm()).item() < 1e-2
    with pytest.raises(ValueError, match="before step 100"):
        reconstruct(tmp_path, sigma_rel=0.08, at_step=100)


@pytest.mark.parametrize("n, decay", [(2, 0.5), (5, 0.9), (12, 0.7)])
def test_checkpoint_ensemble_of_a_linear_trajectory(n, decay):
    """Checkpoints theta_i = i: sum a^(n-1-i) i / sum a^(n-1-i) = n - 1 - a/(1-a) + n a^n / (1 - a^n)."""
    checkpoints = [{"w": torch.full((3,), float(i))} for i in range(n)]
    expected = n - 1 - decay / (1 - decay) + n * decay**n / (1 - decay**n)
    torch.testing.assert_close(ensemble_checkpoints(checkpoints, decay)["w"], torch.full((3,), expected))
    assert ensemble_weights(n, decay).sum() == pytest.approx(1.0)
    assert ensemble_weights(3, 1.0) == pytest.approx([1 / 3] * 3)


def test_ema_commands_rebuild_and_ensemble(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from mugv.cli import main

    model = Toy(2)
    tracked = PowerEMA(model, (0.05, 0.10))
    for t in range(1, 501):
        set_weights(model, trajectory(t))
        tracked.update(model)
        if t % 100 == 0:
            tracked.snapshot(tmp_path / "snaps")
    assert main(["ema", "reconstruct", str(tmp_path / "snaps"), "--sigma-rel", "0.1", "--out",
                 str(tmp_path / "ema.safetensors")]) == 0
    torch.testing.assert_close(load_file(tmp_path / "ema.safetensors")["w"], tracked.averages[1]["w"])

    from mugv.models.dit.config import DiTConfig
    from mugv.models.dit.model import MUGDiT

    names = MUGDiT(DiTConfig.from_preset("debug")).state_dict()
    for i in range(3):
        save_file({k: torch.full_like(v, float(i)) for k, v in names.items()}, tmp_path / f"c{i}.safetensors")
    paths = [str(tmp_path / f"c{i}.safetensors") for i in range(3)]
    assert main(["ema", "ensemble", *paths, "--decay", "0.5", "--out", str(tmp_path / "ens.safetensors")]) == 0
    assert "weighted 0.143, 0.286, 0.571" in capsys.readouterr().out
    ensembled = load_file(tmp_path / "ens.safetensors")
    torch.testing.assert_close(ensembled["start_token"], torch.full((288,), 10 / 7))
