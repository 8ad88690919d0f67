"""The pieces of an enhancer training recipe: degraded pairs and the conditioned flow objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mugv.config import LoRAConfig
from mugv.data.pairs import LatentPairBatch
from mugv.enhance.config import WanDiTConfig
from mugv.enhance.degrade import (
    Degradation,
    DegradationConfig,
    degrade,
    sample_degradation,
)
from mugv.enhance.objective import (
    WAN_LORA_TARGETS,
    EnhancerFlowObjective,
    restoration_velocity,
)
from mugv.eval.recon import psnr
from mugv.models.registry import build_model
from mugv.train.lora import apply_lora
from mugv.video.synthetic import panning_shot

pytest.importorskip("diffusers")


def clip() -> np.ndarray:
    return panning_shot(seed=3, frames=5, height=48, width=64)


def test_degradations_are_seeded_shape_keeping_and_graded():
    clean = clip()
    how = sample_degradation(DegradationConfig(), np.random.default_rng(0))
    a = degrade(clean, how, np.random.default_rng(1))
    b = degrade(clean, how, np.random.default_rng(1))
    assert a.shape == clean.shape and a.dtype == np.uint8 and np.array_equal(a, b)

    def quality(how):
        out = degrade(clean, how, np.random.default_rng(1))
        return psnr(torch.from_numpy(out).float() / 255, torch.from_numpy(clean).float() / 255)

    mild, strong = Degradation(0.5, 1.5, 0.01, 90), Degradation(1.5, 3.0, 0.04, 30)
    assert quality(strong) < quality(mild) < 60
    assert np.array_equal(degrade(clean, Degradation(0, 1, 0, 100), np.random.default_rng(0)), clean)
    shifted = degrade(clean, Degradation(0, 1, 0, 100), np.random.default_rng(0), vae_round_trip=lambda f: f // 2)
    assert np.array_equal(shifted, clean // 2)
    with pytest.raises(ValueError, match="blur_sigma"):
        DegradationConfig(blur_sigma=(2.0, 1.0))


def test_target_is_the_flow_target_without_degradation_and_one_step_restores():
    g = torch.Generator().manual_seed(0)
    clean, degraded, noise = (torch.randn(2, 16, 3, 4, 6, generator=g) for _ in range(3))
    sigma = torch.tensor([0.25, 0.35])
    s = sigma.view(-1, 1, 1, 1, 1)
    same = (1 - s) * clean + s * noise
    torch.testing.assert_close(restoration_velocity(same, clean, sigma), noise - clean)
    noised = (1 - s) * degraded + s * noise
    torch.testing.assert_close(noised - s * restoration_velocity(noised, clean, sigma), clean)


def test_training_the_lora_and_condition_branch_lowers_the_loss():
    torch.manual_seed(0)
    dit = build_model(WanDiTConfig.from_preset("debug"))
    apply_lora(dit, LoRAConfig(rank=4, alpha=4.0, targets=WAN_LORA_TARGETS, train_modules=["patch_embedding"]))
    params = [p for p in dit.parameters() if p.requires_grad]
    assert {n for n, p in dit.named_parameters() if p.requires_grad} == (
        {n for n, _ in dit.named_parameters() if "lora_" in n} | {"patch_embedding.weight", "patch_embedding.bias"})
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 16, 3, 4, 6, generator=g)
    batch = LatentPairBatch(clean=clean, degraded=clean + 0.3 * torch.randn(clean.shape, generator=g),
                            text=torch.randn(2, 6, 32, generator=g), text_mask=torch.ones(2, 6, dtype=torch.bool))
    objective = EnhancerFlowObjective()
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for step in range(40):
        out = objective.compute(dit, batch, torch.Generator().manual_seed(step % 4))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
        assert out.per_sample.shape == (2,) and 0.2 <= out.metrics["sigma_mean"] <= 0.4
    print(f"enhancer objective: loss {np.mean(losses[:4]):.3f} -> {np.mean(losses[-4:]):.3f} in 40 steps")
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
