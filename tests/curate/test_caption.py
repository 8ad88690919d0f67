"""Captions: existing ones win (input table, sidecar), then the template or Qwen2-VL captioner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mugv.config import ConfigError
from mugv.curate.caption import CaptionConfig, TemplateCaptioner, caption_clip, make_captioner

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
    assert caption_clip(CaptionConfig(), shots["a"], context, existing="a red kite") == ("a red kite", "input")
    (tmp_path / "clip.txt").write_text("a dog on a beach\n")
    assert caption_clip(CaptionConfig(), shots["a"], context) == ("a dog on a beach", "sidecar")
    text, source = caption_clip(CaptionConfig(use_existing=False), shots["a"], context, existing="a red kite")
    assert source == "template" and text.startswith("A 2.0-second")


def _tiny_qwen2vl(folder) -> None:
    """A random-weight Qwen2-VL with a 20-word vocabulary, saved like a real model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    words = ["[UNK]", "a", "video", "of", "dog", "running", "beach", "describe", "this", "user", "assistant", "system", "you"]
    vocab = {w: i for i, w in enumerate(special + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special[1:],
    )
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16).save_pretrained(folder)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=512, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        ),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)


def test_qwen2vl_captioner_runs_from_a_local_folder(tmp_path, shots):
    _tiny_qwen2vl(tmp_path / "qwen")
    cfg = CaptionConfig(captioner="qwen2vl", model_path=str(tmp_path / "qwen"), frames=3, short_side=56, max_new_tokens=6)
    text, source = caption_clip(cfg, shots["a"], CONTEXT)
    assert source == "qwen2vl"
    # Random weights say nothing sensible, but only the folder's vocabulary can come out, and the
    # same frames give the same caption (greedy decoding).
    assert set(text.split()) <= {
        "[UNK]",
        "a",
        "video",
        "of",
        "dog",
        "running",
        "beach",
        "describe",
        "this",
        "user",
        "assistant",
        "system",
        "you",
    }
    assert text == caption_clip(cfg, shots["a"], CONTEXT)[0]
    assert make_captioner(cfg.captioner, cfg.model_path, cfg.prompt, cfg.max_new_tokens, cfg.device) is make_captioner(
        cfg.captioner, cfg.model_path, cfg.prompt, cfg.max_new_tokens, cfg.device
    )


def test_qwen2vl_needs_a_local_folder():
    with pytest.raises(ConfigError, match="model_path"):
        CaptionConfig(captioner="qwen2vl").validate()
