"""The release-style enhancer recipe through `mugv train --config enhancer-lora`: a Wan2.1 T2V DiT
as init weights (its condition branch starting at zero), LoRA plus the patch embedding trained in
full, and the adapter saved and loaded with the patch embedding."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mugv.config import ConfigError, LoRAConfig, load_config
from mugv.data.pairs import PAIRS_FILE
from mugv.enhance import adapters
from mugv.enhance.config import WanDiTConfig
from mugv.enhance.objective import WAN_LORA_TARGETS
from mugv.enhance.pipeline import dit_velocity
from mugv.models.registry import build_model
from mugv.train.lora import apply_lora, lora_state_dict, merge_lora
from mugv.train.trainer import Trainer
from tests.numerics_testing import assert_close_to_scale

pytest.importorskip("diffusers")

GOLDEN = Path(__file__).parent.parent / "golden"
# the debug preset's sizes (those of the golden Wan DiT), over the enhancer profile's tiny CPU ones
DEBUG_MODEL = ["--model.dim=64", "--model.ffn_dim=96", "--model.num_heads=2", "--model.num_layers=2"]
PATCH_EMBEDDING = {"patch_embedding.weight", "patch_embedding.bias"}


def t2v_state() -> dict[str, torch.Tensor]:
    """A Wan2.1 T2V DiT's weights in Wan's native names: the golden release DiT less its condition branch."""
    state = adapters.read_weights(GOLDEN / "enhancer_tiny_dit_i2v.safetensors")
    return {k: v for k, v in state.items() if not k.startswith("patch_embedding2.")}


def t2v_model() -> torch.nn.Module:
    model = build_model(dataclasses.replace(WanDiTConfig.from_preset("debug"), condition_channels=0))
    adapters.load_dit(model, t2v_state(), "wan")
    return model


def write_init_weights(folder: Path, layout: str) -> Path:
    """The T2V DiT's weights as a file, in Wan's native names or in diffusers' (the T2V model's own)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = t2v_state() if layout == "wan" else t2v_model().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / f"t2v_{layout}.safetensors")
    return folder / f"t2v_{layout}.safetensors"


def lora_config(tmp_path: Path, *overrides: str):
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(4, 16, 3, 4, 4, generator=g)
    pairs = tmp_path / "pairs"
    pairs.mkdir(exist_ok=True)
    save_file({"clean": clean, "degraded": 0.5 * clean + 0.5 * clean.mean(dim=(2, 3, 4), keepdim=True)},
              pairs / PAIRS_FILE)
    return load_config("enhancer-lora", [f"--data.pairs={pairs}", f"--run_dir={tmp_path / 'run'}",
                                         "--data.batch_size=2", "--logging.progress=false",
                                         "--logging.tensorboard=false", *DEBUG_MODEL, *overrides])


def inputs(condition_scale: float = 1.0):
    g = torch.Generator().manual_seed(1)
    zt, condition = torch.randn(2, 16, 3, 4, 6, generator=g), condition_scale * torch.randn(2, 16, 3, 4, 6, generator=g)
    return zt, condition, torch.tensor([300.0, 250.0]), torch.randn(2, 5, 32, generator=g)


def test_the_profile_is_the_release_recipe_at_cpu_size(tmp_path):
    cfg = lora_config(tmp_path)
    assert cfg.lora.targets == WAN_LORA_TARGETS and cfg.lora.train_modules == ["patch_embedding"]
    assert cfg.lora.rank > 0 and cfg.checkpoint.init_layout == "auto" and cfg.train.objective == "enhancer_flow"


def test_init_layout_is_checked_against_the_family(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint\.init_layout = 'mugv' is not one of 'auto', 'wan', 'diffusers' "
                                          r"\(model family 'wan-dit'\)"):
        Trainer(lora_config(tmp_path, "--checkpoint.init_layout=mugv"))
    with pytest.raises(ConfigError, match="'auto', 'mugv', 'megatron'"):
        Trainer(load_config("debug", [f"--run_dir={tmp_path}", "--checkpoint.init_layout=wan"]))


@pytest.mark.parametrize("layout", ["wan", "diffusers"])
def test_a_t2v_dit_starts_the_enhancer_as_the_t2v_model(tmp_path, layout):
    init = write_init_weights(tmp_path, layout)
    model = Trainer(lora_config(tmp_path, f"--checkpoint.init_weights={init}")).model
    weight = model.patch_embedding.weight
    assert weight.shape[1] == 32 and not weight[:, 16:].any()  # the condition branch's channels start at zero
    zt, condition, t, text = inputs()
    t2v = t2v_model()
    assert torch.equal(weight[:, :16], t2v.patch_embedding.weight)
    with torch.no_grad():
        # the T2V model has no condition input: a condition of zero channels leaves its input as it is
        want = dit_velocity(t2v, zt, condition[:, :0], t, text)
        for scale in (0.0, 1.0):  # zero weights: no condition changes the output
            assert_close_to_scale(dit_velocity(model, zt, scale * condition, t, text), want, rel=1e-5)
    with pytest.raises(adapters.EnhancerWeightsError, match="no condition branch"):  # `mugv enhance` stays strict
        adapters.load_dit(build_model(WanDiTConfig.from_preset("debug")), t2v_state(), "wan")


def test_lora_and_the_patch_embedding_train_and_nothing_else(tmp_path):
    init = write_init_weights(tmp_path, "wan")
    trainer = Trainer(lora_config(tmp_path, f"--checkpoint.init_weights={init}", "--train.steps=2",
                                  "--optim.warmup_steps=0", "--checkpoint.every_steps=0"))
    model = trainer.model
    factors = {n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    assert len(factors) == 2 * 10 * 2  # 10 adapted linears in each of 2 blocks
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == factors | PATCH_EMBEDDING
    assert {id(p) for group in trainer.optimizer.param_groups for p in group["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable
    assert model.patch_embedding.weight[:, 16:].abs().max() > 0  # the condition branch has started to learn


def test_the_adapter_saves_and_restores_the_patch_embedding(tmp_path):
    from mugv.commands.enhancer import _load_dit
    from mugv.commands.generate import attach_lora

    init = write_init_weights(tmp_path, "wan")
    cfg = lora_config(tmp_path, f"--checkpoint.init_weights={init}", "--train.steps=2", "--optim.warmup_steps=0",
                      "--checkpoint.every_steps=0")
    trainer = Trainer(cfg)
    trainer.fit()
    run = cfg.resolved_run_dir
    adapter = load_file(run / "lora.safetensors")
    assert PATCH_EMBEDDING <= set(adapter) and set(adapter) == set(lora_state_dict(trainer.model))
    with safe_open(str(run / "lora.safetensors"), "pt") as f:
        assert f.metadata()["train_modules"] == "patch_embedding"
    zt, condition, t, text = inputs()
    with torch.no_grad():
        want = dit_velocity(trainer.model, zt, condition, t, text)

    def base():  # the enhancer as training started: the T2V weights, the condition branch at zero
        model = build_model(cfg.model)
        adapters.load_dit(model, t2v_state(), zero_condition=True)
        return model

    restored = base()
    attach_lora(restored, run / "lora.safetensors")  # `mugv generate --lora`: loaded, then merged
    assert torch.equal(restored.patch_embedding.weight, trainer.model.patch_embedding.weight)
    merged = copy.deepcopy(trainer.model)
    assert merge_lora(merged) == 20 and not lora_state_dict(merged)
    evaluated, _, _ = _load_dit(run, None)  # `mugv enhancer eval`: the run's checkpoint, merged
    with torch.no_grad():
        for model in (restored, merged, evaluated):
            assert_close_to_scale(dit_velocity(model, zt, condition, t, text), want, rel=1e-5)

    peft_dir = run / "lora-peft"
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    tensors = load_file(peft_dir / "adapter_model.safetensors")
    assert config["modules_to_save"] == ["patch_embedding"]
    assert torch.equal(tensors["base_model.model.patch_embedding.weight"], trainer.model.patch_embedding.weight)
    peft = pytest.importorskip("peft")
    wrapped = base()
    peft.PeftModel.from_pretrained(wrapped, str(peft_dir))  # adapts `wrapped` in place
    with torch.no_grad():
        assert_close_to_scale(dit_velocity(wrapped, zt, condition, t, text), want, rel=1e-5)


def test_bad_train_modules_are_named(tmp_path):
    dit = build_model(WanDiTConfig.from_preset("debug"))
    with pytest.raises(ConfigError, match="lora.train_modules pattern 'patch_embeding' matches no module"):
        apply_lora(dit, LoRAConfig(rank=2, targets=WAN_LORA_TARGETS, train_modules=["patch_embedding", "patch_embeding"]))
    with pytest.raises(ConfigError, match=r"would train blocks\.0 in full, but it holds LoRA targets"):
        apply_lora(build_model(WanDiTConfig.from_preset("debug")),
                   LoRAConfig(rank=2, targets=WAN_LORA_TARGETS, train_modules=["blocks.0"]))
    with pytest.raises(ConfigError, match=r"lora\.train_modules = \['patch_embedding'\] needs lora\.rank > 0"):
        lora_config(tmp_path, "--lora.rank=0")
    with pytest.raises(ConfigError, match="'nothing' matches no module"):
        Trainer(lora_config(tmp_path, '--lora.train_modules=["nothing"]'))
