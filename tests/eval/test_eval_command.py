"""`mugv eval` end to end on tiny clips: files written, labels on every number, comparison."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mugv import cli
from mugv.demo.world import Scene, render
from mugv.video import write_mp4
from mugv.video.synthetic import blur, freeze, panning_shot


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two versions of the same three clips (sharp, and blurred) and their prompts."""
    root = tmp_path_factory.mktemp("eval")
    scene = Scene("red", "circle", "right")
    clips = {"demo": render(scene, frames=17, height=64, width=64, seed=1),
             "pan": panning_shot(seed=2, frames=17, height=64, width=96, speed=2.0),
             "still": freeze(panning_shot(seed=3, frames=17, height=64, width=96))}
    for version, transform in (("sharp", lambda x: x), ("blurred", lambda x: blur(x, 1.5))):
        (root / version).mkdir()
        for name, frames in clips.items():
            write_mp4(root / version / f"{name}.mp4", transform(frames), fps=12)
    (root / "sharp" / "broken.mp4").write_bytes(b"not a video")
    with open(root / "prompts.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "name"])
        writer.writeheader()
        writer.writerows([{"prompt": scene.caption, "name": "demo"}, {"prompt": "a textured wall pans", "name": "pan"}])
    return root


@pytest.fixture(scope="module")
def evaluated(folders):
    out = folders / "out-sharp"
    assert cli.main(["eval", str(folders / "sharp"), "--out", str(out), "--prompts", str(folders / "prompts.csv")]) == 0
    return out


def test_every_number_carries_its_backend_and_what_it_compares_with(evaluated):
    lines = {row["video"]: row for row in map(json.loads, (evaluated / "results.jsonl").read_text().splitlines())}
    assert set(lines) == {"broken", "demo", "pan", "still"}
    assert "unreadable" in lines["broken"]["error"]
    for name in ("demo", "pan", "still"):
        for metric, record in lines[name]["metrics"].items():
            assert record["backend"] in ("official", "proxy") and record["comparable_to"], metric
    assert lines["demo"]["metrics"]["temporal_flickering"]["backend"] == "official"
    assert lines["demo"]["metrics"]["dynamic_degree"]["backend"] == "proxy"
    # 64 px frames: NIQE says why it has no value rather than inventing one
    assert lines["demo"]["metrics"]["niqe"]["value"] is None and "192 px" in lines["demo"]["metrics"]["niqe"]["skipped"]
    assert lines["demo"]["metrics"]["demo_color"]["value"] == 1.0
    assert lines["demo"]["metrics"]["demo_direction"]["value"] == 1.0
    assert lines["demo"]["metrics"]["demo_shape"]["detail"] == {"asked": "circle", "seen": "circle"}
    assert "skipped" in lines["pan"]["metrics"]["demo_color"]  # not a demo-world prompt
    assert lines["still"]["metrics"]["dynamic_degree"]["value"] == 0.0
    assert lines["pan"]["metrics"]["dynamic_degree"]["value"] == 1.0
    assert lines["still"]["metrics"]["frozen_frames"]["value"] > 0.9


def test_summary_gives_no_vbench_total_from_proxies(evaluated):
    summary = json.loads((evaluated / "summary.json").read_text())
    assert summary["scored"] == 3 and summary["failed"].keys() == {"broken"}
    assert summary["metrics"]["dynamic_degree"]["mean"] == pytest.approx(2 / 3)
    for total in summary["vbench"].values():
        assert total["value"] is None and "measured by a proxy: motion smoothness, dynamic degree" in total["reason"]
    page = (evaluated / "report.html").read_text()
    assert "temporal_flickering" in page and "<svg" in page and "strips/" in page
    assert (evaluated / "strips" / "still.png").exists()


def test_compare_puts_two_sets_side_by_side(folders, evaluated):
    out = folders / "cmp"
    assert cli.main(["eval", "--compare", str(evaluated), str(folders / "blurred"), "--out", str(out)]) == 0
    table = json.loads((out / "compare.json").read_text())
    sharpness = table["metrics"]["sharpness"]
    assert sharpness["delta"] == pytest.approx(sharpness["b"] - sharpness["a"]) and sharpness["delta"] < 0
    assert sharpness["better"] == table["a"]
    assert (out / "b-blurred" / "results.jsonl").exists() and (out / "compare.html").exists()


@pytest.mark.parametrize("argv, message", [
    (["--laion-head", "head.pth"], "--laion-head needs --clip-model"),
    (["--i3d", "i3d.pt"], "FVD needs both"),
    (["--skip", "no_such_metric"], "no_such_metric"),
    (["--prompts", "missing.csv"], "missing.csv"),
])
def test_bad_options_are_one_line_errors(folders, tmp_path, capsys, argv, message):
    assert cli.main(["eval", str(folders / "sharp"), "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_an_empty_folder_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["eval", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no video files" in capsys.readouterr().err


def test_demo_shapes_are_read_from_how_much_of_their_box_they_fill():
    from mugv.demo.adherence import read_shape
    from mugv.demo.world import COLORS, DIRECTIONS, SHAPES

    for shape in SHAPES:
        for colour, direction in zip(COLORS, DIRECTIONS):
            frames = render(Scene(colour, shape, direction), frames=17, height=64, width=64, seed=len(shape))
            assert read_shape(frames) == shape
    assert read_shape(np.full((4, 64, 64, 3), 40, np.uint8)) is None  # background only
