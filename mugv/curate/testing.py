"""A random-weight captioning model saved like a real one, for tests and the captioning
benchmark (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

WORDS = ("[UNK]", "a", "video", "of", "dog", "running", "beach", "describe", "this", "user", "assistant", "system", "you")


def write_random_qwen2vl(folder: str | Path, hidden: int = 32, layers: int = 2, image_tokens: int = 16) -> None:
    """A Qwen2-VL folder (weights, tokenizer, `preprocessor_config.json`) with random weights and
    the 20-word vocabulary of `WORDS` and the special tokens; `hidden` wide, `layers` deep (half
    as many vision blocks), at most `image_tokens` tokens an image."""
    import torch
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
    vocab = {w: i for i, w in enumerate(special + list(WORDS))}
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
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * image_tokens).save_pretrained(folder)
    heads = max(2, hidden // 64)
    rotary = hidden // heads // 2  # rotary frequencies a head, split among time, height and width
    sections = [rotary // 4, (rotary - rotary // 4) // 2, rotary - rotary // 4 - (rotary - rotary // 4) // 2]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": sections},
            bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=max(1, layers // 2), embed_dim=hidden, hidden_size=hidden, num_heads=heads, mlp_ratio=2,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        ),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    # At the usual 0.02 initial scale every clip gets the same caption; at 0.5 the captions
    # depend on the frames and end at different lengths, so a batching mix-up would show.
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(std=0.5)
    model.save_pretrained(folder)
