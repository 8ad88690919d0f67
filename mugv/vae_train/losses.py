"""VAE training losses: saliency-weighted reconstruction, KL, perceptual (local weights only),
and a patch discriminator with hinge losses (MUGV-SPEC section 3, item 5)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mugv.models.vae.model import DiagonalGaussian
from mugv.vae_train.config import VAELossConfig

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(frames: Tensor) -> Tensor:
    """4-neighbour Laplacian of every channel of every frame; (B, C, T, H, W) -> same shape."""
    b, c, t, h, w = frames.shape
    flat = frames.transpose(1, 2).reshape(b * t * c, 1, h, w)
    kernel = _LAPLACIAN.to(frames.device, frames.dtype).view(1, 1, 3, 3)
    out = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), kernel)
    return out.view(b, t, c, h, w).transpose(1, 2)


def saliency_weight(target: Tensor, floor: float) -> Tensor:
    """Per-pixel L1 weight (B, 1, T, H, W): the absolute temporal difference of the Laplacian of
    the target's luminance, normalised to mean 1 per sample, mixed with a uniform `floor`.
    Frame 0 takes the difference to frame 1; a single frame has uniform weight."""
    b, _, t, h, w = target.shape
    if t == 1:
        return target.new_ones(b, 1, 1, h, w)
    edges = laplacian(target.mean(dim=1, keepdim=True))
    change = (edges[:, :, 1:] - edges[:, :, :-1]).abs()
    change = torch.cat([change[:, :, :1], change], dim=2)
    mean = change.mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-8)
    return floor + (1.0 - floor) * change / mean


def reconstruction_losses(recon: Tensor, target: Tensor, cfg: VAELossConfig) -> dict[str, Tensor]:
    """MSE and (saliency-weighted) L1, both means over pixel values."""
    error = recon - target
    weight = saliency_weight(target, cfg.saliency_floor) if cfg.saliency else 1.0
    return {"mse": error.square().mean(), "l1": (error.abs() * weight).mean()}


def kl_loss(posterior: DiagonalGaussian, target: Tensor) -> Tensor:
    """KL summed over latent elements, per sample, divided by the pixel values of a sample."""
    return posterior.kl().mean() / target[0].numel()


# --------------------------------------------------------------------------------------------
# Perceptual distance
# --------------------------------------------------------------------------------------------

# VGG16 conv widths, "M" = max-pool; feature taps after the ReLUs closing each stage.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # torchvision `features` indices of relu1_2 .. relu5_3
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on VGG16 features, loaded from a local file only.

    The file holds the common VGG16 layer names (``features.{i}.weight/bias``) and optionally the
    LPIPS linear heads (``lin{k}.model.1.weight``); without heads every channel weighs the same.
    Frames are compared one by one; returns the mean distance."""

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        widths = (64, 128, 256, 512, 512)
        self.heads = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self._load(Path(weights_path))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        from mugv.models.vae.adapters import read_state_dict

        state = read_state_dict(path)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        expected = set(self.features.state_dict())
        if set(features) != expected:
            missing = sorted(expected - set(features))
            raise ValueError(f"{path}: not VGG16 feature weights; missing {missing[:4]}")
        self.features.load_state_dict(features)
        heads = {f"{k}.weight": state[f"lin{k}.model.1.weight"] for k in range(5) if f"lin{k}.model.1.weight" in state}
        if heads:
            self.heads.load_state_dict(heads)
        else:
            for head, width in zip(self.heads, (64, 128, 256, 512, 512)):
                nn.init.constant_(head.weight, 1.0 / width)

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        frames = torch.cat([recon, target]).transpose(1, 2).flatten(0, 1)  # (2BT, 3, H, W)
        x = (frames - self.shift) / self.scale
        distance = x.new_zeros(())
        tap = 0
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == _TAPS[tap]:
                a, b = F.normalize(x, dim=1, eps=1e-10).chunk(2)
                distance = distance + self.heads[tap]((a - b).square()).mean()
                tap += 1
                if tap == len(_TAPS):
                    break
        return distance


# --------------------------------------------------------------------------------------------
# Adversarial
# --------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN on single frames: a grid of real/fake logits per frame."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride=stride, padding=1), nn.GroupNorm(1, out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, video: Tensor) -> Tensor:
        return self.net(video.transpose(1, 2).flatten(0, 1))


def discriminator_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()
