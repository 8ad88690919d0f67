"""Flow-DPO and Flow-KTO: the losses against hand computation, the shared draw of a pair, and the
three reference modes giving the same loss and gradients."""

import dataclasses
import math

import pytest
import torch

from mugv.config import ConfigError, load_config
from mugv.data.preference import SyntheticPreferences
from mugv.models.dit.model import MUGDiT
from mugv.train.lora import apply_lora
from mugv.train.objectives import (
    ConditioningPolicy,
    FlowDPOObjective,
    FlowKTOObjective,
    ReferenceMode,
    build_objective,
    build_reference,
)
from mugv.train.objectives.preference import dpo_loss, kto_loss
from mugv.train.trainer import Trainer


def test_dpo_loss_matches_a_hand_computation():
    loss, logit = dpo_loss(torch.tensor([0.30, 0.50]), torch.tensor([0.40, 0.50]),
                           torch.tensor([0.60, 0.20]), torch.tensor([0.50, 0.10]), beta=4.0)
    # pair 0: -(4/2) * [(0.3 - 0.4) - (0.6 - 0.5)] = 0.4; pair 1: -2 * [0 - 0.1] = 0.2
    torch.testing.assert_close(logit, torch.tensor([0.4, 0.2]))
    torch.testing.assert_close(loss, torch.tensor([math.log(1 + math.exp(-0.4)), math.log(1 + math.exp(-0.2))]))


def test_kto_loss_matches_a_hand_computation():
    policy, reference = torch.tensor([0.2, 0.5, 0.4]), torch.tensor([0.3, 0.4, 0.6])
    loss, z = kto_loss(policy, reference, torch.tensor([True, False, True]), beta=10.0, lambda_d=1.0, lambda_u=2.0)
    # g = e_ref - e_theta = [0.1, -0.1, 0.2]; z = max(0, mean g) = 0.2/3
    z_hand = 0.2 / 3
    sig = lambda v: 1 / (1 + math.exp(-v))
    expected = [1 - sig(10 * (0.1 - z_hand)), 2 * (1 - sig(10 * (z_hand + 0.1))), 1 - sig(10 * (0.2 - z_hand))]
    torch.testing.assert_close(z, torch.tensor(z_hand))
    torch.testing.assert_close(loss, torch.tensor(expected))
    _, z_negative = kto_loss(torch.tensor([0.5]), torch.tensor([0.1]), torch.tensor([True]), 1.0, 1.0, 1.0)
    assert z_negative.item() == 0.0  # the reference point is clamped at 0


def test_kto_reference_point_is_detached():
    policy = torch.tensor([0.2, 0.5], requires_grad=True)
    loss, _ = kto_loss(policy, torch.tensor([0.3, 0.1]), torch.tensor([True, False]), 5.0, 1.0, 1.0)
    loss.sum().backward()
    # with z held fixed: d/d e_theta of 1 - sigmoid(beta (e_ref - e_theta - z)) = beta s (1 - s)
    g, z = torch.tensor([0.1, -0.4]), 0.0
    s = torch.sigmoid(5.0 * (g - z))
    torch.testing.assert_close(policy.grad, torch.stack([5.0 * s[0] * (1 - s[0]), -5.0 * s[1] * (1 - s[1])]))


def setup(paired=True, lora=True, seed=0, batch_size=2):
    cfg = load_config("debug", ["--data.latent_frames=2", "--data.latent_height=4", "--data.latent_width=4",
                                f"--data.batch_size={batch_size}", "--data.num_samples=8"])
    torch.manual_seed(seed)
    model = MUGDiT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    source = SyntheticPreferences(cfg.data, cfg.model.in_channels, cfg.model.text_dim, paired=paired, seed=seed)
    frozen = build_reference(ReferenceMode.FROZEN_COPY, model)  # the base weights
    if lora:
        apply_lora(model, dataclasses.replace(cfg.lora, rank=2, alpha=4.0))
        with torch.no_grad():
            for module in model.modules():
                if hasattr(module, "lora_B"):
                    module.lora_B.normal_(std=0.2)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return cfg, model, source, frozen


def objective(cls, cfg, mode, **pref):
    return cls(cfg.flow, dataclasses.replace(cfg.preference, **pref), ConditioningPolicy(first_frame_prob=0.5), mode)


def test_a_policy_equal_to_its_reference_gives_log_2():
    cfg, model, source, frozen = setup(lora=False)
    batch = source.next_batch()
    out = objective(FlowDPOObjective, cfg, ReferenceMode.FROZEN_COPY).compute(
        frozen.module, batch, torch.Generator().manual_seed(0), frozen)
    torch.testing.assert_close(out.loss, torch.tensor(math.log(2)))
    assert out.metrics["reward_margin"] == 0.0 and out.metrics["kl"] == 0.0


def test_both_clips_of_a_pair_share_sigma_noise_and_conditioning():
    cfg, model, source, _ = setup()
    batch = source.next_batch()
    inputs = objective(FlowDPOObjective, cfg, ReferenceMode.ADAPTERS_OFF).prepare(model, batch, torch.Generator())
    b = batch.size
    clips = batch.candidates().latents
    noise = clips - inputs.target  # the target is x0 - noise
    torch.testing.assert_close(inputs.sigma[:b], inputs.sigma[b:])
    torch.testing.assert_close(noise[:b], noise[b:])
    assert torch.equal(inputs.frame_mask[:b], inputs.frame_mask[b:])
    assert not torch.allclose(noise[0], noise[1])  # different pairs, different draws


def grads_and_loss(model, obj, batch, reference):
    model.zero_grad(set_to_none=True)
    out = obj.compute(model, batch, torch.Generator().manual_seed(1), reference)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


@pytest.mark.parametrize("cls,paired", [(FlowDPOObjective, True), (FlowKTOObjective, False)])
def test_the_three_reference_modes_give_the_same_loss_and_gradients(cls, paired):
    cfg, model, source, frozen = setup(paired=paired)
    adapters_off = build_reference(ReferenceMode.ADAPTERS_OFF, model)
    recorder = objective(cls, cfg, ReferenceMode.ADAPTERS_OFF, beta=200.0, sft_weight=0.1)
    source.record_reference_errors(0, recorder.reference_errors(adapters_off, source.batch_at(0)))
    batch = source.batch_at(0)
    assert batch.reference_error is not None

    results = {
        mode: grads_and_loss(model, objective(cls, cfg, mode, beta=200.0, sft_weight=0.1), batch, ref)
        for mode, ref in [(ReferenceMode.ADAPTERS_OFF, adapters_off), (ReferenceMode.FROZEN_COPY, frozen),
                          (ReferenceMode.PRECOMPUTED, None)]
    }
    base_out, base_grads = results[ReferenceMode.ADAPTERS_OFF]
    assert base_out.loss.item() != pytest.approx(math.log(2) if paired else 0.5)  # the policy differs
    for mode, (out, grads) in results.items():
        scale = base_out.loss.abs().item()
        torch.testing.assert_close(out.loss, base_out.loss, rtol=1e-5, atol=1e-6 * scale, msg=str(mode))
        for name, grad in grads.items():
            ref_grad = base_grads[name]
            torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5 * ref_grad.abs().max().item() + 1e-12,
                                       msg=f"{mode} {name}")
        for key in ("e_theta_chosen", "e_ref_chosen", "e_ref_rejected", "reward_margin", "reward_accuracy"):
            assert out.metrics[key] == pytest.approx(base_out.metrics[key], rel=1e-5, abs=1e-7)


def test_the_sft_regulariser_adds_the_flow_loss_of_the_chosen_clips():
    cfg, model, source, frozen = setup()
    batch = source.next_batch()
    plain = objective(FlowDPOObjective, cfg, ReferenceMode.FROZEN_COPY).compute(
        model, batch, torch.Generator(), frozen)
    regularised = objective(FlowDPOObjective, cfg, ReferenceMode.FROZEN_COPY, sft_weight=0.5).compute(
        model, batch, torch.Generator(), frozen)
    torch.testing.assert_close(regularised.loss, plain.loss + 0.5 * plain.metrics["e_theta_chosen"])


def test_wrong_data_for_the_objective_is_named():
    cfg, model, source, frozen = setup(paired=False)
    batch = source.next_batch()
    with pytest.raises(ConfigError, match="use train.objective = 'kto'"):
        objective(FlowDPOObjective, cfg, ReferenceMode.FROZEN_COPY).compute(model, batch, torch.Generator(), frozen)
    with pytest.raises(ConfigError, match="precomputed"):
        objective(FlowKTOObjective, cfg, ReferenceMode.PRECOMPUTED).compute(model, batch, torch.Generator())


def test_the_reference_mode_follows_lora_unless_configured():
    assert build_objective(load_config("debug", ["--train.objective=dpo"]), ConditioningPolicy()).reference \
        is ReferenceMode.FROZEN_COPY
    assert build_objective(load_config("debug", ["--train.objective=kto", "--lora.rank=2"]),
                           ConditioningPolicy()).reference is ReferenceMode.ADAPTERS_OFF
    assert build_objective(load_config("debug", ["--train.objective=dpo", "--preference.reference=precomputed"]),
                           ConditioningPolicy()).reference is ReferenceMode.PRECOMPUTED
    with pytest.raises(ConfigError, match="preference.beta"):
        load_config("debug", ["--preference.beta=0"])
    with pytest.raises(ConfigError, match="parallel.pp > 1"):
        build_objective(load_config("debug", ["--train.objective=kto", "--parallel.pp=2"]), ConditioningPolicy())


def preference_trainer(tmp_path, objective_name, paired, *overrides):
    """A Trainer for a small model that starts like an SFT checkpoint (weights away from the
    zero-output initialisation), on an in-memory preference source."""
    cfg = load_config("debug", [f"--run_dir={tmp_path}", "--logging.progress=false", "--logging.tensorboard=false",
                                f"--train.objective={objective_name}", "--checkpoint.every_steps=0",
                                "--preference.beta=500", "--data.latent_frames=2", "--data.latent_height=4",
                                "--data.latent_width=4", *overrides])
    data = SyntheticPreferences(cfg.data, cfg.model.in_channels, cfg.model.text_dim, paired=paired)
    _, model, _, _ = setup(lora=False)
    return Trainer(cfg, model=model, data=data)


def test_the_trainer_runs_dpo_with_lora_and_logs_the_preference_metrics(tmp_path):
    trainer = preference_trainer(tmp_path, "dpo", True, "--train.steps=3", "--lora.rank=2", "--optim.lr=1e-2")
    assert trainer.reference is not None and not trainer.reference.separate
    history = trainer.fit()
    # the adapters start at zero: the first step's policy is its reference
    assert history[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)
    for key in ("reward_accuracy", "reward_margin", "e_theta_chosen", "e_theta_rejected", "e_ref_chosen",
                "e_ref_rejected", "kl"):
        assert key in history[-1]
    assert history[-1]["kl"] > 0
    assert (tmp_path / "lora.safetensors").is_file()
    assert (tmp_path / "lora-peft" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "lora-peft" / "adapter_config.json").is_file()


@pytest.mark.parametrize("name", ["dpo", "kto"])
def test_the_recipes_start_from_an_sft_checkpoint_with_lora(name):
    cfg = load_config(name)
    assert cfg.train.objective == name and cfg.checkpoint.init_weights and cfg.lora.rank > 0
    assert build_objective(cfg, ConditioningPolicy()).reference is ReferenceMode.ADAPTERS_OFF


def test_the_trainer_runs_kto_with_a_frozen_copy(tmp_path):
    trainer = preference_trainer(tmp_path, "kto", False, "--train.steps=2", "--optim.lr=1e-3", "--data.batch_size=4")
    assert trainer.reference.separate
    history = trainer.fit()
    assert history[0]["loss"] == pytest.approx(0.5, rel=1e-5)  # g = z = 0: each sample pays lambda / 2
    assert history[0]["kto_z"] == 0.0 and history[-1]["kl"] > 0
    assert {"reward_margin", "e_theta_chosen", "e_ref_rejected"} <= set(history[-1])


def test_kto_metrics_leave_out_a_class_the_batch_lacks():
    cfg, model, source, frozen = setup(paired=False)
    batch = dataclasses.replace(source.next_batch(), label=torch.tensor([True, True]))
    out = objective(FlowKTOObjective, cfg, ReferenceMode.FROZEN_COPY).compute(model, batch, torch.Generator(), frozen)
    assert "e_theta_chosen" in out.metrics and "e_theta_rejected" not in out.metrics
    assert "reward_margin" not in out.metrics
