import pytest
import torch

from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT
from mugv.train.lora import LoRAConfig, apply_lora, load_lora, lora_state_dict, merge_lora

from numerics_testing import assert_close_to_scale


def model_and_inputs(seed=0):
    torch.manual_seed(seed)
    model = MUGDiT(DiTConfig.from_preset("debug"))
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(std=0.02)  # the fresh init predicts zero
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(2, 24, 2, 4, 4, generator=g), torch.tensor([300.0, 800.0]), torch.randn(2, 5, 64, generator=g))
    return model, args, dict(fps=torch.tensor([24.0, 24.0]))


def fine_tune(model, args, kw, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(*args, **kw)[:, :24].pow(2).mean().backward()
        opt.step()


def test_lora_starts_as_the_base_model_and_trains_only_the_adapters():
    model, args, kw = model_and_inputs()
    with torch.no_grad():
        before = model(*args, **kw)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    layers = apply_lora(model, LoRAConfig(rank=4, alpha=8))
    assert len(layers) == 2 * 7
    with torch.no_grad():
        assert torch.equal(model(*args, **kw), before)  # B = 0: no change until trained
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model)) and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    fine_tune(model, args, kw)
    for name, value in base.items():
        assert torch.equal(model.state_dict()[name], value), name  # base weights untouched
    with torch.no_grad():
        assert not torch.allclose(model(*args, **kw), before)


@pytest.mark.parametrize("cfg, adapted", [
    (LoRAConfig(rank=2, alpha=4, targets=["blocks.*.attn.qkv", "blocks.*.mlp.fc2"]), 4),
    # modules trained in full travel with the adapter and stay in the merged weights
    (LoRAConfig(rank=2, alpha=4, targets=["blocks.*.mlp.fc2"], train_modules=["x_embedder", "t_block"]), 2),
])
def test_merged_and_separately_loaded_adapters_compute_the_same(cfg, adapted):
    model, args, kw = model_and_inputs()
    apply_lora(model, cfg)
    fine_tune(model, args, kw)
    adapter = {k: v.clone() for k, v in lora_state_dict(model).items()}
    with torch.no_grad():
        tuned = model(*args, **kw)

    fresh, _, _ = model_and_inputs()
    load_lora(fresh, adapter, cfg)
    with torch.no_grad():
        assert torch.equal(fresh(*args, **kw), tuned)  # the same weights and adapters, computed the same way

    assert merge_lora(model) == adapted
    factors = {k for k in adapter if k.endswith((".lora_A", ".lora_B"))}
    assert not lora_state_dict(model) and set(model.state_dict()) == set(fresh.state_dict()) - factors
    with torch.no_grad():
        assert_close_to_scale(model(*args, **kw), tuned)  # W + BA summed before the product, not after


def test_bad_targets_and_adapters_are_reported():
    model, _, _ = model_and_inputs()
    with pytest.raises(ValueError, match="match no linear"):
        apply_lora(model, LoRAConfig(rank=2, targets=["blocks.*.attn.nothing"]))
    with pytest.raises(KeyError, match="missing"):
        load_lora(model, {}, LoRAConfig(rank=2, targets=["blocks.0.mlp.fc1"]))


def test_modules_trained_in_full_are_part_of_the_adapter_and_rule_out_the_adapters_off_reference():
    from mugv.config import PreferenceConfig
    from mugv.errors import ConfigError
    from mugv.train.objectives.base import ReferenceMode
    from mugv.train.objectives.preference import resolve_reference_mode
    from mugv.train.objectives.reference import build_reference

    model, _, _ = model_and_inputs()
    cfg = LoRAConfig(rank=2, alpha=4, targets=["blocks.*.mlp.fc2"], train_modules=["x_embedder", "t_block"])
    apply_lora(model, cfg)
    full = {n for n, _ in model.named_parameters() if n.startswith(("x_embedder.", "t_block."))}
    assert full and {n for n, p in model.named_parameters() if p.requires_grad} == set(lora_state_dict(model))
    assert set(lora_state_dict(model)) - full == {f"blocks.{i}.mlp.fc2.lora_{ab}" for i in range(2) for ab in "AB"}
    assert resolve_reference_mode(PreferenceConfig(), cfg) is ReferenceMode.FROZEN_COPY
    assert resolve_reference_mode(PreferenceConfig(), LoRAConfig(rank=2)) is ReferenceMode.ADAPTERS_OFF
    with pytest.raises(ConfigError, match="'adapters_off' is not the starting model"):
        build_reference(ReferenceMode.ADAPTERS_OFF, model)
