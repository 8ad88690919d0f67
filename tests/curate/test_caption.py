"""Captions: existing ones win (input table, sidecar), then the template or Qwen2-VL captioner."""

from __future__ import annotations

import numpy as np
import pytest

from mugv.config import ConfigError
from mugv.curate.caption import CaptionConfig, TemplateCaptioner, caption_without_model, captioner_for, model_frames
from mugv.curate.testing import WORDS, write_random_qwen2vl

CONTEXT = {"path": "/nowhere/clip.mp4", "width": 192, "height": 144, "fps": 24.0, "duration": 2.0, "motion": 3.0}


def test_template_caption_describes_measured_properties():
    red = np.zeros((2, 32, 32, 3), np.uint8)
    red[..., 0] = 220
    text = TemplateCaptioner().caption(red, CONTEXT)
    assert text.startswith("A 2.0-second landscape video clip (192x144, 24 fps)")
    assert "moderate motion" in text and "red" in text
    gray = np.full((2, 32, 32, 3), 40, np.uint8)
    assert "dark" in TemplateCaptioner().caption(gray, {**CONTEXT, "width": 100, "height": 200, "motion": 0.2})
    assert "portrait" in TemplateCaptioner().caption(gray, {**CONTEXT, "width": 100, "height": 200})


def test_existing_captions_take_precedence(tmp_path, shots):
    video = tmp_path / "clip.mp4"
    context = {**CONTEXT, "path": str(video)}
    assert caption_without_model(CaptionConfig(), shots["a"], {**context, "input_caption": "a red kite"}) == ("a red kite", "input")
    (tmp_path / "clip.txt").write_text("a dog on a beach\n")
    assert caption_without_model(CaptionConfig(), shots["a"], context) == ("a dog on a beach", "sidecar")
    text, source = caption_without_model(CaptionConfig(use_existing=False), shots["a"], {**context, "input_caption": "a kite"})
    assert source == "template" and text.startswith("A 2.0-second")
    # A model captioner: the clip waits for it, with its frames sampled and shrunk.
    assert caption_without_model(CaptionConfig(captioner="qwen2vl", model_path="m"), shots["a"], context | {"path": "x"}) is None
    shown = model_frames(CaptionConfig(frames=3, short_side=56), shots["a"])
    assert shown.shape == (3, 56, 74, 3)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("qwen")
    write_random_qwen2vl(folder)
    return str(folder)


def test_qwen2vl_captioner_runs_from_a_local_folder(tiny_qwen, shots):
    cfg = CaptionConfig(captioner="qwen2vl", model_path=tiny_qwen, frames=3, short_side=56, max_new_tokens=6)
    captioner = captioner_for(cfg)
    text = captioner.caption_batch([model_frames(cfg, shots["a"])], [CONTEXT])[0]
    # Random weights say nothing sensible, but only the folder's vocabulary can come out, and the
    # same frames give the same caption (greedy decoding); the model is loaded once a process.
    assert text and set(text.split()) <= set(WORDS)
    assert text == captioner.caption_batch([model_frames(cfg, shots["a"])], [CONTEXT])[0]
    assert captioner_for(cfg) is captioner


def test_batched_captions_equal_one_clip_at_a_time(tiny_qwen, shots):
    """Clips of different sizes (so prompts of different lengths, padded on the left) captioned
    in one call read exactly as captioned alone, with greedy decoding."""
    cfg = CaptionConfig(captioner="qwen2vl", model_path=tiny_qwen, frames=3, short_side=56, max_new_tokens=8)
    captioner = captioner_for(cfg)
    clips = [
        model_frames(cfg, shots["a"]),
        model_frames(cfg, shots["b"][:, :, :112]),  # square: fewer image tokens
        model_frames(cfg, shots["c"])[:2],  # two frames: fewer still
        model_frames(cfg, shots["d"]),
    ]
    alone = [captioner.caption_batch([clip], [CONTEXT])[0] for clip in clips]
    # The clips are told apart, so a mix-up would show, and some captions end early, so the
    # finished ones are padded while the others go on.
    assert len(set(alone)) == len(clips) and len({len(text.split()) for text in alone}) > 1
    assert captioner.caption_batch(clips, [CONTEXT] * len(clips)) == alone


def test_qwen2vl_needs_a_local_folder():
    with pytest.raises(ConfigError, match="model_path"):
        CaptionConfig(captioner="qwen2vl").validate()
