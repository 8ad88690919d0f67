import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mugv.errors import ConfigError
from mugv.infer.pipeline import (
    GenerationError,
    GenerationRequest,
    VideoGenerator,
    fill_crop,
    frame_size,
    frames_for_duration,
)
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.model import MUGDiT
from mugv.models.text.encoders import build_text_encoder
from mugv.models.text.tiny import make_tiny_t5
from mugv.models.vae.config import VAEConfig
from mugv.models.vae.model import MUGVideoVAE
from mugv.video.tensors import to_uint8

from numerics_testing import assert_close_to_scale

TRAINED_TINY_VAE = Path(__file__).resolve().parents[1] / "golden" / "vae_tiny_trained_fp16.safetensors"


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    torch.manual_seed(0)
    encoder = build_text_encoder("t5", str(make_tiny_t5(tmp_path_factory.mktemp("t5"))), max_tokens=16)
    dit = MUGDiT(dataclasses.replace(DiTConfig.from_preset("debug"), text_dim=encoder.dim))
    with torch.no_grad():
        dit.final_layer.linear.weight.normal_(std=0.02)  # the fresh init predicts zero velocity
    return VideoGenerator(dit, MUGVideoVAE(VAEConfig.from_preset("tiny")), encoder)


def request(**kw) -> GenerationRequest:
    return GenerationRequest(prompt="a red car drives on the street", height=32, width=48, num_frames=17, steps=3, **kw)


def test_text_to_video_is_deterministic_per_seed(generator):
    a = generator.generate(request(seed=1))
    b = generator.generate(request(seed=1))
    c = generator.generate(request(seed=2))
    assert a.frames.shape == (17, 32, 48, 3) and a.frames.dtype == np.uint8
    assert a.latents.shape == (1, 24, 3, 4, 6)
    assert np.array_equal(a.frames, b.frames) and not np.array_equal(a.frames, c.frames)


def test_image_to_video_keeps_the_reference_frame(generator):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    out = generator.generate(request(image=image))
    reference = fill_crop(image[None], 32, 48)[0]
    assert np.array_equal(out.frames[0], reference)
    with torch.no_grad():
        clean = generator.vae.encode(torch.from_numpy(reference).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1)
    assert torch.equal(out.latents[:, :, :1], clean)  # latent frame 0 is the clean reference, exactly


def test_video_continuation_keeps_the_given_frames(generator):
    video = np.random.default_rng(1).integers(0, 255, (12, 32, 48, 3), dtype=np.uint8)
    out = generator.generate(request(video=video, continue_frames=9))
    assert np.array_equal(out.frames[:9], video[:9])


def test_frames_past_one_vae_chunk_line_up_with_their_latents(generator):
    # 57 frames = 8 latent frames, past the VAE's 48-frame chunk. The reference image's latent
    # holds 7 copies of it, then the image; the video is every latent decoded (64 frames) without
    # those 7 copies, so frame i is latent frame (i + 7) // 8's (the release's crop would keep the
    # copies and lose frames 41..47 instead).
    image = np.random.default_rng(2).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    out = generator.generate(dataclasses.replace(request(image=image), num_frames=57))
    with torch.no_grad():
        every_frame = to_uint8(generator.vae.decode(out.latents, num_frames=64)[0])
    assert out.frames.shape == (57, 32, 48, 3)
    assert np.abs(out.frames[1:].astype(int) - every_frame[8:].astype(int)).max() <= 1


def test_empty_negative_prompt_uses_the_null_text(generator):
    (_, _), (neg, neg_mask) = generator.encode_text(request(negative_prompt=""))
    null, null_mask = generator.dit.null_text(1)
    assert torch.equal(neg[:, : null.shape[1]], null) and torch.equal(neg_mask[:, : null.shape[1]], null_mask)


def test_offload_mode_gives_the_same_video(generator):
    plain = generator.generate(request(seed=3))
    generator.offload = True
    try:
        offloaded = generator.generate(request(seed=3))
    finally:
        generator.offload = False
    assert np.array_equal(plain.frames, offloaded.frames)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(height=30), "height 30 is not a positive multiple of 16"),
        (dict(num_frames=20), "use 17 or 25"),
        (dict(prompt="  "), "the prompt is empty"),
        (dict(video=np.zeros((4, 32, 48, 3), np.uint8), continue_frames=9), "continue_frames 9"),
    ],
)
def test_bad_requests_fail_before_any_work(generator, change, message):
    req = dataclasses.replace(request(), **change)
    with pytest.raises(GenerationError, match=message):
        generator.generate(req)


def test_sizes_and_durations():
    assert frame_size("720p", "16:9") == (720, 1280) and frame_size("480p", "9:16") == (848, 480)
    assert all(h % 16 == 0 and w % 16 == 0 for sizes in __import__("mugv.infer.pipeline", fromlist=["R"]).RESOLUTIONS.values() for h, w in sizes)
    assert frames_for_duration(5, 21) == 105 and frames_for_duration(3, 24) == 73
    with pytest.raises(GenerationError, match="unknown aspect"):
        frame_size("720p", "2:1")


def test_a_bf16_vae_gives_the_same_frame_format_close_to_fp32(generator):
    """I2V with the VAE (encode of the reference, decode of the result) in bf16 against fp32; the
    tiny VAE trained on CPU (tests/golden), as random weights amplify rounding (tests/vae/test_precision.py)."""
    from safetensors.torch import load_file

    vae = MUGVideoVAE(VAEConfig.from_preset("tiny")).eval()
    vae.load_state_dict({k: v.float() for k, v in load_file(TRAINED_TINY_VAE).items()})
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    out = {p: VideoGenerator(generator.dit, vae, generator.text_encoder, vae_precision=p).generate(request(image=image))
           for p in ("fp32", "bf16")}
    fp32, bf16 = out["fp32"], out["bf16"]
    assert bf16.frames.dtype == np.uint8 and bf16.frames.shape == fp32.frames.shape
    assert np.array_equal(bf16.frames[0], fp32.frames[0])  # the reference frame is kept exactly
    # measured: latents 0.28 % of their scale apart, frames at most 3 of 255 levels
    assert_close_to_scale(bf16.latents, fp32.latents, rel=1e-2)
    assert np.abs(bf16.frames.astype(int) - fp32.frames.astype(int)).max() <= 5
    with pytest.raises(ConfigError, match="vae_precision = 'fp16'"):
        VideoGenerator(generator.dit, vae, generator.text_encoder, vae_precision="fp16")
