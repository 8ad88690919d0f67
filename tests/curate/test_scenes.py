"""Scene split: hard cuts (PySceneDetect on shared frames, TransNetV2), gradual transitions
(the shipped SVM), and cutting scenes into clips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from curate_testing import FPS, shot
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from mugv.curate import transitions
from mugv.curate.scenes import (
    ClipsConfig,
    ScenesConfig,
    Transition,
    content_scores,
    cut_clips,
    detect_cuts,
    find_transitions,
)
from mugv.video import synthetic


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_hard_cuts_found_where_shots_change(shots, detector):
    frames = np.concatenate([shots["a"], shots["b"], shots["c"]])
    cuts = detect_cuts(ScenesConfig(detector=detector), frames, FPS)
    assert len(cuts) == 2
    assert abs(cuts[0] - 48) <= 1 and abs(cuts[1] - 96) <= 1


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_content_scores_and_cuts_are_pyscenedetects_own(shots, detector):
    """The scores computed for the whole stack at once equal PySceneDetect's frame-by-frame
    ones exactly, and its detectors fed them cut where they cut on their own."""
    fade = np.linspace(1, 0, 10)[:, None, None, None]
    faded = (fade * shots["b"][30:40]).astype(np.uint8)
    frames = np.concatenate([shots["a"], shots["b"][:30], faded, shots["c"], shots["d"][:20]])
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames]
    reference = ContentDetector()
    expected = [reference._calculate_frame_score(FrameTimecode(i, FPS * 1.0), f) for i, f in enumerate(bgr)]
    assert np.array_equal(content_scores(frames, chunk=7), np.array(expected))  # chunk edges inside cuts too

    own, cuts = (AdaptiveDetector if detector == "adaptive" else ContentDetector)(min_scene_len=15), []
    for index, frame in enumerate(bgr):
        cuts += [tc.frame_num for tc in own.process_frame(FrameTimecode(index, FPS * 1.0), frame)]
    cuts += [tc.frame_num for tc in own.post_process(FrameTimecode(len(frames) - 1, FPS * 1.0))]
    assert len(cuts) >= 3
    assert detect_cuts(ScenesConfig(detector=detector), frames, FPS) == sorted({c for c in cuts if 0 < c < len(frames)})


@pytest.mark.parametrize("size", [(128, 301), (127, 170), (31, 47), (27, 48)])
def test_thumbnails_of_a_stack_equal_frame_by_frame(size):
    frames = np.random.default_rng(size[0]).integers(0, 256, (9, *size, 3), dtype=np.uint8)
    expected = np.stack([cv2.resize(f, (48, 27), interpolation=cv2.INTER_AREA) for f in frames])
    assert np.array_equal(transitions.thumbnails(frames), expected)


def test_transnetv2_finds_hard_cuts(shots):
    # TransNetV2 runs about 30 frames/s on one CPU core: keep this clip short.
    frames = np.concatenate([shots["a"][:30], shots["b"][:30], shots["c"][:30]])
    cuts = detect_cuts(ScenesConfig(detector="transnetv2"), frames, FPS)
    assert len(cuts) == 2
    assert abs(cuts[0] - 30) <= 1 and abs(cuts[1] - 60) <= 1


def test_continuous_shot_has_no_transition(shots):
    frames = shot(7, frames=96, speed=3.0)
    assert find_transitions(ScenesConfig(), frames, FPS) == []


def test_dissolve_found_by_gradual_detector_and_missed_by_content_detector(shots):
    frames = synthetic.dissolve(shots["a"], shots["b"], length=16)  # blend over frames 32..47
    assert detect_cuts(ScenesConfig(), frames, FPS) == []
    found = find_transitions(ScenesConfig(), frames, FPS)
    assert len(found) == 1 and found[0].kind == "gradual"
    assert 28 <= found[0].start <= 36 and 44 <= found[0].stop <= 52


def test_fade_through_black_found(shots):
    fade = np.linspace(1, 0, 10)[:, None, None, None]
    frames = np.concatenate(
        [
            shots["a"][:38],
            (fade * shots["a"][38:]).astype(np.uint8),
            (fade[::-1] * shots["c"][:10]).astype(np.uint8),
            shots["c"][10:],
        ]
    )
    found = find_transitions(ScenesConfig(), frames, FPS)
    assert [t.kind for t in found] == ["gradual"]
    assert found[0].start <= 42 and found[0].stop >= 54


def test_gradual_detection_can_be_turned_off(shots):
    frames = synthetic.dissolve(shots["a"], shots["b"], length=16)
    assert find_transitions(ScenesConfig(gradual=False), frames, FPS) == []


def test_cut_clips_applies_margins_and_length_limits():
    times = np.arange(300) / 25.0
    found = [Transition(100, 100, "cut"), Transition(150, 170, "gradual")]
    clips = cut_clips(ClipsConfig(min_seconds=1.0, max_seconds=4.0, margin_seconds=0.2), found, times, 25.0)
    spans = [(c.start, c.stop, c.before, c.after) for c in clips]
    # margin = 5 frames on each side of every transition; 4 s = 100 frames at most per clip
    assert spans == [
        (0, 95, "start", "cut"),
        (105, 145, "cut", "gradual"),
        (175, 275, "gradual", "split"),
        (275, 300, "split", "end"),
    ]
    assert clips[0].duration == pytest.approx(95 / 25) and clips[-1].end_time == pytest.approx(300 / 25)


def test_cut_clips_uses_real_timestamps_for_variable_frame_rate():
    times = np.concatenate([np.arange(50) * 0.02, 1.0 + np.arange(50) * 0.1])  # 50 fps, then 10 fps
    clips = cut_clips(ClipsConfig(min_seconds=0.5, max_seconds=3.0, margin_seconds=0.0), [], times, fps=50 / 3)
    assert clips[0].start == 0 and clips[0].duration <= 3.0 + 1e-6
    assert clips[0].stop == 70  # 1 s of fast frames + 20 slow frames = 3 s
    assert sum(c.stop - c.start for c in clips) == 100
