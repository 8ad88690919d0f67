import numpy as np
import pytest

from mugv.demo.adherence import read_video, score
from mugv.demo.world import COLORS, DIRECTIONS, SHAPES, Scene, all_scenes, background, render, split_scenes


def test_every_rendered_scene_is_read_back_correctly():
    report = score([(scene, render(scene, seed=i)) for i, scene in enumerate(all_scenes())])
    assert len(report.rows) == len(COLORS) * len(SHAPES) * len(DIRECTIONS)
    assert report.color_accuracy == 1.0 and report.direction_accuracy == 1.0 and report.shape_accuracy == 1.0


def test_wrong_colour_and_direction_are_caught():
    truth = Scene("red", "circle", "left")
    shown = render(Scene("blue", "circle", "right"))
    row = score([(truth, shown)]).rows[0]
    assert not row["color_ok"] and not row["direction_ok"]
    assert row["seen_color"] == "blue" and row["seen_direction"] == "right"


def test_a_still_or_empty_video_has_no_direction():
    still = np.repeat(render(Scene("green", "square", "up"))[:1], 17, axis=0)
    assert read_video(still).direction is None and read_video(still).color == "green"
    empty = np.repeat(background(64, 64, 0)[None], 17, axis=0)
    assert read_video(empty).color is None


def test_held_out_scenes_are_new_combinations_of_seen_attributes():
    train, held = split_scenes(held_out=6)
    assert len(held) == 6 and not set(train) & set(held) and len(train) + len(held) == len(all_scenes())
    for attribute in ("color", "shape", "direction"):
        assert {getattr(s, attribute) for s in held} <= {getattr(s, attribute) for s in train}


def test_captions_state_colour_shape_and_direction():
    assert Scene("yellow", "triangle", "up").caption == "a yellow triangle moves upward on a gray background"
    with pytest.raises(ValueError):
        render(Scene("red", "hexagon", "up"))
