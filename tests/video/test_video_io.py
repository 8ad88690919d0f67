"""mugv.video: probe, decode-once, writer and frame transforms, on small files written here."""

from __future__ import annotations

import av
import numpy as np
import pytest

from mugv.video import (
    VideoError,
    VideoReader,
    center_crop,
    decode,
    fit_short_side,
    probe,
    resize_short_side,
    resize_to_fill,
    sample_indices,
    synthetic,
    write_mp4,
)
from mugv.video.synthetic import write_audio_only


@pytest.fixture(scope="module")
def shot() -> np.ndarray:
    return synthetic.panning_shot(seed=1, frames=24, height=48, width=64, speed=2)


def test_roundtrip_keeps_count_rate_size_and_content(tmp_path, shot):
    path = tmp_path / "clip.mp4"
    assert write_mp4(path, shot, fps=24) == 24
    info = probe(path)
    assert (info.width, info.height, info.rotation, info.codec) == (64, 48, 0, "h264")
    assert info.fps == pytest.approx(24) and info.frame_count == 24 and not info.has_audio
    assert info.duration == pytest.approx(1.0, abs=0.05)
    video = decode(path)
    assert video.frames.shape == (24, 48, 64, 3) and video.frames.dtype == np.uint8
    np.testing.assert_allclose(video.times, np.arange(24) / 24, atol=1e-3)
    assert not video.is_vfr and video.measured_fps == pytest.approx(24, rel=1e-3)
    # Lossy (4:2:0 chroma on a detailed texture), but far closer to the source than another shot.
    error = float(np.abs(video.frames.astype(int) - shot).mean())
    other = synthetic.panning_shot(seed=2, frames=24, height=48, width=64, speed=2)
    assert error < 12 < 3 * error < float(np.abs(video.frames.astype(int) - other).mean())


def test_decode_resizes_to_short_side_once(tmp_path, shot):
    path = tmp_path / "clip.mp4"
    write_mp4(path, shot, fps=24)
    video = decode(path, short_side=32)
    assert video.frames.shape[1:] == (32, 42, 3)  # 64x48 -> 42.7x32, rounded to even
    assert decode(path, max_frames=5).num_frames == 5


def test_rotation_from_display_matrix_is_applied(tmp_path):
    picture = np.zeros((6, 48, 64, 3), np.uint8)
    picture[:, :16, :16] = 255  # a white square in the top-left corner
    path = tmp_path / "rotated.mp4"
    write_mp4(path, picture, fps=24, rotation=90)
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (90, 48, 64)
    frame = decode(path).frames[0].astype(int)
    assert frame.shape == (64, 48, 3)
    # Counter-clockwise by 90 degrees: the top-left corner moves to the bottom-left.
    assert frame[-16:, :16].mean() > 200 and frame[:16, :16].mean() < 50


def test_variable_frame_rate_keeps_real_timestamps(tmp_path, shot):
    stamps = [0.0, 0.04, 0.08, 0.3, 0.35, 0.4, 0.8, 0.85, 0.9, 1.0]
    path = tmp_path / "vfr.mp4"
    write_mp4(path, shot[:10], fps=24, frame_times=stamps)
    video = decode(path)
    np.testing.assert_allclose(video.times, stamps, atol=2e-3)
    assert video.is_vfr
    assert video.measured_fps == pytest.approx(9 / 1.0, rel=1e-2)


def test_unusable_files_raise_video_error_with_reason(tmp_path, shot):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 20)
    write_audio_only(tmp_path / "audio.m4a")
    write_mp4(tmp_path / "whole.mp4", shot, fps=24)
    whole = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # mp4 index is at the end: lost
    expected = {
        "empty.mp4": "empty_file",
        "text.mp4": "unreadable",
        "audio.m4a": "audio_only",
        "cut.mp4": "unreadable",
        "absent.mp4": "missing_file",
    }
    for name, reason in expected.items():
        with pytest.raises(VideoError) as caught:
            probe(tmp_path / name)
        assert caught.value.reason == reason, name


def test_truncated_stream_keeps_decoded_frames_and_says_why(tmp_path):
    shot = synthetic.panning_shot(seed=3, frames=48, height=48, width=64, speed=2)
    whole = tmp_path / "whole.mkv"
    with av.open(str(whole), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for array in shot:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 3 // 4])
    video = decode(cut)
    assert 0 < video.num_frames < 48
    assert video.decode_error.startswith("truncated")
    assert decode(whole).decode_error == ""


def test_reader_probes_then_decodes_without_reopening(tmp_path, shot):
    path = tmp_path / "clip.mp4"
    write_mp4(path, shot, fps=24)
    with VideoReader(path) as reader:
        assert reader.info.frame_count == 24
        path.unlink()  # the open container keeps working
        assert reader.decode().num_frames == 24


def test_frame_helpers():
    np.testing.assert_array_equal(sample_indices(0, 10, 3), [1, 5, 8])
    np.testing.assert_array_equal(sample_indices(4, 6, 5), [4, 5])
    assert len(sample_indices(3, 3, 2)) == 0
    assert fit_short_side(1920, 1080, 256) == (456, 256)
    assert fit_short_side(100, 80, 256) == (100, 80)  # never upscales
    frames = np.random.default_rng(0).integers(0, 255, (2, 40, 80, 3), dtype=np.uint8)
    assert resize_short_side(frames, 20).shape == (2, 20, 40, 3)
    assert center_crop(frames, 20, 10).shape == (2, 10, 20, 3)
    np.testing.assert_array_equal(center_crop(frames[0], 20, 10), frames[0, 15:25, 30:50])
    filled = resize_to_fill(frames, 30, 30)
    assert filled.shape == (2, 30, 30, 3)
    with pytest.raises(ValueError):
        center_crop(frames, 100, 10)
