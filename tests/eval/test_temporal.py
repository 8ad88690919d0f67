"""Analytic checks of the flow and pixel metrics of `mugv eval`."""

from __future__ import annotations

import numpy as np
import pytest

from mugv.eval import temporal
from mugv.video.synthetic import freeze, panning_shot


@pytest.fixture(scope="module")
def pan() -> np.ndarray:
    return panning_shot(seed=3, frames=25, height=96, width=128, speed=2.0)


def test_static_video_has_flicker_one_dynamic_degree_zero_and_perfect_smoothness(pan):
    still = freeze(pan)
    assert temporal.temporal_flickering(still) == 1.0
    reading = temporal.dynamic_degree(still, fps=24)
    assert reading.moving is False and reading.moving_share == 0.0
    assert max(reading.pair_scores) < 0.05
    assert temporal.motion_smoothness_proxy(still) == pytest.approx(1.0, abs=1e-6)
    assert temporal.frozen_share(still) == 1.0


def test_flicker_is_vbench_formula_on_known_differences():
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    frames[1] = 51  # |0 - 51| = 51, then |51 - 0| = 51: mean MAE 51
    assert temporal.temporal_flickering(frames) == pytest.approx((255 - 51) / 255)
    assert temporal.frozen_share(frames) == 0.0


def test_panning_shot_moves_and_its_pair_scores_are_the_pan_speed(pan):
    reading = temporal.dynamic_degree(pan, fps=8)  # 8 fps: every frame is sampled
    assert reading.moving
    # the texture moves (2, 1) px per frame: |v| = sqrt(5)
    assert np.median(reading.pair_scores) == pytest.approx(np.sqrt(5), rel=0.15)


class ConstantFlow:
    """A flow estimator that reports the same magnitude for every pair, and counts its calls."""

    def __init__(self, magnitude: float):
        self.magnitude, self.calls = magnitude, 0

    def __call__(self, first, second):
        self.calls += 1
        flow = np.zeros((*first.shape[:2], 2), np.float32)
        flow[..., 0] = self.magnitude
        return flow


def test_dynamic_degree_follows_vbench_sampling_threshold_and_count():
    frames = np.zeros((48, 128, 256, 3), np.uint8)
    # 24 fps: every 3rd frame (16 frames, 15 pairs); threshold 6 * 128 / 256 = 3 px; 4 pairs needed
    flow = ConstantFlow(3.01)
    reading = temporal.dynamic_degree(frames, fps=24, flow=flow)
    assert flow.calls == 15 and reading.threshold == pytest.approx(3.0) and reading.pairs_needed == 4
    assert reading.moving
    assert not temporal.dynamic_degree(frames, fps=24, flow=ConstantFlow(2.99)).moving
    # under 8 fps VBench raises the threshold by 8 / fps
    assert temporal.dynamic_degree(frames, fps=4, flow=ConstantFlow(5.9)).threshold == pytest.approx(6.0)
    assert not temporal.dynamic_degree(frames, fps=4, flow=ConstantFlow(5.9)).moving


def test_dynamic_degree_threshold_is_in_pixels_of_the_flow_size():
    frames = np.zeros((9, 720, 1280, 3), np.uint8)
    reading = temporal.dynamic_degree(frames, fps=8, flow=ConstantFlow(0.0))
    assert reading.threshold == pytest.approx(6.0)  # shrunk to 256 px: 6 * 256 / 256


def test_top_magnitude_is_the_mean_of_the_largest_five_percent():
    flow = np.zeros((10, 20, 2), np.float32)
    flow.reshape(-1, 2)[:10, 1] = np.arange(1, 11)  # 200 vectors: the top 10 are 1..10
    assert temporal.top_magnitude(flow) == pytest.approx(5.5)


def test_shuffled_frames_lower_smoothness(pan):
    smooth = temporal.motion_smoothness_proxy(pan)
    shuffled = pan[np.random.default_rng(0).permutation(len(pan))]
    assert smooth > 0.97
    assert temporal.motion_smoothness_proxy(shuffled) < smooth - 0.02


def test_interpolation_recovers_the_middle_of_a_translation(pan):
    middle = temporal.interpolate_midpoint(pan[10], pan[12])
    error = np.abs(middle[8:-8, 8:-8].astype(float) - pan[11, 8:-8, 8:-8]).mean()
    naive = np.abs((pan[10].astype(float) + pan[12]) / 2 - pan[11])[8:-8, 8:-8].mean()
    assert error < naive / 3


def test_dynamic_degree_of_a_file_for_the_annotation_app(tmp_path, pan):
    from mugv.eval.suite import dynamic_degree_of_file
    from mugv.video import write_mp4

    write_mp4(tmp_path / "pan.mp4", pan, fps=8)
    write_mp4(tmp_path / "still.mp4", freeze(pan), fps=8)
    moving, still = dynamic_degree_of_file(tmp_path / "pan.mp4"), dynamic_degree_of_file(tmp_path / "still.mp4")
    assert moving.moving and not still.moving
    # sqrt(5) px per frame against VBench's 6 * 96 / 256 px bar
    assert moving.relative_motion == pytest.approx(np.sqrt(5) / (6 * 96 / 256), rel=0.2)
    assert still.relative_motion < 0.05
