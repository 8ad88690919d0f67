"""Rectified flow: the path, timestep sampling and shift, the loss, and the Euler/CFG sampler.

Conventions (MUGV-SPEC section 2): sigma in [0, 1] is the noise level, tau = 1000 * sigma is
what the model sees; x_sigma = (1 - sigma) * x0 + sigma * noise; the model predicts the velocity
v = x0 - noise, pointing from noise toward data.
"""

from mugv.flow.loss import masked_flow_loss, per_sample_flow_loss
from mugv.flow.path import interpolate, velocity_target
from mugv.flow.sampler import CFGVelocity, euler_sample
from mugv.flow.timesteps import sample_sigmas, sampling_sigmas, shift_ratio, shift_sigma

__all__ = [
    "CFGVelocity",
    "euler_sample",
    "interpolate",
    "masked_flow_loss",
    "per_sample_flow_loss",
    "sample_sigmas",
    "sampling_sigmas",
    "shift_ratio",
    "shift_sigma",
    "velocity_target",
]
