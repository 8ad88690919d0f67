"""The LoRA adapter in the PEFT layout: key names, shapes and scale as PEFT stores them, and
(PEFT installed) the folder loaded by PEFT onto the base model computes what mugv's LoRA model does."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from mugv.train.lora import LoRAConfig, apply_lora, lora_state_dict, save_peft_adapter

from numerics_testing import assert_close_to_scale

from test_lora import model_and_inputs

LORA = LoRAConfig(rank=2, alpha=6.0, targets=["blocks.*.attn.qkv", "blocks.*.mlp.fc2", "final_layer.linear"])


def adapted_model():
    """(base model, the same with trained-looking adapters, forward inputs)."""
    base, args, kw = model_and_inputs()
    model = copy.deepcopy(base)
    layers = apply_lora(model, LORA)
    with torch.no_grad():
        for module in layers.values():
            module.lora_B.normal_(std=0.1)
    return base, model, layers, args, kw


def test_the_peft_folder_holds_peft_keys_shapes_and_the_same_scale(tmp_path):
    _, model, layers, _, _ = adapted_model()
    folder = save_peft_adapter(tmp_path / "peft", lora_state_dict(model), LORA, "runs/sft/ema.safetensors")
    tensors = load_file(folder / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert len(tensors) == 2 * len(layers)
    for name, module in layers.items():
        a, b = tensors[f"base_model.model.{name}.lora_A.weight"], tensors[f"base_model.model.{name}.lora_B.weight"]
        assert a.shape == (LORA.rank, module.in_features) and b.shape == (module.out_features, LORA.rank)
        assert torch.equal(a, module.lora_A) and torch.equal(b, module.lora_B)
        assert config["lora_alpha"] / config["r"] == module.lora_scale  # PEFT's scale: lora_alpha / r
    assert config["target_modules"] == sorted(layers) and "blocks.0.attn.qkv" in config["target_modules"]
    assert config["peft_type"] == "LORA" and config["task_type"] is None and config["bias"] == "none"
    assert config["fan_in_fan_out"] is False and not config["use_rslora"] and config["lora_dropout"] == 0.0
    assert config["base_model_name_or_path"] == "runs/sft/ema.safetensors"


def test_peft_loads_the_folder_onto_the_base_model_and_computes_the_same(tmp_path):
    peft = pytest.importorskip("peft")
    base, model, _, args, kw = adapted_model()
    folder = save_peft_adapter(tmp_path / "peft", lora_state_dict(model), LORA)
    with torch.no_grad():
        plain = base(*args, **kw)
        wrapped = peft.PeftModel.from_pretrained(base, str(folder)).eval()  # wraps `base` in place
        want, got = model(*args, **kw), wrapped(*args, **kw)
    assert (want - plain).abs().max() > 1e-2 * want.abs().max()  # the adapters change the output
    assert_close_to_scale(got, want)
