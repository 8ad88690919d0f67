"""The masked, per-frame flow-matching loss."""

from __future__ import annotations

import torch


def masked_flow_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE over the frames to generate.

    prediction: (B, C_out, T, H, W); only its first C = target.shape[1] channels are the velocity.
    target: (B, C, T, H, W). frame_mask: (B, T), True = frame to generate (in the loss).
    Per sample: the squared error summed over frames to generate, divided by
    (their count x C x H x W); then the (weighted) mean over the batch. A sample with no frame to
    generate contributes zero.
    """
    b, c, t, h, w = target.shape
    err = (prediction[:, :c].float() - target.float()).pow(2).sum(dim=(1, 3, 4))  # (B, T)
    if frame_mask is None:
        frame_mask = torch.ones(b, t, dtype=torch.bool, device=target.device)
    keep = frame_mask.to(err.dtype)
    per_sample = (err * keep).sum(1) / (keep.sum(1).clamp(min=1) * c * h * w)
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight.to(per_sample.dtype)).mean()
