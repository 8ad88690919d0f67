"""The trainer on encoded shards: finite loss, the loader's position in checkpoints, exact resume."""

import json

import pytest
import torch

from mugv.config import load_config
from mugv.data.loader import ShardSource
from mugv.data.testing import write_random_shards
from mugv.train.checkpoint import latest_checkpoint
from mugv.train.trainer import Trainer


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_random_shards(str(root), {"1x32x32": 10, "1x32x48": 6, "9x32x32": 8, "17x32x48": 6}, shard_size=6)
    return root


def config(run_dir, shards, *overrides):
    return load_config("shards-debug", [
        f"--run_dir={run_dir}", f"--data.shards={shards}", "--model.text_dim=64", "--model.max_text_tokens=16",
        "--logging.progress=false", "--logging.tensorboard=false", "--train.steps=6", "--optim.warmup_steps=2",
        *overrides])


def test_trainer_trains_from_shards_and_resumes_exactly(tmp_path, shards):
    straight = Trainer(config(tmp_path / "a", shards, "--checkpoint.every_steps=0"))
    assert isinstance(straight.data, ShardSource)
    history = straight.fit()
    assert len(history) == 6 and all(torch.isfinite(torch.tensor(m["loss"])) for m in history)
    assert all(m["samples_per_s"] > 0 and m["data_wait"] < 1 for m in history)

    class CrashAtStep5:
        def on_step_end(self, trainer, metrics):
            if trainer.step == 5:  # after the step-4 checkpoint: step 5 is lost and redone
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tmp_path / "b", shards, "--checkpoint.every_steps=2"), hooks=(CrashAtStep5(),)).fit()
    saved = json.loads((latest_checkpoint(tmp_path / "b" / "checkpoints") / "trainer.json").read_text())
    assert saved["data"]["step"] == 4 and set(saved["data"]["groups"]) == {"image", "video"}
    resumed = Trainer(config(tmp_path / "b", shards, "--checkpoint.every_steps=2"))
    rest = resumed.fit()
    assert [m["step"] for m in rest] == [5, 6]
    assert [m["loss"] for m in rest] == [m["loss"] for m in history[4:]]
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.data.state_dict() == straight.data.state_dict()


def test_text_width_must_follow_the_encoder(tmp_path, shards):
    with pytest.raises(ValueError, match="text_dim"):
        Trainer(config(tmp_path, shards, "--model.text_dim=384"))


def test_curriculum_stages_switch_bucket_tables_and_mixture_and_resume(tmp_path, shards):
    stages = ("--stages=[{name='images', steps=3, buckets=['1x32x32', '1x32x48']}, "
              "{name='video', steps=4, buckets=['9x32x32', '17x32x48'], first_frame_prob=0.5}, "
              "{name='mixed', steps=2, image_fraction=[0.5, 0.5]}]")
    seen = []

    class RecordShapes:
        def on_step_end(self, trainer, metrics):
            seen.append(trainer.curriculum.index)

    straight = Trainer(config(tmp_path / "a", shards, stages, "--train.steps=20"), hooks=(RecordShapes(),))
    shapes = []
    original = straight.data.next_batch

    def recording_next_batch():
        batch = original()
        shapes.append(tuple(batch.latents.shape[2:]))
        return batch

    straight.data.next_batch = recording_next_batch
    history = straight.fit()
    assert len(history) == 9 and seen == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert all(s[0] == 1 for s in shapes[:3]) and all(s[0] > 1 for s in shapes[3:7])  # images, then videos

    class CrashAt:
        def on_step_end(self, trainer, metrics):
            if trainer.step == 6:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # checkpoint at step 5, inside stage 'video'
        Trainer(config(tmp_path / "b", shards, stages, "--train.steps=20", "--checkpoint.every_steps=5"),
                hooks=(CrashAt(),)).fit()
    rest = Trainer(config(tmp_path / "b", shards, stages, "--train.steps=20", "--checkpoint.every_steps=5")).fit()
    assert [m["loss"] for m in rest] == [m["loss"] for m in history[5:]]
