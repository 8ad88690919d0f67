"""Training an enhancer through `mugv train`: the config (model family, pair source, sigma range),
the pair source, the VAE's latent normalisation, and the recipe end to end at a toy size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mugv.cli import main
from mugv.config import ConfigError, load_config
from mugv.data.pairs import PAIRS_FILE, LatentPairSource, PairSetError
from mugv.enhance.config import WanDiTConfig, WanVAEConfig
from mugv.models.dit.config import DiTConfig
from mugv.models.registry import build_model
from tests.numerics_testing import assert_close_to_scale

pytest.importorskip("diffusers")

TOY_MODEL = ["--model.dim=32", "--model.ffn_dim=64", "--model.num_heads=2", "--model.num_layers=1"]


def write_pairs(folder, count=6, shape=(16, 3, 4, 4), offset=1.0):
    """Pair i: clean latents all i, degraded = clean + offset (so a batch shows whether pairs stay together)."""
    folder.mkdir(parents=True, exist_ok=True)
    clean = torch.arange(count, dtype=torch.float32).view(-1, 1, 1, 1, 1).expand(count, *shape).contiguous()
    save_file({"clean": clean, "degraded": clean + offset}, folder / PAIRS_FILE)
    return folder


def test_the_model_section_follows_its_family_and_bad_values_are_named(tmp_path):
    pairs = str(write_pairs(tmp_path / "pairs"))
    cfg = load_config("enhancer", [f"--data.pairs={pairs}"])
    assert isinstance(cfg.model, WanDiTConfig) and cfg.model.preset == "debug" and cfg.model.dim == 128
    assert cfg.train.objective == "enhancer_flow" and cfg.enhancer.sigma_range == (0.2, 0.4)
    assert isinstance(load_config("debug").model, DiTConfig)  # no family: MUG-DiT, as before
    cases = {
        "--model.family=bogus": "model.family = 'bogus' is not one of",
        "--model.num_heads=3": "model.dim = 128 must be a multiple of model.num_heads = 3",
        "--model.num_layer=2": "did you mean 'model.num_layers'",
        "--model.condition_channels=8": "model.condition_channels = 8",
        "--enhancer.sigma_range=[0.4, 0.2]": "enhancer.sigma_range",
        "--data.pairs=": "data.pairs",
        "--model.family=mug-dit": "unknown config key 'model.dim' of model family 'mug-dit'",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
            load_config("enhancer", [override])
    with pytest.raises(ConfigError, match="data.source = 'pairs' feeds an enhancer"):
        load_config("debug", ["--data.source=pairs", f"--data.pairs={pairs}"])
    with pytest.raises(ConfigError, match="enhancer_flow"):
        from mugv.train.objectives import build_objective

        build_objective(load_config("debug", ["--train.objective=enhancer_flow"]), None)


def test_the_pair_source_keeps_pairs_together_and_resumes_exactly(tmp_path):
    cfg = load_config("enhancer", [f"--data.pairs={write_pairs(tmp_path / 'pairs')}", "--data.batch_size=4"])
    source = LatentPairSource(cfg.data, 16, 32, seed=0)
    seen = []
    for _ in range(3):  # two epochs: every pair once per epoch
        batch = source.next_batch()
        assert torch.equal(batch.degraded - batch.clean, torch.ones_like(batch.clean))
        assert batch.text.shape == (4, 1, 32) and not batch.text.any()
        seen += batch.clean[:, 0, 0, 0, 0].int().tolist()
    assert sorted(seen[:6]) == sorted(seen[6:]) == list(range(6))
    state = source.state_dict()
    expected = source.next_batch()
    resumed = LatentPairSource(cfg.data, 16, 32, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch().clean, expected.clean)
    with pytest.raises(PairSetError, match="holds 16-channel latents, but the model takes 8"):
        LatentPairSource(cfg.data, 8, 32)
    with pytest.raises(PairSetError, match="no pairs.safetensors"):
        LatentPairSource(load_config("enhancer", [f"--data.pairs={tmp_path}"]).data, 16, 32)


def test_folding_the_latent_normalisation_keeps_reconstructions():
    from mugv.demo.world import all_scenes, render
    from mugv.enhance.pairs import decoder_output, encode, fold_latent_normalisation

    torch.manual_seed(0)
    vae = build_model(WanVAEConfig.from_preset("debug"))
    clips = np.stack([render(s, frames=1, height=16, width=16, seed=i) for i, s in enumerate(all_scenes()[:2])])
    before = [decoder_output(vae, vae.encode(torch.from_numpy(c)[None].permute(0, 4, 1, 2, 3).float() / 127.5 - 1)
                             .latent_dist.mean) for c in clips]
    with torch.no_grad():
        raw = [vae.encode(torch.from_numpy(c)[None].permute(0, 4, 1, 2, 3).float() / 127.5 - 1).latent_dist.mean
               for c in clips]
        fold_latent_normalisation(vae, clips)
        latents = torch.cat([encode(vae, c) for c in clips])
        for clip, raw_mean, old in zip(clips, raw, before):
            new_mean = vae.encode(torch.from_numpy(clip)[None].permute(0, 4, 1, 2, 3).float() / 127.5 - 1).latent_dist.mean
            assert not torch.allclose(new_mean, raw_mean)
            assert_close_to_scale(decoder_output(vae, new_mean), old.detach(), rel=1e-4)
    assert_close_to_scale(latents.mean(dim=(0, 2, 3, 4)), torch.zeros(16), rel=1e-4, scale=1.0)
    assert_close_to_scale(latents.std(dim=(0, 2, 3, 4)), torch.ones(16), rel=1e-4, scale=1.0)


def test_a_prepared_vae_starts_at_the_mean_colour_and_reconstructs_a_still_clip_frame_by_frame():
    from mugv.enhance.pairs import decoder_output, prepare_vae_for_training

    torch.manual_seed(0)
    vae = build_model(WanVAEConfig.from_preset("debug"))
    frame = torch.rand(1, 3, 1, 16, 16) * 2 - 1
    still = frame.expand(1, 3, 5, 16, 16).contiguous()
    with torch.no_grad():
        prepare_vae_for_training(vae, still)
        start = decoder_output(vae, vae.encode(still).latent_dist.mean)
        assert_close_to_scale(start, still.mean(dim=(2, 3, 4), keepdim=True).expand_as(start), rel=1e-6, scale=1.0)
        vae.decoder.conv_out.weight[:, :, -1].normal_(0, 0.1)  # as if single frames had trained it
        alone = decoder_output(vae, vae.encode(frame).latent_dist.mean)
        clip = decoder_output(vae, vae.encode(still).latent_dist.mean)
    assert clip.shape == still.shape
    for t in range(still.shape[2]):
        assert_close_to_scale(clip[:, :, t], alone[:, :, 0], rel=1e-5)


def test_a_few_trainer_steps_lower_the_enhancer_loss(tmp_path):
    from mugv.train.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(8, 16, 3, 4, 4, generator=g)
    folder = tmp_path / "pairs"
    folder.mkdir()
    # the degradation: a fixed blend toward each clip's mean, which the condition branch shows
    save_file({"clean": clean, "degraded": 0.5 * clean + 0.5 * clean.mean(dim=(2, 3, 4), keepdim=True)},
              folder / PAIRS_FILE)
    cfg = load_config("enhancer", [f"--data.pairs={folder}", f"--run_dir={tmp_path / 'run'}", "--train.steps=40",
                                   "--optim.warmup_steps=0", "--optim.schedule=constant", "--optim.lr=3e-3",
                                   "--checkpoint.every_steps=0", "--logging.every_steps=100", *TOY_MODEL])
    history = Trainer(cfg).fit()
    losses = [h["loss"] for h in history]
    print(f"enhancer through the trainer: loss {np.mean(losses[:5]):.3f} -> {np.mean(losses[-5:]):.3f} in 40 steps")
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert all(0.2 <= h["sigma_mean"] <= 0.4 for h in history) and history[-1]["tflops"] > 0
    assert (tmp_path / "run" / "checkpoints" / "step_00000040" / ".metadata").is_file()


def test_the_recipe_runs_end_to_end_at_a_toy_size(tmp_path, capsys):
    pairs, run, report = tmp_path / "pairs", tmp_path / "run", tmp_path / "report"
    assert main(["enhancer", "pairs", "--out", str(pairs), "--clips", "2", "--held-out", "1", "--frames", "5",
                 "--size", "32", "--vae-image-steps", "1", "--vae-video-steps", "1"]) == 0
    info = json.loads((pairs / "pairs.json").read_text())
    assert info["held_out"] == 1 and info["vae_held_out_psnr"] > 0
    assert main(["train", "--config", "enhancer", f"--data.pairs={pairs}", f"--run_dir={run}", "--train.steps=2",
                 "--data.batch_size=2", *TOY_MODEL]) == 0
    assert main(["enhancer", "eval", "--pairs", str(pairs), "--run", str(run), "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["mean"]) == {"degraded", "degraded_round_trip", "enhanced", "clean_round_trip"}
    assert (report / "clip_00.mp4").is_file() and (report / "clip_00.png").is_file()
    assert "degraded | enhanced | clean" in (report / "report.html").read_text()
    assert main(["enhancer", "pairs", "--out", str(pairs), "--frames", "8"]) != 0
    assert "--frames 8 must be 4k+1" in capsys.readouterr().err
