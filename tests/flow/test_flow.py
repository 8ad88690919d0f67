"""The flow-matching math, checked against closed forms."""

import math

import pytest
import torch

from mugv.flow import (
    CFGVelocity,
    euler_sample,
    interpolate,
    masked_flow_loss,
    sample_sigmas,
    sampling_sigmas,
    shift_ratio,
    shift_sigma,
    velocity_target,
)


def test_path_endpoints_and_derivative():
    x0, noise = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    assert torch.equal(interpolate(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(3)), noise)
    sigma, h = torch.tensor([0.3, 0.5, 0.9], dtype=torch.float64), 1e-6
    x0, noise = x0.double(), noise.double()
    # moving sigma down by h moves the sample by h * velocity
    step = (interpolate(x0, noise, sigma - h) - interpolate(x0, noise, sigma)) / h
    torch.testing.assert_close(step, velocity_target(x0, noise))


def test_euler_with_the_true_velocity_lands_exactly_on_the_data():
    """On a straight path the velocity is constant, so Euler is exact on any grid."""
    x0 = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    for sigmas in (sampling_sigmas(1), sampling_sigmas(7, ratio=3.0)):
        out = euler_sample(lambda z, s: velocity_target(x0, noise), noise, sigmas)
        torch.testing.assert_close(out, x0)


def test_shift_is_identity_at_ratio_one_and_keeps_the_endpoints():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(shift_sigma(s, 1.0), s)
    shifted = shift_sigma(s, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert bool((shifted[1:-1] > s[1:-1]).all())  # bigger inputs are pushed toward noise
    assert bool((shifted.diff() > 0).all())
    # closed form at sigma = 1/2: r / (1 + r)
    assert shift_sigma(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    # shifting by r then by 1/r is the identity
    torch.testing.assert_close(shift_sigma(shift_sigma(s, 3.0), 1 / 3.0), s)


def test_shift_ratio_of_the_release():
    assert shift_ratio(512, 512, 1) == 1.0
    assert shift_ratio(720, 1280, 14) == pytest.approx(math.sqrt(720 * 1280 / 512**2) * math.sqrt(14))
    with pytest.raises(ValueError):
        shift_ratio(0, 512, 1)


def test_logit_normal_sigmas_have_the_requested_logit_moments():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(200_000, generator=g, mean=0.5, std=0.8).double()
    logit = torch.log(s / (1 - s))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01)
    assert logit.std().item() == pytest.approx(0.8, abs=0.01)
    u = sample_sigmas(100_000, generator=g, kind="uniform")
    assert 0 <= u.min() and u.max() <= 1 and u.mean().item() == pytest.approx(0.5, abs=0.01)


def test_sampling_grid():
    grid = sampling_sigmas(25)
    assert len(grid) == 26 and grid[0] == 1 and grid[-1] == 0
    torch.testing.assert_close(grid[:-1], 1 - torch.arange(25, dtype=torch.float64) / 25)
    shifted = sampling_sigmas(25, ratio=4.0)
    assert bool((shifted.diff() < 0).all())
    torch.testing.assert_close(shifted[:-1], shift_sigma(grid[:-1], 4.0))


def test_loss_normalises_per_frame_and_ignores_conditioning_frames():
    target = torch.zeros(2, 3, 4, 2, 2)
    pred = torch.zeros(2, 6, 4, 2, 2)  # twice the channels: only the first 3 count
    pred[:, :3] = 2.0
    pred[:, 3:] = 100.0
    assert masked_flow_loss(pred, target).item() == pytest.approx(4.0)
    mask = torch.tensor([[False, True, True, True], [False, False, True, True]])
    pred[:, :3, 0] = 1e6  # errors on conditioning frames do not count
    pred[1, :3, 1] = 1e6
    assert masked_flow_loss(pred, target, mask).item() == pytest.approx(4.0)
    # per-sample normalisation by the number of frames to generate, then a batch mean
    pred[:, :3, 3] = 4.0
    expected = ((4 * 2 + 16) / 3 + (4 + 16) / 2) / 2
    assert masked_flow_loss(pred, target, mask).item() == pytest.approx(expected)
    weights = torch.tensor([0.3, 1.0])
    assert masked_flow_loss(pred, target, mask, weights).item() == pytest.approx((0.3 * 8 + 10) / 2)


def test_loss_gradient_does_not_reach_conditioning_frames():
    pred = torch.randn(1, 4, 3, 2, 2, requires_grad=True)
    masked_flow_loss(pred, torch.randn(1, 4, 3, 2, 2), torch.tensor([[False, True, True]])).backward()
    assert pred.grad[:, :, 0].abs().sum() == 0 and pred.grad[:, :, 1:].abs().sum() > 0


def test_classifier_free_guidance_combines_one_doubled_batch():
    calls = []

    def model_fn(z, sigma, cond):
        calls.append(z.shape[0])
        return z * cond[:, None, None, None, None]

    z = torch.randn(2, 1, 1, 2, 2)
    guided = CFGVelocity(model_fn, torch.tensor([3.0, 3.0]), torch.tensor([1.0, 1.0]), scale=4.0,
                         combine=lambda c, u: torch.cat([c, u]))
    out = guided(z, torch.ones(2))
    torch.testing.assert_close(out, z * (1 + 4.0 * (3 - 1)))
    assert calls == [4]
    unguided = CFGVelocity(model_fn, torch.tensor([3.0, 3.0]), None, scale=1.0, combine=None)
    torch.testing.assert_close(unguided(z, torch.ones(2)), 3 * z)


def test_conditioning_frames_are_reset_after_every_step():
    noise = torch.randn(1, 2, 3, 2, 2)
    clean = torch.randn(1, 2, 3, 2, 2)
    mask = torch.tensor([[False, True, True]])
    seen = []

    def velocity(z, sigma):
        seen.append(z[:, :, 0].clone())
        return torch.randn_like(z)  # a velocity that would move the conditioning frame

    out = euler_sample(velocity, noise, sampling_sigmas(5), cond_latents=clean, frame_mask=mask)
    assert torch.equal(out[:, :, 0], clean[:, :, 0])
    assert all(torch.equal(frame, clean[:, :, 0]) for frame in seen)
    assert not torch.equal(out[:, :, 1:], clean[:, :, 1:])
    with pytest.raises(ValueError, match="cond_latents"):
        euler_sample(velocity, noise, sampling_sigmas(2), frame_mask=mask)
