"""VAE training end to end on tiny synthetic media: data loading, exact resume, samples, CLI."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mugv.cli import main
from mugv.config import ConfigError, load_config
from mugv.train.checkpoint import list_checkpoints
from mugv.vae_train.config import VAERunConfig
from mugv.vae_train.data import MediaError, MediaPool, discover
from mugv.vae_train.trainer import VAETrainer
from mugv.video import write_mp4

from numerics_testing import assert_close_to_scale
from vae_testing import moving_square, trained_tiny_vae


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    write_mp4(root / "a.mp4", moving_square(12, 32, 2), fps=8)
    write_mp4(root / "b.mp4", moving_square(10, 48, 3), fps=8)
    Image.fromarray(moving_square(1, 40, 0)[0]).save(root / "still.png")
    (root / "broken.mp4").write_bytes(b"not a video at all")
    return root


def tiny_run(tmp_path: Path, media_dir: Path, **overrides) -> VAERunConfig:
    args = [
        f"--data.sources=['{media_dir}']",
        "--data.height=16",
        "--data.width=16",
        f"--run_dir={tmp_path / 'run'}",
        "--logging.progress=false",
        "--logging.tensorboard=false",
        "--samples.count=0",
    ] + [f"--{k}={v}" for k, v in overrides.items()]
    return load_config("vae_tiny", args, cls=VAERunConfig)


def test_media_pool_loads_videos_and_images_and_records_rejections(media_dir):
    pool = MediaPool.load([str(media_dir)], 16, 16)
    assert sorted(Path(i.path).name for i in pool.videos) == ["a.mp4", "b.mp4"]
    assert [Path(i.path).name for i in pool.images] == ["still.png"]
    assert [Path(r.path).name for r in pool.rejections] == ["broken.mp4"]
    assert "broken.mp4" in pool.rejections[0].reason
    clips = pool.video_batch(seed=0, step=3, batch_size=2, clip_frames=9)
    assert clips.shape == (2, 3, 9, 16, 16) and clips.min() >= -1 and clips.max() <= 1
    assert torch.equal(clips, pool.video_batch(seed=0, step=3, batch_size=2, clip_frames=9))
    assert not torch.equal(clips, pool.video_batch(seed=0, step=4, batch_size=2, clip_frames=9))
    assert pool.image_batch(seed=0, step=0, batch_size=3).shape == (3, 3, 1, 16, 16)


def test_augmented_batches_are_random_windows_fixed_by_seed_and_step(media_dir):
    plain = MediaPool.load([str(media_dir / "a.mp4")], 16, 16)
    augmented = MediaPool.load([str(media_dir / "a.mp4")], 16, 16, cache_scale=2.0, random_flip=True, permute_colors=True)
    assert augmented.videos[0].frames.shape[1:3] == (32, 32)
    batches = [augmented.video_batch(seed=1, step=s, batch_size=2, clip_frames=4) for s in range(6)]
    assert all(b.shape == (2, 3, 4, 16, 16) for b in batches)
    assert torch.equal(batches[0], augmented.video_batch(seed=1, step=0, batch_size=2, clip_frames=4))
    assert plain.video_batch(seed=1, step=0, batch_size=1, clip_frames=4).shape == (1, 3, 4, 16, 16)
    # One still image: without augmentation every step sees the same pixels, with it they vary.
    still = [str(media_dir / "still.png")]
    fixed = MediaPool.load(still, 16, 16)
    varied = MediaPool.load(still, 16, 16, cache_scale=2.0, random_flip=True, permute_colors=True)
    fixed_steps = [fixed.image_batch(seed=1, step=s, batch_size=1) for s in range(4)]
    varied_steps = [varied.image_batch(seed=1, step=s, batch_size=1) for s in range(4)]
    assert all(torch.equal(b, fixed_steps[0]) for b in fixed_steps)
    assert sum(not torch.equal(b, varied_steps[0]) for b in varied_steps) >= 2
    assert torch.equal(varied_steps[1], varied.image_batch(seed=1, step=1, batch_size=1))


def test_manifests_and_unusable_sources(media_dir, tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(json.dumps({"path": str(media_dir / "a.mp4")}) + "\n" + json.dumps({"path": "still.png"}) + "\n")
    assert discover([str(manifest)]) == [media_dir / "a.mp4", tmp_path / "still.png"]
    with pytest.raises(MediaError, match="broken.mp4"):
        MediaPool.load([str(media_dir / "broken.mp4")], 16, 16)
    with pytest.raises(MediaError, match="no media sources"):
        discover([])


def test_training_resumes_exactly(media_dir, tmp_path):
    cfg = tiny_run(tmp_path / "a", media_dir, **{"train.steps": 4})
    assert cfg.data.cache_scale > 1 and cfg.data.random_flip and cfg.data.permute_colors  # augmentation is on
    straight = VAETrainer(cfg, MediaPool.from_config(cfg.data))
    history = straight.fit()
    assert [r.step for r in history] == [1, 2, 3, 4]
    assert {"video/mse", "video/l1", "video/kl", "image/mse", "grad_norm", "lr"} <= set(history[0].losses)

    cfg = tiny_run(tmp_path / "b", media_dir, **{"train.steps": 2})
    VAETrainer(cfg, MediaPool.from_config(cfg.data)).fit()
    cfg = tiny_run(tmp_path / "b", media_dir, **{"train.steps": 4})
    resumed = VAETrainer(cfg, MediaPool.from_config(cfg.data))
    later = resumed.fit()
    assert [r.step for r in later] == [3, 4]
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run" / "checkpoints")] == ["step_00000002", "step_00000004"]


def test_stages_train_one_half_at_a_time_then_both_and_resume_exactly(media_dir, tmp_path):
    stages = {"train.steps": 3, "stages.spatial_steps": 1, "stages.temporal_steps": 1}
    cfg = tiny_run(tmp_path / "a", media_dir, **stages)
    trainer = VAETrainer(cfg, MediaPool.from_config(cfg.data))
    halves = {"spatial": trainer.model.spatial, "temporal": trainer.model.temporal}

    def snapshot():
        return {name: [p.detach().clone() for p in half.parameters()] for name, half in halves.items()}

    def changed(before, after, half):
        return any(not torch.equal(a, b) for a, b in zip(before[half], after[half]))

    states = [snapshot()]
    history = []
    for _ in range(3):
        history.append(trainer.train_step())
        states.append(snapshot())
    # step 1: the spatial half alone, on pixels; step 2: the temporal half alone, on features
    assert changed(states[0], states[1], "spatial") and not changed(states[0], states[1], "temporal")
    assert changed(states[1], states[2], "temporal") and not changed(states[1], states[2], "spatial")
    assert changed(states[2], states[3], "spatial") and changed(states[2], states[3], "temporal")
    assert [r.losses["stage"] for r in history] == [0, 1, 2]
    assert "image/mse" in history[0].losses and "image/kl" not in history[0].losses
    assert {"video/feature_mse", "image/feature_mse", "video/kl"} <= set(history[1].losses)
    assert {"video/mse", "video/kl"} <= set(history[2].losses)
    # every stage starts its own warm-up
    assert history[0].losses["lr"] == history[1].losses["lr"] == history[2].losses["lr"] < cfg.optim.lr

    # stopped inside the temporal stage and resumed: the same weights as never stopping
    cfg = tiny_run(tmp_path / "b", media_dir, **{**stages, "train.steps": 2})
    VAETrainer(cfg, MediaPool.from_config(cfg.data)).fit()
    cfg = tiny_run(tmp_path / "b", media_dir, **stages)
    resumed = VAETrainer(cfg, MediaPool.from_config(cfg.data))
    assert [r.step for r in resumed.fit()] == [3]
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_the_temporal_stage_starts_from_the_fitted_shortcut_and_resumes_exactly(media_dir, tmp_path):
    stages = {"train.steps": 3, "stages.spatial_steps": 1, "stages.temporal_steps": 1, "model.preset": "tiny-shortcut"}
    cfg = tiny_run(tmp_path / "a", media_dir, **stages)
    trainer = VAETrainer(cfg, MediaPool.from_config(cfg.data))
    trainer.train_step()
    before = {k: v.clone() for k, v in trainer.model.temporal.shortcut.state_dict().items()}
    history = [trainer.train_step(), trainer.train_step()]
    # fitted once, where the temporal half starts; its PCA keeps most of the features' variance
    assert 0.5 < history[0].losses["shortcut_variance_kept"] <= 1.0
    assert "shortcut_variance_kept" not in history[1].losses
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.temporal.shortcut.state_dict().items())

    # stopped before the fit and resumed: the same weights as never stopping
    cfg = tiny_run(tmp_path / "b", media_dir, **{**stages, "train.steps": 1, "stages.temporal_steps": 0})
    VAETrainer(cfg, MediaPool.from_config(cfg.data)).fit()
    cfg = tiny_run(tmp_path / "b", media_dir, **stages)
    resumed = VAETrainer(cfg, MediaPool.from_config(cfg.data))
    assert [r.step for r in resumed.fit()] == [2, 3]
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_stages_longer_than_the_run_are_refused(media_dir, tmp_path):
    with pytest.raises(ConfigError, match="stages.spatial_steps \\+ stages.temporal_steps = 5 exceeds train.steps = 4"):
        tiny_run(tmp_path, media_dir, **{"train.steps": 4, "stages.spatial_steps": 2, "stages.temporal_steps": 3})
    with pytest.raises(ConfigError, match="stages.temporal_steps = -1"):
        tiny_run(tmp_path, media_dir, **{"stages.temporal_steps": -1})


def test_gan_switches_on_late_and_samples_are_written(media_dir, tmp_path):
    cfg = tiny_run(
        tmp_path,
        media_dir,
        **{"train.steps": 3, "loss.gan_weight": 0.1, "loss.gan_start_step": 2, "loss.gan_channels": 8, "loss.gan_layers": 1, "samples.count": 1},
    )
    trainer = VAETrainer(cfg, MediaPool.from_config(cfg.data))
    history = trainer.fit()
    assert "gan_d" not in history[1].losses and "gan_d" in history[2].losses
    assert "video/gan_g" in history[2].losses
    samples = sorted(p.name for p in (cfg.resolved_run_dir / "samples").iterdir())
    assert samples == ["step_00000003_clip0.mp4", "step_00000003_image0.png"]
    state = torch.load(cfg.checkpoint_dir / "step_00000003" / "training_state.pt", weights_only=True)
    assert "discriminator" in state and state["step"] == 3


def test_cli_train_eval_stats(media_dir, tmp_path, capsys):
    run_dir = tmp_path / "cli"
    code = main(
        ["vae", "train", "--source", str(media_dir), "--data.height=16", "--data.width=16", "--train.steps=2",
         f"--run_dir={run_dir}", "--logging.progress=false", "--samples.count=0"]
    )
    assert code == 0
    out = capsys.readouterr()
    assert "skipped" in out.err and "broken.mp4" in out.err
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    rejected = [json.loads(line) for line in (run_dir / "rejected_media.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in rejected] == ["broken.mp4"] and "unreadable video" in rejected[0]["reason"]

    report_path = tmp_path / "eval.json"
    code = main(["vae", "eval", str(media_dir), "--weights", str(checkpoint), "--height=16", "--width=16",
                 "--frames=9", "--device=cpu", "--output", str(report_path), "--model.tile_size=0"])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert [Path(c["path"]).name for c in report["clips"]] == ["a.mp4", "b.mp4", "still.png"]
    assert [c["frames"] for c in report["clips"]] == [9, 9, 1]
    assert -1 < report["mean_ssim"] < 1 and 0 < report["mean_psnr"] < 100
    assert report["encode_frames_per_second"] > 0 and report["peak_memory_gib"] > 0
    assert [Path(r["path"]).name for r in report["rejected"]] == ["broken.mp4"]

    stats_path = tmp_path / "stats.json"
    code = main(["vae", "stats", str(media_dir / "a.mp4"), "--weights", str(checkpoint), "--height=16",
                 "--width=16", "--frames=8", "--device=cpu", "--mode", "--output", str(stats_path)])
    assert code == 0
    stats = json.loads(stats_path.read_text())
    # Recompute from the checkpoint directly: the mean of the mode latents of the one clip.
    from mugv.vae_train.evaluate import load_clips, load_model

    model = load_model(str(checkpoint)).eval()
    (_, clip), = load_clips([str(media_dir / "a.mp4")], 16, 16, 8)[0]
    with torch.no_grad():
        z = model.encode_posterior(clip).mode()
    # Sums over the latents: their error scales with the latents' magnitude, not with the mean's.
    assert_close_to_scale(stats["latent_mean"], z.mean(dim=(0, 2, 3, 4)), scale=z)
    assert_close_to_scale(stats["latent_std"], z.transpose(0, 1).flatten(1).std(dim=1, unbiased=False), scale=z)
    assert stats["latent_elements_per_channel"] == 1 * 2 * 2
    assert "latent_mean = [" in capsys.readouterr().out
    assert set(load_file(checkpoint / "model.safetensors")) == set(model.state_dict())


def test_eval_scores_each_frame_against_its_own_reconstruction(tmp_path):
    # 57 frames, 1 mod 8 past one 48-frame chunk: eval's PSNR is that of forward's reconstruction
    # (frame i against frame i), not of the release's crop, which would score copies of frame 0
    # against frames 0..6 and frames 0..40 against frames 7..47, and drop frames 41..47.
    from mugv.eval.recon import psnr
    from mugv.vae_train.evaluate import evaluate, load_clips

    write_mp4(tmp_path / "long.mp4", moving_square(57, 32, 1), fps=8)
    model = trained_tiny_vae()
    report = evaluate(model, [str(tmp_path / "long.mp4")], 32, 32, 57)
    (_, clip), = load_clips([str(tmp_path / "long.mp4")], 32, 32, 57)[0]
    with torch.no_grad():
        aligned, _ = model(clip, sample=False)
        release = model.decode(model.encode(clip), 57, crop="release")

    def unit(v: torch.Tensor) -> torch.Tensor:
        return (v.clamp(-1, 1) + 1) / 2

    assert report.clips[0].frames == 57
    assert abs(report.clips[0].psnr - psnr(unit(aligned), unit(clip))) < 1e-4
    assert report.clips[0].psnr > psnr(unit(release), unit(clip)) + 0.1  # measured 9.88 vs 9.71 dB


def test_bf16_is_refused_on_cpu(media_dir, tmp_path):
    cfg = tiny_run(tmp_path, media_dir, **{"train.steps": 1, "train.precision": "bf16", "train.device": "cpu"})
    with pytest.raises(ConfigError, match="train.precision = 'bf16' needs a CUDA device"):
        VAETrainer(cfg, MediaPool.from_config(cfg.data))
    auto = tiny_run(tmp_path, media_dir, **{"train.device": "cpu"})
    assert not VAETrainer(auto, MediaPool.from_config(auto.data)).use_bf16


def test_a_curation_manifest_names_the_videos_of_its_kept_clips(tmp_path):
    import pandas as pd

    from mugv.vae_train.data import discover

    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"path": ["/a.mp4", "/a.mp4", "/b.mp4", "/c.mp4"],
                  "status": ["kept", "kept", "rejected", "kept"]}).to_parquet(manifest)
    assert discover([str(manifest)]) == [Path("/a.mp4"), Path("/c.mp4")]
