"""Validation loss at fixed noise levels with fixed noise, so curves compare across runs and stages."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mugv.data.batch import LatentBatch
from mugv.flow import interpolate, masked_flow_loss, velocity_target
from mugv.utils.seeds import derived_seed

DEFAULT_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    batches: Sequence[LatentBatch],
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    num_train_timesteps: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean flow-matching loss over `batches` at each noise level in `sigmas` (text-to-video, no
    caption dropout). The noise of batch j is drawn from a generator seeded by (seed, j), so the
    same model and data always give the same number."""
    was_training = model.training
    model.eval()
    per_sigma = {float(s): 0.0 for s in sigmas}
    for j, batch in enumerate(batches):
        batch = batch.to(device)
        x0 = batch.latents
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(derived_seed(seed, j))).to(x0)
        frame_mask = torch.ones(x0.shape[0], x0.shape[2], dtype=torch.bool, device=x0.device)
        for sigma in per_sigma:
            level = torch.full((x0.shape[0],), sigma, device=x0.device)
            prediction = model(
                interpolate(x0, noise, level),
                level * num_train_timesteps,
                batch.text,
                fps=batch.fps,
                text_mask=batch.text_mask,
                frame_mask=frame_mask,
            )
            per_sigma[sigma] += masked_flow_loss(prediction, velocity_target(x0, noise), frame_mask).item()
    model.train(was_training)
    count = max(len(batches), 1)
    out = {f"val/loss@{sigma:.2f}": total / count for sigma, total in per_sigma.items()}
    out["val/loss"] = sum(out.values()) / len(per_sigma)
    return out
