import math

import pytest
import torch

from mugv.eval.recon import psnr, ssim
from mugv.models.vae.model import DiagonalGaussian
from mugv.vae_train.config import VAELossConfig
from mugv.vae_train.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    discriminator_hinge_loss,
    kl_loss,
    laplacian,
    reconstruction_losses,
    saliency_weight,
)


def test_laplacian_of_a_quadratic_is_constant():
    y, x = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    frames = (x**2 + 2 * y**2).expand(1, 1, 2, 8, 8)
    lap = laplacian(frames)
    torch.testing.assert_close(lap[..., 1:-1, 1:-1], torch.full((1, 1, 2, 6, 6), 6.0))


def test_saliency_weight_follows_moving_edges():
    video = torch.zeros(1, 3, 3, 16, 16)
    video[:, :, 1:, 4:8, 4:8] = 1.0  # a square appears at frame 1 and stays
    weight = saliency_weight(video, floor=0.0)
    assert weight.shape == (1, 1, 3, 16, 16)
    torch.testing.assert_close(weight.mean(), torch.tensor(1.0))
    assert weight[0, 0, 1, 4, 4] > 0 and weight[0, 0, 1, 12, 12] == 0
    assert torch.equal(weight[:, :, 2], torch.zeros(1, 1, 16, 16))  # nothing changes at frame 2
    assert torch.equal(weight[:, :, 0], weight[:, :, 1])  # frame 0 takes frame 1's difference
    floored = saliency_weight(video, floor=0.25)
    torch.testing.assert_close(floored, 0.25 + 0.75 * weight)
    assert torch.equal(saliency_weight(video[:, :, :1], floor=0.1), torch.ones(1, 1, 1, 16, 16))


def test_reconstruction_losses_weight_l1_by_saliency():
    target = torch.zeros(1, 3, 3, 16, 16)
    target[:, :, 1:, 4:8, 4:8] = 1.0
    recon = target + 0.1
    plain = reconstruction_losses(recon, target, VAELossConfig(saliency=False))
    torch.testing.assert_close(plain["mse"], torch.tensor(0.01))
    torch.testing.assert_close(plain["l1"], torch.tensor(0.1))
    # A uniform error weighted by a mean-1 weight keeps its mean; an error on static pixels only
    # is down-weighted to the floor.
    salient = reconstruction_losses(recon, target, VAELossConfig(saliency=True, saliency_floor=0.0))
    torch.testing.assert_close(salient["l1"], torch.tensor(0.1))
    static_error = target.clone()
    static_error[..., 12:, 12:] += 0.5
    assert reconstruction_losses(static_error, target, VAELossConfig(saliency_floor=0.1))["l1"] < 0.5 * reconstruction_losses(static_error, target, VAELossConfig(saliency=False))["l1"]


def test_kl_is_divided_by_pixel_values():
    moments = torch.cat([torch.ones(2, 24, 1, 2, 2), torch.zeros(2, 24, 1, 2, 2)], dim=1)
    target = torch.zeros(2, 3, 8, 16, 16)
    # KL per element of N(1, 1) to N(0, 1) is 0.5; 96 elements per sample.
    torch.testing.assert_close(kl_loss(DiagonalGaussian(moments), target), torch.tensor(0.5 * 96 / (3 * 8 * 16 * 16)))


def test_psnr_and_ssim_known_values():
    target = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-6)
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-9)
    a, b = torch.full((3, 1, 16, 16), 0.2), torch.full((3, 1, 16, 16), 0.6)
    c1 = 0.01**2
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-6)
    noisy = (target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ssim(noisy, target) < 0.9 and psnr(noisy, target) < psnr((target + noisy) / 2, target)


def test_patch_discriminator_and_hinge():
    disc = PatchDiscriminator(channels=8, layers=2)
    logits = disc(torch.randn(2, 3, 3, 32, 32))
    assert logits.shape[0] == 6 and logits.ndim == 4
    assert discriminator_hinge_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert discriminator_hinge_loss(torch.zeros(4), torch.zeros(4)) == 1.0


def test_perceptual_loss_loads_local_weights_only(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="vgg.safetensors"):
        PerceptualLoss(tmp_path / "vgg.safetensors")
    torch.manual_seed(0)
    layers, channels = [], 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if item == "M":
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(channels, item, 3, padding=1), torch.nn.ReLU()]
            channels = item
    weights = {f"features.{k}": v for k, v in torch.nn.Sequential(*layers).state_dict().items()}
    save_file(weights, tmp_path / "vgg.safetensors")
    loss = PerceptualLoss(tmp_path / "vgg.safetensors")
    x = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    assert loss(x, x) == 0
    assert loss(x, x.flip(-1)) > 0
    assert math.isfinite(float(loss(x, torch.zeros_like(x))))
    save_file({"something.else": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not VGG16 feature weights"):
        PerceptualLoss(tmp_path / "bad.safetensors")

    # The same local weights give `mugv vae eval` its LPIPS column.
    from mugv.models.vae import MUGVideoVAE, VAEConfig
    from mugv.vae_train.evaluate import evaluate
    from mugv.video import write_mp4
    from vae_testing import moving_square

    write_mp4(tmp_path / "clip.mp4", moving_square(9, 32, 2), fps=8)
    report = evaluate(MUGVideoVAE(VAEConfig.from_preset("tiny")), [str(tmp_path / "clip.mp4")], 32, 32, 9, lpips_weights=str(tmp_path / "vgg.safetensors"))
    assert report.clips[0].lpips is not None and report.clips[0].lpips > 0
    assert report.to_dict()["mean_lpips"] == report.clips[0].lpips
