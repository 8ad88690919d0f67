"""A corpus of broken and unusual files is curated without a crash: every bad file has its
reason in the manifest, and every good clip (including variable-frame-rate and rotated video)
is kept."""

from __future__ import annotations

import os

import av
import numpy as np
from curate_testing import FPS, curate_config, shot

from mugv.curate.runner import run_curation
from mugv.video import write_mp4
from mugv.video.synthetic import write_audio_only


def _truncated_stream(path, frames) -> None:
    """An mkv cut in the middle: the header survives, most frames do not."""
    whole = path.with_suffix(".whole")
    with av.open(str(whole), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    whole.unlink()


def test_bad_input_corpus(tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    good = shot(21, frames=48)
    write_mp4(corpus / "good.mp4", good, FPS)
    write_mp4(corpus / "whole_for_cut.mp4", good, FPS)
    data = (corpus / "whole_for_cut.mp4").read_bytes()
    (corpus / "truncated_index.mp4").write_bytes(data[: len(data) // 2])  # the mp4 index is at the end
    (corpus / "whole_for_cut.mp4").unlink()
    _truncated_stream(corpus / "truncated_stream.mkv", shot(22, frames=48))
    (corpus / "zero.mp4").write_bytes(b"")
    (corpus / "not_video.mp4").write_text("this is a text file with a video extension\n" * 50)
    write_mp4(corpus / "one_frame.mp4", good[:1], FPS)
    # Variable frame rate: 48 frames over 2.3 s with uneven gaps.
    gaps = np.tile([1 / 30, 1 / 15, 1 / 20], 16)[:47]
    write_mp4(corpus / "vfr.mp4", shot(23, frames=48), FPS, frame_times=np.concatenate([[0.0], np.cumsum(gaps)]))
    write_mp4(corpus / "rotated.mp4", shot(24, frames=48), FPS, rotation=90)
    write_audio_only(corpus / "audio_only.mp4", chunks=30)
    write_mp4(corpus / "huge.mp4", np.zeros((1, 4352, 7680, 3), np.uint8), FPS, preset="ultrafast")

    result = run_curation(corpus, tmp_path / "out", curate_config("--dedup.enabled=false"))
    by_file = {}
    for row in result.rows:
        by_file.setdefault(os.path.basename(row["path"]), []).append(row)

    expected_reasons = {
        "truncated_index.mp4": "unreadable",
        "truncated_stream.mkv": "truncated",
        "zero.mp4": "empty_file",
        "not_video.mp4": "unreadable",
        "one_frame.mp4": "too_short",
        "audio_only.mp4": "audio_only",
        "huge.mp4": "too_large",
    }
    for name, reason in expected_reasons.items():
        assert [r["reason"] for r in by_file[name]] == [reason], name
        assert by_file[name][0]["clip_index"] == -1 and by_file[name][0]["status"] == "rejected"
    assert by_file["truncated_stream.mkv"][0]["error"].startswith("truncated: decoded")
    assert by_file["huge.mp4"][0]["width"] == 7680  # screened from metadata, never decoded

    for name in ("good.mp4", "vfr.mp4", "rotated.mp4"):
        assert [r["status"] for r in by_file[name]] == ["kept"], (name, by_file[name][0]["reason"])
    vfr = by_file["vfr.mp4"][0]
    assert vfr["vfr"] and vfr["duration"] == np.float64(vfr["end_time"] - vfr["start_time"])
    assert abs(vfr["video_duration"] - np.sum(gaps)) < 0.1  # the last frame's own length is estimated
    rotated = by_file["rotated.mp4"][0]
    assert (rotated["rotation"], rotated["width"], rotated["height"]) == (90, 144, 192)
    assert "portrait" in rotated["caption"]
