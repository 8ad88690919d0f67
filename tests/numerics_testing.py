"""Float comparisons that hold on any CPU and thread count.

A float32 sum taken in another order (another SIMD width, thread count, GEMM blocking, sequence
length or batch size) differs by a few ulps of the *largest* terms, so the error it leaves in an
output is proportional to the output's scale, not to each element: an element near zero can be
off by far more than its own size times any rtol. These helpers bound the worst element's error
by a fraction of the scale of the values compared.
"""

from __future__ import annotations

import torch


def scale_relative_error(actual, expected, scale=None) -> float:
    """max |actual - expected| / scale, where scale defaults to max |expected|."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs().max()
    scale = expected.double().abs().max() if scale is None else torch.as_tensor(scale, dtype=torch.float64).abs().max()
    return (diff / scale.clamp(min=torch.finfo(torch.float64).tiny)).item()


def assert_close_to_scale(actual, expected, rel: float = 1e-5, scale=None) -> None:
    """Assert max |actual - expected| <= rel * scale (scale: max |expected| unless given, e.g. the
    magnitude of the values a mean was taken over)."""
    error = scale_relative_error(actual, expected, scale)
    assert error <= rel, f"max |diff| is {error:.3g} of the values' scale, allowed {rel:.3g}"
