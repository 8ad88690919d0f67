"""The masked, per-frame flow-matching loss."""

from __future__ import annotations

import torch


def per_sample_flow_loss(
    prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) velocity errors: per sample, the squared error summed over the frames to generate,
    divided by (their count x C x H x W). A sample with no frame to generate gives zero.

    prediction: (B, C_out, T, H, W); only its first C = target.shape[1] channels are the velocity.
    target: (B, C, T, H, W). frame_mask: (B, T), True = frame to generate (in the loss).
    """
    b, c, t, h, w = target.shape
    err = (prediction[:, :c].float() - target.float()).pow(2).sum(dim=(1, 3, 4))  # (B, T)
    if frame_mask is None:
        frame_mask = torch.ones(b, t, dtype=torch.bool, device=target.device)
    keep = frame_mask.to(err.dtype)
    return (err * keep).sum(1) / (keep.sum(1).clamp(min=1) * c * h * w)


def masked_flow_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE over the frames to generate: the (weighted) batch mean of `per_sample_flow_loss`."""
    per_sample = per_sample_flow_loss(prediction, target, frame_mask)
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight.to(per_sample.dtype)).mean()
