"""The gradual-transition SVM: features, training on synthesised transitions, the model file."""

from __future__ import annotations

import json

import numpy as np
from curate_testing import shot

from mugv.cli import main
from mugv.curate import transitions
from mugv.video import synthetic, write_mp4


def test_features_mark_a_dissolve_as_a_blend_and_a_cut_as_one_step(shots):
    names = transitions.FEATURE_NAMES
    dissolve = transitions.transition_features(transitions.thumbnails(synthetic.dissolve(shots["a"], shots["b"], 16)))
    cut = transitions.transition_features(transitions.thumbnails(np.concatenate([shots["a"], shots["b"]])))
    blend, peak = names.index("blend_residual_w10"), names.index("hist_peak_share_w10")
    assert dissolve[40, blend] < 0.85 * cut[48, blend]  # the middle of a dissolve is a mix of its ends
    assert cut[48, peak] > 3 * dissolve[40, peak]  # a cut changes everything in one step
    assert dissolve.shape == (len(dissolve), len(names)) and np.isfinite(dissolve).all()


def test_synthesised_sequences_label_transition_frames():
    footage = [shot(s, frames=40) for s in range(3)]
    rng = np.random.default_rng(0)
    kinds_seen = set()
    for _ in range(12):
        frames, labels, clear = transitions.synthesize_sequence(footage, rng)
        assert len(frames) == len(labels) == len(clear) and frames.shape[1:] == (transitions.THUMB_H, transitions.THUMB_W, 3)
        kinds_seen.add(bool(labels.any()))
        if labels.any():
            inside = np.flatnonzero(labels)
            assert np.all(np.diff(inside) == 1) and 8 <= len(inside) <= 30  # one contiguous transition
    assert kinds_seen == {True, False}


def test_train_command_writes_a_small_model_that_detects_dissolves(tmp_path, shots):
    videos = []
    for seed in range(3):
        path = tmp_path / f"source{seed}.mp4"
        write_mp4(path, shot(10 + seed, frames=60, speed=1.5 + seed), fps=24)
        videos.append(str(path))
    model_path = tmp_path / "svm.json"
    argv = ["curate", "train-transitions", "--videos", *videos, "--model-out", str(model_path), "--sequences", "40"]
    assert main(argv) == 0
    assert model_path.stat().st_size < 20_000
    payload = json.loads(model_path.read_text())
    assert payload["metrics"]["test_recall"] > 0.8 and payload["metrics"]["test_precision"] > 0.7
    model = transitions.TransitionModel.load(model_path)
    spans = transitions.detect_gradual(model, transitions.thumbnails(synthetic.dissolve(shots["c"], shots["d"], 16)))
    assert len(spans) == 1 and spans[0][0] <= 36 and spans[0][1] >= 44


def test_shipped_model_loads_and_records_its_training():
    payload = json.loads(transitions.SHIPPED_MODEL.read_text())
    assert transitions.SHIPPED_MODEL.stat().st_size < 20_000
    assert payload["metrics"]["test_precision"] > 0.9 and payload["metrics"]["test_recall"] > 0.9
    model = transitions.TransitionModel.load()
    assert model.coef.shape == (transitions.quadratic_expansion(np.zeros((1, len(transitions.FEATURE_NAMES)))).shape[1],)


def test_window_extremes_for_all_frames_at_once_equal_slicing_frame_by_frame():
    values = np.random.default_rng(0).random(30).astype(np.float32)
    for count in (1, 3, 30):
        index = np.arange(count)
        for w in transitions.HALF_WINDOWS:
            a, b = np.clip(index - w, 0, count - 1), np.clip(index + w, 0, count - 1)
            peak = transitions._window_reduce(np.maximum, -np.inf, values[:count], a + 1, b + 1, w)
            lowest = transitions._window_reduce(np.minimum, np.inf, values[:count], a, b + 1, w)
            assert peak.tolist() == [values[s + 1 : e + 1].max() if e > s else 0.0 for s, e in zip(a, b)]
            assert lowest.tolist() == [values[s : e + 1].min() for s, e in zip(a, b)]
