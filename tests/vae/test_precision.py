"""The VAE's compute precision (mugv/models/vae/precision.py) on the CPU.

bf16 keeps 8 significant bits (relative rounding 2^-9, about 0.2 %); through the ~20 layers of
the tiny VAE the trained model's latents move by 0.24 % of their scale and its decoded pixels by
1.1 % (measured on the clip below), so the bounds are 1 % and 3 % of scale. Random weights
amplify rounding several times more (about 5 %), which is why the trained tiny VAE is used.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mugv.config import SamplingConfig, from_dict
from mugv.errors import ConfigError
from mugv.models.vae.model import GroupNorm32
from mugv.models.vae.precision import describe_vae_precision, resolve_vae_precision, tf32_switches, vae_precision
from mugv.video.tensors import to_uint8

from numerics_testing import assert_close_to_scale
from vae_testing import moving_square, random_video, trained_tiny_vae

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained():
    return trained_tiny_vae()


def square_clip() -> torch.Tensor:
    return torch.from_numpy(moving_square(9, 64, 3)).permute(3, 0, 1, 2).float()[None] / 127.5 - 1


@torch.inference_mode()
def test_fp32_and_tf32_leave_cpu_results_bit_identical(tiny_vae):
    video = random_video(9, 32, 48)
    latents = tiny_vae.encode(video)
    pixels = tiny_vae.decode(latents, 9)
    for precision in ("fp32", "tf32", "auto"):
        with vae_precision(precision, CPU) as resolved:
            assert torch.equal(tiny_vae.encode(video), latents), precision
            assert torch.equal(tiny_vae.decode(latents, 9), pixels), precision
        assert resolved == ("fp32" if precision == "auto" else precision)


def test_group_norm32_is_group_norm_in_float32_and_keeps_bf16_statistics_exact():
    norm = GroupNorm32(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert torch.equal(norm(x), F.group_norm(x, 4, norm.weight, norm.bias, 1e-6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.group_norm(x.bfloat16().float(), 4, norm.weight, norm.bias, 1e-6).bfloat16())


@torch.inference_mode()
def test_bf16_is_close_to_fp32_and_returns_float32(trained):
    video = square_clip()
    latents = trained.encode(video)
    pixels = trained.decode(latents, 9)
    with vae_precision("bf16", CPU) as resolved:
        assert resolved == "bf16" and torch.is_autocast_enabled("cpu")
        bf16_latents = trained.encode(video)
        bf16_pixels = trained.decode(latents, 9)
    assert not torch.is_autocast_enabled("cpu")
    assert bf16_latents.dtype == bf16_pixels.dtype == torch.float32  # the float32 heads
    assert not torch.equal(bf16_latents, latents)  # autocast did run in bf16
    assert_close_to_scale(bf16_latents, latents, rel=1e-2)
    assert_close_to_scale(bf16_pixels, pixels, rel=3e-2)
    # 3 % of pixels in [-1, 1] is at most 4 of 255 levels, plus one for rounding
    frames, bf16_frames = to_uint8(pixels[0]), to_uint8(bf16_pixels[0])
    assert frames.dtype == bf16_frames.dtype == np.uint8 and frames.shape == bf16_frames.shape
    assert np.abs(frames.astype(int) - bf16_frames.astype(int)).max() <= 5


@pytest.mark.parametrize("precision, inside", [("tf32", "on"), ("fp32", "off"), ("bf16", "off")])
def test_tf32_switches_are_set_inside_the_call_and_restored(tiny_vae, precision, inside):
    switches = tf32_switches()
    saved = [getattr(owner, attr) for owner, attr, _, _ in switches]
    seen = []
    hook = tiny_vae.spatial.encoder.conv_in.register_forward_hook(
        lambda *_: seen.append([getattr(owner, attr) for owner, attr, _, _ in switches]))
    try:
        # a state neither setting produces: matmul TF32 on, convolution TF32 off
        (m_owner, m_attr, m_on, _), (c_owner, c_attr, _, c_off) = switches
        setattr(m_owner, m_attr, m_on)
        setattr(c_owner, c_attr, c_off)
        before = [getattr(owner, attr) for owner, attr, _, _ in switches]
        with torch.inference_mode(), pytest.raises(RuntimeError, match="stop"), vae_precision(precision, CPU):
            tiny_vae.encode(random_video(9, 16, 16))
            raise RuntimeError("stop")
        expected = [on if inside == "on" else off for _, _, on, off in switches]
        assert seen == [expected]
        assert [getattr(owner, attr) for owner, attr, _, _ in switches] == before  # restored after an error
    finally:
        hook.remove()
        for (owner, attr, _, _), value in zip(switches, saved):
            setattr(owner, attr, value)


def test_auto_is_fp32_on_cpu_and_bf16_on_cuda_with_bf16(monkeypatch):
    assert resolve_vae_precision("auto", CPU) == "fp32"
    assert describe_vae_precision("auto", CPU).startswith("VAE precision: fp32 (auto on cpu)")
    assert "no effect on the CPU" in describe_vae_precision("tf32", CPU)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_vae_precision("auto", cuda) == "bf16"
    assert resolve_vae_precision("tf32", cuda) == "tf32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_vae_precision("auto", cuda) == "fp32"


def test_an_unknown_precision_is_a_config_error_naming_the_value():
    with pytest.raises(ConfigError, match="vae_precision = 'fp16' is not one of 'auto', 'fp32', 'tf32', 'bf16'"):
        resolve_vae_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="sampling.vae_precision = 'half'"):
        from_dict(SamplingConfig, {"vae_precision": "half"}, prefix="sampling.")
    with pytest.raises(ConfigError, match="vae_precision = 'fp16'"), vae_precision("fp16", CPU):
        pass
