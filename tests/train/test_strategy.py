"""Training strategy through the trainer: curriculum stages, validation, EMA, LoRA, freezing."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mugv.config import ConfigError, load_config
from mugv.train.trainer import Trainer

THREE_STAGES = (
    "--stages=[{name='s1', steps=3, lr=1e-3, warmup_steps=1, schedule='cosine', caption_dropout=0.5}, "
    "{name='s2', samples=8, first_frame_prob=1.0, lr=5e-4}, "
    "{name='s3', steps=2, continuation_prob=0.5, lr=1e-4}]"
)


def config(tmp_path, *overrides):
    return load_config("debug", [f"--run_dir={tmp_path}", "--logging.progress=false", "--logging.tensorboard=false",
                                 "--train.steps=100", "--data.num_samples=16", *overrides])


class CrashAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.step:
            raise KeyboardInterrupt


def test_curriculum_runs_three_stages_and_resumes_inside_stage_two(tmp_path):
    straight = Trainer(config(tmp_path / "a", THREE_STAGES, "--ema.decay=0.9"))
    history = straight.fit()
    assert [m["stage"] for m in history] == [0, 0, 0, 1, 1, 1, 1, 2, 2]  # 3 steps, 8 samples / 2, 2 steps
    assert [round(m["lr"], 6) for m in history][:4] == [0.001, 0.001, 0.0005, 0.0005]

    with pytest.raises(KeyboardInterrupt):  # checkpoint at step 4 (inside stage 2), crash at step 6
        Trainer(config(tmp_path / "b", THREE_STAGES, "--ema.decay=0.9", "--checkpoint.every_steps=4"),
                hooks=(CrashAt(6),)).fit()
    resumed = Trainer(config(tmp_path / "b", THREE_STAGES, "--ema.decay=0.9", "--checkpoint.every_steps=4"))
    rest = resumed.fit()
    assert [m["step"] for m in rest] == [5, 6, 7, 8, 9] and rest[0]["stage"] == 1
    assert [m["loss"] for m in rest] == [m["loss"] for m in history[4:]]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for name, value in straight.ema.shadow.items():
        assert torch.equal(value, resumed.ema.shadow[name]), name
    assert resumed.curriculum.finished
    torch.testing.assert_close(load_file(tmp_path / "b" / "ema.safetensors")["start_token"],
                               straight.ema.shadow["start_token"])


def test_validation_is_logged_and_a_plateau_ends_a_stage(tmp_path):
    cfg = config(tmp_path, "--stages=[{name='until-flat', plateau_patience=1, plateau_min_delta=10.0}]",
                 "--validation.every_steps=2", "--validation.batches=1", "--validation.sigmas=[0.5]")
    history = Trainer(cfg).fit()
    # the first evaluation sets the best; the next cannot improve by 10: the stage ends at step 4
    assert len(history) == 4 and "val/loss" in history[1] and "val/loss" not in history[0]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[3]["val/loss@0.50"] == records[3]["val/loss"]
    assert "val/loss" in json.loads((tmp_path / "validation-start.json").read_text())


GOLDEN_WEIGHTS = str(Path(__file__).resolve().parents[1] / "golden" / "dit_debug_mugv_weights.safetensors")


def test_lora_trains_only_the_adapter_and_exports_it(tmp_path):
    # LoRA adapts trained weights: a fresh model's zero output layer would pass back no gradient
    trainer = Trainer(config(tmp_path, "--train.steps=3", "--lora.rank=2", "--lora.targets=['blocks.*.mlp.fc1']",
                             f"--checkpoint.init_weights={GOLDEN_WEIGHTS}"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["blocks.0.mlp.fc1.lora_A", "blocks.0.mlp.fc1.lora_B", "blocks.1.mlp.fc1.lora_A",
                       "blocks.1.mlp.fc1.lora_B"]
    exported = load_file(tmp_path / "lora.safetensors")
    assert set(exported) == set(changed)
    # the same adapter in the PEFT layout, beside it (tests/train/test_lora_peft.py checks the format)
    peft_weights = load_file(tmp_path / "lora-peft" / "adapter_model.safetensors")
    assert peft_weights.keys() == {f"base_model.model.{name}.weight" for name in changed}
    assert all(torch.equal(peft_weights[f"base_model.model.{name}.weight"], exported[name]) for name in changed)
    peft_config = json.loads((tmp_path / "lora-peft" / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == GOLDEN_WEIGHTS
    assert peft_config["target_modules"] == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]


def test_freeze_patterns_keep_parameters_fixed(tmp_path):
    trainer = Trainer(config(tmp_path, "--train.steps=2", "--train.freeze=['y_embedder.*', 'blocks.0.*']"))
    fixed = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith(("y_embedder.", "blocks.0."))}
    trainer.fit()
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in fixed.items())
    assert not torch.equal(trainer.model.blocks[1].mlp.fc1.weight, fixed["blocks.0.mlp.fc1.weight"])
    with pytest.raises(ConfigError, match="matches no parameter"):
        Trainer(config(tmp_path / "x", "--train.freeze=['nothing.*']"))


def test_power_ema_snapshots_rebuild_a_width(tmp_path):
    from mugv.train.ema import reconstruct

    trainer = Trainer(config(tmp_path, "--train.steps=6", "--ema.power_sigma_rels=[0.05, 0.1]",
                             "--ema.snapshot_every=3"))
    trainer.fit()
    snapshots = sorted(p.name for p in (tmp_path / "ema-snapshots").iterdir())
    assert len(snapshots) == 4
    rebuilt = reconstruct(tmp_path / "ema-snapshots", sigma_rel=0.1)
    torch.testing.assert_close(rebuilt["start_token"], trainer.power_ema.averages[1]["start_token"])
