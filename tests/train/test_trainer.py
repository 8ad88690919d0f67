import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mugv.cli import main
from mugv.config import load_config
from mugv.data.synthetic import SyntheticLatents
from mugv.models.dit.adapters import CheckpointLayoutError
from mugv.models.dit.model import MUGDiT
from mugv.train.checkpoint import CheckpointError, list_checkpoints
from mugv.train.objectives import ConditioningPolicy, FlowMatchingObjective
from mugv.train.schedule import lr_multiplier
from mugv.train.trainer import Trainer


def config(tmp_path, *overrides):
    return load_config("debug", [f"--run_dir={tmp_path}", "--logging.progress=false", "--logging.tensorboard=false",
                                 *overrides])


def test_loss_falls_on_a_fixed_batch(tmp_path):
    cfg = config(tmp_path, "--train.steps=40", "--data.num_samples=2", "--data.batch_size=2",
                 "--data.caption_dropout=0", "--optim.lr=1e-3", "--optim.schedule=constant", "--checkpoint.every_steps=0")
    history = Trainer(cfg).fit()
    first = sum(m["loss"] for m in history[:5]) / 5
    last = sum(m["loss"] for m in history[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert all(0 <= m["data_wait"] <= 1 and m["tflops"] > 0 for m in history)


def test_resume_after_a_stop_is_bit_identical(tmp_path):
    common = ["--train.steps=6", "--optim.warmup_steps=2", "--data.num_samples=16"]
    straight = Trainer(config(tmp_path / "a", *common, "--checkpoint.every_steps=0"))
    straight.fit()

    class CrashAtStep4:
        def on_step_end(self, trainer, metrics):
            if trainer.step == 4:  # after the step-3 checkpoint: step 4 is lost and redone
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tmp_path / "b", *common, "--checkpoint.every_steps=3"), hooks=(CrashAtStep4(),)).fit()
    resumed = Trainer(config(tmp_path / "b", *common, "--checkpoint.every_steps=3"))
    history = resumed.fit()
    assert [m["step"] for m in history] == [4, 5, 6]
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.data.state_dict() == straight.data.state_dict()
    assert torch.equal(resumed.generator.get_state(), straight.generator.get_state())


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    Trainer(config(tmp_path, "--train.steps=1")).fit()
    with pytest.raises(CheckpointError, match="depth"):
        Trainer(config(tmp_path, "--train.steps=2", "--model.depth=1")).resume()


def test_checkpoints_keep_the_last_n_and_record_the_state(tmp_path):
    trainer = Trainer(config(tmp_path, "--train.steps=4", "--checkpoint.every_steps=1", "--checkpoint.keep_last=2"))
    trainer.fit()
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == ["step_00000003", "step_00000004"]
    meta = json.loads((kept[-1] / "trainer.json").read_text())
    assert meta["step"] == 4 and meta["data"] == {"position": 8}
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def objective_inputs(first_frame_prob, caption_dropout=0.0):
    cfg = load_config("debug")
    model = MUGDiT(cfg.model)
    batch = SyntheticLatents(cfg.data, 24, 64).next_batch()
    objective = FlowMatchingObjective(
        cfg.flow, ConditioningPolicy(first_frame_prob=first_frame_prob, caption_dropout=caption_dropout)
    )
    return model, batch, objective


def test_i2v_conditioning_frames_are_clean_and_out_of_the_loss():
    model, batch, objective = objective_inputs(first_frame_prob=1.0)
    inputs = objective.prepare(model, batch, torch.Generator().manual_seed(0))
    assert not inputs.frame_mask[:, 0].any() and inputs.frame_mask[:, 1:].all()
    assert torch.equal(inputs.noisy[:, :, 0], batch.latents[:, :, 0])  # exact clean latent
    assert not torch.allclose(inputs.noisy[:, :, 1], batch.latents[:, :, 1])
    # the loss does not see what the model predicts for the conditioning frame
    prediction = torch.randn(2, 48, *batch.latents.shape[2:], requires_grad=True)
    from mugv.flow import masked_flow_loss

    masked_flow_loss(prediction, inputs.target, inputs.frame_mask).backward()
    assert prediction.grad[:, :, 0].abs().sum() == 0


def test_t2v_samples_generate_every_frame():
    model, batch, objective = objective_inputs(first_frame_prob=0.0)
    inputs = objective.prepare(model, batch, torch.Generator().manual_seed(0))
    assert inputs.frame_mask.all()


def test_caption_dropout_uses_the_null_text():
    model, batch, objective = objective_inputs(first_frame_prob=0.0, caption_dropout=1.0)
    inputs = objective.prepare(model, batch, torch.Generator().manual_seed(0))
    null_text, null_mask = model.null_text(2)
    assert torch.equal(inputs.text, null_text) and torch.equal(inputs.text_mask, null_mask)


def test_lr_schedule_warms_up_and_decays():
    optim = load_config("debug", ["--optim.warmup_steps=10", "--optim.min_lr_ratio=0.1"]).optim
    assert lr_multiplier(0, 100, optim) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, optim) == pytest.approx(1.0)
    assert lr_multiplier(10, 100, optim) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, optim) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(100, 100, optim) == pytest.approx(0.1)


def test_train_command_runs_and_resumes(tmp_path, capsys):
    args = ["train", "--config", "debug", f"--run_dir={tmp_path}", "--train.steps=3", "--logging.progress=false"]
    assert main(args) == 0
    assert "done at step 3" in capsys.readouterr().out
    assert (tmp_path / "tensorboard").is_dir() and (tmp_path / "checkpoints" / "step_00000003").is_dir()
    assert main(args) == 0
    assert "nothing to do, already at step 3" in capsys.readouterr().out


def test_training_can_start_from_published_mugv_weights(tmp_path):
    golden = Path(__file__).resolve().parents[1] / "golden" / "dit_debug_mugv_weights.safetensors"
    trainer = Trainer(config(tmp_path, "--train.steps=1", f"--checkpoint.init_weights={golden}"))
    torch.testing.assert_close(trainer.model.blocks[0].attn.qkv.weight, load_file(golden)["blocks.0.attn.qkv.weight"])
    trainer.fit()


def test_init_weights_of_another_size_are_refused_by_name(tmp_path):
    golden = Path(__file__).resolve().parents[1] / "golden" / "dit_debug_mugv_weights.safetensors"
    with pytest.raises(CheckpointLayoutError, match="blocks.0.attn.qkv.weight"):
        Trainer(config(tmp_path, "--model.hidden_size=144", f"--checkpoint.init_weights={golden}"))


@pytest.mark.parametrize("kind", ["last_frame_prob", "continuation_prob"])
def test_last_frame_and_continuation_masks(kind):
    policy = ConditioningPolicy(**{kind: 1.0})
    mask = policy.frame_mask(64, 5, torch.Generator().manual_seed(0))
    if kind == "last_frame_prob":
        assert not mask[:, -1].any() and mask[:, :-1].all()
    else:
        given = (~mask).sum(1)
        assert given.min() >= 1 and given.max() <= 4 and len(set(given.tolist())) > 1
        assert all(bool((~row[: k]).all()) and bool(row[k:].all()) for row, k in zip(mask, given.tolist()))


def test_mask_probabilities_are_mixed_and_checked():
    policy = ConditioningPolicy(first_frame_prob=0.25, last_frame_prob=0.25, continuation_prob=0.25)
    mask = policy.frame_mask(4000, 4, torch.Generator().manual_seed(0))
    full = mask.all(1).float().mean().item()
    assert 0.2 < full < 0.3
    assert policy.frame_mask(8, 1, torch.Generator()).all()  # images are never conditioned
    with pytest.raises(ValueError, match="add up to"):
        ConditioningPolicy(first_frame_prob=0.7, last_frame_prob=0.5)
