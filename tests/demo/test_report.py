
from mugv.demo.report import Section, Video, write_report


def test_report_embeds_tables_images_and_videos_with_relative_links(tmp_path):
    (tmp_path / "media").mkdir()
    video, image = tmp_path / "media" / "a.mp4", tmp_path / "media" / "loss.png"
    video.write_bytes(b"")
    image.write_bytes(b"")
    strip = tmp_path / "media" / "a.frames.png"
    page = write_report(tmp_path / "report.html", "mugv demo", "run <1>", [
        Section("Curation", "kept & rejected", tables=[(["reason", "clips"], [["too <blurry>", 3], ["kept", 12]])]),
        Section("Training", images=[image]),
        Section("Samples", videos=[Video(video, "a red circle", note="held out", ok=True, strip=strip)]),
    ])
    text = page.read_text()
    assert "too &lt;blurry&gt;" in text and "run &lt;1&gt;" in text  # escaped
    assert "src='media/a.mp4'" in text and "src='media/loss.png'" in text and "src='media/a.frames.png'" in text
    assert "class='ok'" in text and '<td class="num">12</td>' in text
