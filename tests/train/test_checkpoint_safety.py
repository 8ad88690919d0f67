"""Checkpoints never unpickle code, and reach the disk before they get their final name."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from mugv.config import load_config
from mugv.distributed.checkpoint import (
    _checked_metadata,
    load_distributed,
    model_state,
    optimizer_state,
    read_tensor_set,
    save_distributed,
)
from mugv.train.checkpoint import CheckpointError, latest_checkpoint
from mugv.train.logger import keep_metrics_up_to
from mugv.train.trainer import Trainer


class WritesMarker:
    """A pickle payload: unpickling it creates the file `marker` (it could run anything)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


def config(tmp_path, *overrides):
    return load_config("debug", [f"--run_dir={tmp_path}", "--logging.progress=false", "--logging.tensorboard=false",
                                 "--train.steps=1", *overrides])


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A single-process trainer's checkpoint after one step."""
    Trainer(config(tmp_path / "run")).fit()
    return latest_checkpoint(tmp_path / "run" / "checkpoints")


def test_the_payload_runs_when_unpickled_without_restriction(marker):
    pickle.loads(pickle.dumps(WritesMarker(marker)))
    assert marker.exists()


def test_a_pickled_rng_file_is_refused_without_unpickling_it(checkpoint, marker, tmp_path):
    (checkpoint / "rng" / "dp_0.safetensors").unlink()  # as an older mugv wrote it, or someone crafted it
    torch.save({"generator": WritesMarker(marker)}, checkpoint / "rng" / "dp_0.pt")
    with pytest.raises(CheckpointError, match=r"dp_0\.pt: RNG state stored as a Python pickle.*not loaded"):
        Trainer(config(tmp_path / "run")).resume()
    assert not marker.exists()


def test_an_optimizer_state_holding_code_is_refused(checkpoint, marker, tmp_path):
    import torch.distributed.checkpoint as dcp

    trained = Trainer(config(tmp_path / "other"))
    state = {"model": model_state(trained.model), "optim": optimizer_state(trained.model, trained.optimizer)}
    state["optim"]["param_groups"][0]["eps"] = WritesMarker(marker)
    for stale in checkpoint.glob("*.distcp"):
        stale.unlink()
    dcp.save(state, checkpoint_id=str(checkpoint), no_dist=True)  # the trainer's files, the optimizer's values crafted
    with pytest.raises(CheckpointError, match=r"value optim\.param_groups\.0\.eps\): refused to load"):
        Trainer(config(tmp_path / "run")).resume()
    assert not marker.exists()


def test_a_checkpoint_of_an_older_mugv_is_named_with_what_to_do(tmp_path):
    old = tmp_path / "run" / "checkpoints" / "step_00000001"
    old.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "trainer.json", "rng.safetensors"):
        (old / name).touch()
    with pytest.raises(CheckpointError, match=r"older mugv.*--checkpoint\.init_weights=.*model\.safetensors"):
        Trainer(config(tmp_path / "run")).resume()


@pytest.fixture
def dcp_checkpoint(tmp_path) -> tuple[Trainer, Trainer, Path]:
    """A trainer after one step, its DCP checkpoint written by one process, and a fresh trainer."""
    trainer = Trainer(config(tmp_path / "run", "--checkpoint.every_steps=0"))
    trainer.fit()
    path, _ = save_distributed(tmp_path / "dcp", 1, trainer.model, trainer.optimizer, {}, trainer.generator.get_state(),
                               keep_last=1)
    return trainer, Trainer(config(tmp_path / "fresh")), path


def test_dcp_checkpoints_load_exactly_with_the_checks_in_place(dcp_checkpoint):
    trained, fresh, path = dcp_checkpoint
    meta, generator = load_distributed(path, fresh.model, fresh.optimizer)
    assert meta["step"] == 1 and torch.equal(generator, trained.generator.get_state())
    assert fresh.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    for (name, a), (_, b) in zip(trained.model.state_dict().items(), fresh.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(read_tensor_set(path)["final_layer.linear.weight"],
                       trained.model.state_dict()["final_layer.linear.weight"])


def test_dcp_metadata_holding_code_is_refused(dcp_checkpoint, marker):
    _, fresh, path = dcp_checkpoint
    metadata = _checked_metadata(path)  # read as mugv reads it: no unrestricted unpickling
    metadata.planner_data = WritesMarker(marker)
    with open(path / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(CheckpointError, match=r"\.metadata: refused to load: it names pathlib\.Path\.touch"):
        load_distributed(path, fresh.model, fresh.optimizer)
    with pytest.raises(CheckpointError, match=r"\.metadata: refused to load"):
        read_tensor_set(path)
    assert not marker.exists()


def test_a_dcp_value_holding_code_is_refused(dcp_checkpoint, marker, tmp_path):
    import torch.distributed.checkpoint as dcp

    trained, fresh, _ = dcp_checkpoint
    crafted = tmp_path / "crafted"
    state = {"model": model_state(trained.model), "optim": optimizer_state(trained.model, trained.optimizer)}
    state["optim"]["param_groups"][0]["lr"] = WritesMarker(marker)
    dcp.save(state, checkpoint_id=str(crafted), no_dist=True)
    (crafted / "trainer.json").write_text(json.dumps({"step": 1, "tensors": []}))
    with pytest.raises(CheckpointError, match=r"value optim\.param_groups\.0\.lr\): refused to load"):
        load_distributed(crafted, fresh.model, fresh.optimizer)
    assert not marker.exists()


def test_a_pickled_dcp_rng_file_is_refused(dcp_checkpoint, marker):
    _, fresh, path = dcp_checkpoint
    torch.save({"global": WritesMarker(marker)}, path / "rng" / "rank_0.pt")
    with pytest.raises(CheckpointError, match=r"rank_0\.pt: RNG state stored as a Python pickle"):
        load_distributed(path, fresh.model, fresh.optimizer)
    assert not marker.exists()


def test_a_vae_training_state_holding_code_is_refused(tmp_path, marker):
    from mugv.vae_train.config import VAERunConfig
    from mugv.vae_train.data import MediaPool
    from mugv.vae_train.trainer import VAETrainer

    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "still.png")
    cfg = load_config("vae_tiny", [f"--data.sources=['{tmp_path / 'still.png'}']", "--data.height=16",
                                   "--data.width=16", "--data.video_batch_size=0", f"--run_dir={tmp_path / 'vae'}", "--logging.progress=false",
                                   "--logging.tensorboard=false", "--samples.count=0", "--train.steps=1"],
                      cls=VAERunConfig)
    trainer = VAETrainer(cfg, MediaPool.from_config(cfg.data))
    trainer.fit()
    saved = cfg.checkpoint_dir / "step_00000001"
    torch.save({"step": 1, "optimizer": WritesMarker(marker)}, saved / "training_state.pt")
    with pytest.raises(CheckpointError, match=r"training_state\.pt: refused to load"):
        trainer.load_checkpoint(saved)
    assert not marker.exists()


def test_checkpoint_files_and_metrics_reach_the_disk_before_the_checkpoint_is_published(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def rename(self, target):
        events.append(("rename", Path(self).resolve(), Path(target).resolve()))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    run = (tmp_path / "run").resolve()
    (run / "checkpoints" / ".step_00000009.deleting").mkdir(parents=True)  # a crash cut this removal short
    Trainer(config(run, "--train.steps=2", "--checkpoint.every_steps=1", "--checkpoint.keep_last=1",
                   "--ema.decay=0.9")).fit()
    final = run / "checkpoints" / "step_00000002"
    published = events.index(("rename", final.with_name(final.name + ".tmp"), final))
    synced_before = {e[1] for e in events[:published] if e[0] == "fsync"}
    tmp = final.with_name(final.name + ".tmp")
    expected = {tmp / p.relative_to(final) for p in final.rglob("*")}
    assert {p.relative_to(final).as_posix() for p in final.rglob("*")} >= {
        ".metadata", "__0_0.distcp", "trainer.json", "rng", "rng/rank_0.safetensors", "rng/dp_0.safetensors"}
    assert "ema" in json.loads((final / "trainer.json").read_text())["tensors"]
    assert expected | {tmp, run / "metrics.jsonl"} <= synced_before
    assert ("fsync", run / "checkpoints") in events[published:]  # the new name itself is durable
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]  # step 1 removed, nothing left over


def test_a_resumed_run_drops_the_metric_lines_after_its_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    keep_metrics_up_to(metrics, 3)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    keep_metrics_up_to(metrics, 0)
    assert metrics.read_text() == ""
