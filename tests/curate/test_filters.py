"""Filters: sharpness, motion, aesthetics (photometric and LAION-style), post-processing cues
and the judge hook, each on footage built to trip it or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from curate_testing import shot

from mugv.curate import aesthetic, motion, postprocess, sharpness
from mugv.video import synthetic, to_gray


def test_sharpness_separates_sharp_from_blurred(shots):
    cfg = sharpness.SharpnessConfig()
    sharp, blurred = sharpness.sharpness_score(cfg, shots["a"]), sharpness.sharpness_score(cfg, synthetic.blur(shots["a"]))
    assert cfg.min_score < sharp < cfg.max_score and sharpness.sharpness_reasons(cfg, sharp) == []
    assert blurred < cfg.min_score and sharpness.sharpness_reasons(cfg, blurred) == ["blurry"]
    noise = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    assert sharpness.sharpness_reasons(cfg, sharpness.sharpness_score(cfg, noise)) == ["oversharp_or_noisy"]


def test_motion_measures_pan_speed_in_pixels():
    cfg = motion.MotionConfig()
    for speed in (1.5, 4.0):
        measured = motion.motion_score(cfg, shot(5, frames=24, speed=speed))
        # the pan moves speed px horizontally and speed/2 px vertically per frame
        assert measured == pytest.approx(speed * np.hypot(1, 0.5), rel=0.25)
        assert motion.motion_score(cfg, to_gray(shot(5, frames=24, speed=speed))) == measured  # luma in: the same
    still = motion.motion_score(cfg, synthetic.freeze(shot(5, frames=24)))
    assert still < 0.05 and motion.motion_reasons(cfg, still) == ["low_motion"]
    assert motion.motion_reasons(cfg, 25.0) == ["high_motion"]


def test_photometric_aesthetic_rejects_black_and_flat_footage(shots):
    cfg = aesthetic.AestheticConfig()
    textured = aesthetic.aesthetic_score(cfg, shots["a"])
    black = aesthetic.aesthetic_score(cfg, np.zeros((4, 32, 32, 3), np.uint8))
    flat_gray = aesthetic.aesthetic_score(cfg, np.full((4, 32, 32, 3), 120, np.uint8))
    assert textured > cfg.min_score > flat_gray > black
    assert black == pytest.approx(0.0) and aesthetic.aesthetic_reasons(cfg, black) == ["low_aesthetic"]


def test_laion_scorer_runs_clip_and_the_mlp_head_from_local_files(tmp_path, shots):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")
    head = aesthetic.laion_head(16)
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, tmp_path / "head.pth")

    cfg = aesthetic.AestheticConfig(scorer="laion", clip_model=str(tmp_path / "clip"), head_weights=str(tmp_path / "head.pth"))
    scorer = aesthetic.LaionScorer(cfg.clip_model, cfg.head_weights)
    frames = shots["a"][:2]
    with torch.no_grad():
        pixels = scorer.processor(images=list(frames), return_tensors="pt")["pixel_values"]
        embeds = torch.nn.functional.normalize(scorer.clip(pixel_values=pixels).image_embeds, dim=-1)
        expected = float(head.eval()(embeds).mean())
    assert scorer.score(frames) == pytest.approx(expected, rel=1e-5)
    assert isinstance(aesthetic.aesthetic_score(cfg, shots["a"]), float)


def test_laion_scorer_needs_local_paths():
    from mugv.config import ConfigError

    with pytest.raises(ConfigError, match="clip_model"):
        aesthetic.AestheticConfig(scorer="laion").validate()


def _reasons(frames: np.ndarray) -> list[str]:
    cfg = postprocess.PostprocessConfig()
    return postprocess.postprocess_reasons(cfg, postprocess.postprocess_scores(cfg, frames), frames)


def test_postprocess_passes_clean_footage(shots):
    assert _reasons(shots["a"]) == []
    assert _reasons(shot(6, speed=3.0)) == []


def test_postprocess_detects_each_artifact(shots):
    assert _reasons(synthetic.overlay_text(shots["a"])) == ["text_overlay"]
    assert _reasons(synthetic.letterbox(shots["a"])) == ["letterbox"]
    pillar = shots["a"].copy()
    pillar[:, :, :24] = 0
    pillar[:, :, -24:] = 0
    assert _reasons(pillar) == ["pillarbox"]
    assert _reasons(synthetic.freeze(shots["a"])) == ["static"]
    held = np.concatenate([shots["a"][:16], np.repeat(shots["a"][16:17], 24, axis=0), shots["a"][17:25]])  # a held frame
    assert _reasons(held) == ["frozen_frames"]
    ramp = np.r_[np.full(24, 6.0), np.full(24, 0.5)]  # from fast to slow motion, continuously
    assert _reasons(shot(8, speed=ramp)) == ["speed_change"]
    assert _reasons(shot(9, speed=1.0, shake=6.0)) == ["shake"]


def judge_rejects_bright(frames: np.ndarray, metadata: dict) -> list[str]:
    """A stand-in judge for the hook test: flags clips brighter than average."""
    return ["too_bright"] if frames.mean() > metadata["brightness_limit"] else []


def test_judge_hook_adds_reasons(shots):
    cfg = postprocess.PostprocessConfig(judge=f"{__name__}:judge_rejects_bright")
    mean = float(shots["a"].mean())
    assert postprocess.judge_reasons(cfg, shots["a"], {"brightness_limit": mean - 20}) == ["judge:too_bright"]
    assert postprocess.judge_reasons(cfg, shots["a"], {"brightness_limit": mean + 20}) == []
    assert postprocess.judge_reasons(postprocess.PostprocessConfig(), shots["a"], {}) == []
