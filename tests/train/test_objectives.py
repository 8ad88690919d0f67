"""The objective seam: what an objective returns, how the trainer builds one by name, and the
three ways a reference model is provided."""

import pytest
import torch

from mugv.config import ConfigError, load_config
from mugv.data.synthetic import SyntheticLatents
from mugv.flow import masked_flow_loss
from mugv.models.dit.model import MUGDiT
from mugv.train import objectives
from mugv.train.lora import apply_lora
from mugv.train.objectives import (
    ConditioningPolicy,
    FlowMatchingObjective,
    ObjectiveOutput,
    ReferenceMode,
    build_objective,
    build_reference,
)
from mugv.train.trainer import Trainer


def debug_setup(seed=0):
    cfg = load_config("debug")
    torch.manual_seed(seed)
    model = MUGDiT(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, model, SyntheticLatents(cfg.data, 24, 64).next_batch()


def test_flow_objective_reports_per_sample_errors_whose_mean_is_the_loss():
    cfg, model, batch = debug_setup()
    objective = FlowMatchingObjective(cfg.flow, ConditioningPolicy(first_frame_prob=0.5))
    out = objective.compute(model, batch, torch.Generator().manual_seed(0))
    inputs = objective.prepare(model, batch, torch.Generator().manual_seed(0))
    expected = masked_flow_loss(objective.predict(model, inputs, batch), inputs.target, inputs.frame_mask)
    assert out.per_sample.shape == (batch.size,) and not out.per_sample.requires_grad
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.per_sample.mean(), expected.detach())


def test_an_unknown_objective_is_named():
    cfg = load_config("debug", ["--train.objective=dpo-typo"])
    with pytest.raises(ConfigError, match="train.objective = 'dpo-typo'"):
        build_objective(cfg, ConditioningPolicy())


def test_the_adapters_off_reference_is_the_base_model():
    cfg, model, batch = debug_setup()
    args = (batch.latents, torch.tensor([500.0, 500.0]), batch.text)
    kwargs = dict(fps=batch.fps, text_mask=batch.text_mask)
    base = model(*args, **kwargs).detach()
    apply_lora(model, cfg.lora.__class__(rank=2, alpha=4.0))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_B"):
                module.lora_B.normal_()
    reference = build_reference(ReferenceMode.ADAPTERS_OFF, model)
    assert not reference.separate
    assert not torch.allclose(model(*args, **kwargs), base)
    ref_out = reference(*args, **kwargs)
    torch.testing.assert_close(ref_out, base)
    assert not ref_out.requires_grad
    assert not torch.allclose(model(*args, **kwargs), base)  # the adapters are back on afterwards


def test_adapters_off_needs_adapters():
    _, model, _ = debug_setup()
    with pytest.raises(ConfigError, match="lora.rank"):
        build_reference(ReferenceMode.ADAPTERS_OFF, model)


class DriftFromReference:
    """A test objective: how far the model's output moved from its frozen copy's."""

    name = "drift"
    reference = ReferenceMode.FROZEN_COPY

    def __init__(self, cfg, policy, dp_group):
        self.flow = FlowMatchingObjective(cfg.flow, policy)
        self.policy = policy
        self.seen_references = []

    def compute(self, model, batch, generator, reference=None):
        self.seen_references.append(reference)
        flow = self.flow.compute(model, batch, generator)
        args = (batch.latents, torch.full((batch.size,), 500.0), batch.text)
        drift = (model(*args, fps=batch.fps, text_mask=batch.text_mask)
                 - reference(*args, fps=batch.fps, text_mask=batch.text_mask)).pow(2).mean()
        return ObjectiveOutput(loss=flow.loss, per_sample=flow.per_sample, metrics={"drift": drift.item()})


def test_the_trainer_supplies_a_frozen_copy_and_logs_the_objective_metrics(tmp_path, monkeypatch):
    monkeypatch.setitem(objectives.OBJECTIVES, "drift", DriftFromReference)
    cfg = load_config("debug", [f"--run_dir={tmp_path}", "--logging.progress=false", "--logging.tensorboard=false",
                                "--train.objective=drift", "--train.steps=3", "--checkpoint.every_steps=0",
                                "--optim.lr=1e-3"])
    trainer = Trainer(cfg)
    frozen = trainer.reference.module
    assert frozen is not trainer.model and trainer.reference.separate
    before = {n: p.clone() for n, p in frozen.named_parameters()}
    history = trainer.fit()
    assert all(r is trainer.reference for r in trainer.objective.seen_references)
    assert history[0]["drift"] == 0.0 and history[-1]["drift"] > 0  # the model moved, its copy did not
    assert all(torch.equal(p, before[n]) and not p.requires_grad for n, p in frozen.named_parameters())
