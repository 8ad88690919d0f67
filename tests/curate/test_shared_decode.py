"""The one decode that curation shares: frames kept in YUV and converted when indexed, a
half-size RGB copy of every frame, and decoding on one thread."""

from __future__ import annotations

import numpy as np
import pytest
from curate_testing import FPS, shot

from mugv.video import VideoReader, half_size, write_mp4


@pytest.mark.parametrize("rotation", [0, 90])
def test_analysis_decode_on_one_thread_reads_as_the_rgb_decode(tmp_path, rotation):
    path = tmp_path / "pan.mp4"
    write_mp4(path, shot(3, frames=40, speed=2.5), FPS, rotation=rotation)
    with VideoReader(path) as reader:
        rgb = reader.decode(short_side=96)
    with VideoReader(path, threads=1) as reader:
        analysis = reader.decode(short_side=96, analysis=True)
    assert rgb.half is None and np.array_equal(analysis.times, rgb.times)
    frames = analysis.frames
    assert frames.shape == rgb.frames.shape == ((40, 128, 96, 3) if rotation else (40, 96, 128, 3))
    assert np.array_equal(np.asarray(frames), rgb.frames)
    assert np.array_equal(frames[7], rgb.frames[7]) and np.array_equal(frames[[2, 9]], rgb.frames[[2, 9]])
    assert np.array_equal(frames[10:20][np.array([0, 5])], rgb.frames[[10, 15]])  # a slice stays lazy
    # The half-size copy comes from YUV: the 2x2 average of the RGB frames up to rounding, but
    # where a channel clips in some of the four pixels (averaging and clipping do not commute).
    difference = np.abs(analysis.half.astype(int) - half_size(rgb.frames))
    assert analysis.half.shape == half_size(rgb.frames).shape and (difference <= 1).mean() > 0.99
