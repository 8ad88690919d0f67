"""Learned gradual-transition detector (fades, dissolves): color-structure features + an SVM.

Hard cuts change a frame's colors in one step, which PySceneDetect finds; fades and dissolves
spread the change over many frames, each step too small to trip a content threshold. Around every
frame we describe a window with color-histogram and structure cues (how far the two window ends
differ, how evenly that change is spread, how well the middle frame is a linear blend of the two
ends, the dip in edge energy and contrast a dissolve or fade causes, the darkness a fade passes
through) and a linear SVM on those features and their pairwise products (a degree-2 polynomial
SVM in primal form) decides whether the frame lies inside a gradual transition.

The model is trained by `mugv curate train-transitions` on transitions synthesised from real
footage and shipped as a small JSON file (scaler + weights), readable without pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mugv.errors import UnreadableFileError
from mugv.video import shrink_stack

THUMB_W, THUMB_H = 48, 27
HALF_WINDOWS = (4, 10)  # two window scales: short and long transitions
HIST_BINS = (8, 4, 4)  # hue, saturation, value
SHIPPED_MODEL = Path(__file__).resolve().parent / "assets" / "transition_svm.json"
FEATURE_NAMES = [
    f"{name}_w{w}"
    for w in HALF_WINDOWS
    for name in (
        "hist_ends",  # histogram distance between the window's two end frames
        "hist_path",  # summed frame-to-frame histogram distance across the window
        "hist_peak_share",  # largest single step / path: ~1 for a cut, small for a gradual change
        "blend_residual",  # how far the middle frame is from the best blend of the two ends
        "layout_ends",  # 4x4 luma layout distance between the ends
        "edge_dip",  # middle edge energy / mean of the ends' (dissolves blur)
        "contrast_dip",  # middle luma std / mean of the ends'
        "luma_change",  # |mean luma of end B - end A|
        "darkest",  # lowest mean luma in the window (fades pass through black)
    )
]


def thumbnails(frames: np.ndarray) -> np.ndarray:
    """[T, 27, 48, 3] uint8 thumbnails, the scale every transition feature is computed at."""
    return shrink_stack(frames, THUMB_W, THUMB_H)


def transition_features(thumbs: np.ndarray) -> np.ndarray:
    """[T, F] features, one row per frame, for frames given as thumbnails."""
    count = len(thumbs)
    if count == 0:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    hists = _color_histograms(thumbs)
    pixels = thumbs.reshape(count, -1).astype(np.float32) / 255.0
    gray = thumbs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    layout = np.stack([cv2.resize(g, (4, 4), interpolation=cv2.INTER_AREA).ravel() for g in gray])
    edges = np.abs(np.diff(gray, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(gray, axis=2)).mean(axis=(1, 2))
    luma = gray.mean(axis=(1, 2))
    contrast = gray.std(axis=(1, 2))
    steps = np.concatenate([[0.0], 0.5 * np.abs(np.diff(hists, axis=0)).sum(axis=1)])  # step into frame t
    step_cumsum = np.concatenate([[0.0], np.cumsum(steps[1:])])
    index = np.arange(count)
    # Pixels with the first and last frame repeated, so the window ends are views, not copies.
    reach = max(HALF_WINDOWS)
    padded = np.concatenate([np.repeat(pixels[:1], reach, axis=0), pixels, np.repeat(pixels[-1:], reach, axis=0)])
    columns = []
    for w in HALF_WINDOWS:
        a, b = np.clip(index - w, 0, count - 1), np.clip(index + w, 0, count - 1)
        hist_ends = 0.5 * np.abs(hists[b] - hists[a]).sum(axis=1)
        hist_path = step_cumsum[b] - step_cumsum[a]
        peak = _window_reduce(np.maximum, -np.inf, steps, a + 1, b + 1, w)
        pixels_a, pixels_b = padded[reach - w : reach - w + count], padded[reach + w : reach + w + count]  # pixels[a], pixels[b]
        ends = pixels_a - pixels_b
        rel = pixels - pixels_b
        ends_squared = _row_dots(ends, ends)
        alpha = np.clip(_row_dots(rel, ends) / (ends_squared + 1e-6), 0.0, 1.0)
        rel -= alpha[:, None] * ends
        residual = np.sqrt(_row_dots(rel, rel) / pixels.shape[1])
        ends_rms = np.sqrt(ends_squared / pixels.shape[1])
        columns += [
            hist_ends,
            hist_path,
            peak / (hist_path + 1e-3),
            residual / (ends_rms + 0.02),
            np.abs(layout[b] - layout[a]).mean(1),
            edges / (0.5 * (edges[a] + edges[b]) + 1e-3),
            contrast / (0.5 * (contrast[a] + contrast[b]) + 1e-3),
            np.abs(luma[b] - luma[a]),
            _window_reduce(np.minimum, np.inf, luma, a, b + 1, w),
        ]
    return np.stack(columns, axis=1).astype(np.float32)


def _histogram_bin_table() -> np.ndarray:
    """[1, 256, 3] uint8: each HSV channel value's share of its bin index (h * sb * vb + s * vb + v)."""
    hb, sb, vb = HIST_BINS
    value = np.arange(256)
    shares = [(value * hb // 180) * sb * vb, (value * sb // 256) * vb, value * vb // 256]
    return np.stack(shares, axis=1).astype(np.uint8)[None]


_HISTOGRAM_BINS = _histogram_bin_table()


def _color_histograms(thumbs: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(thumbs).reshape(-1, THUMB_W, 3), cv2.COLOR_RGB2HSV)
    # Table lookups instead of integer division; the three shares sum exactly (at most 127).
    bins = cv2.transform(cv2.LUT(hsv, _HISTOGRAM_BINS), np.ones((1, 3)))
    size = int(np.prod(HIST_BINS))
    flat = (bins.reshape(len(thumbs), -1).astype(np.int64) + np.arange(len(thumbs))[:, None] * size).ravel()
    hists = np.bincount(flat, minlength=len(thumbs) * size).reshape(len(thumbs), size).astype(np.float32)
    return hists / hists.sum(axis=1, keepdims=True)


def _window_reduce(
    ufunc: np.ufunc, neutral: float, values: np.ndarray, starts: np.ndarray, stops: np.ndarray, half_width: int
) -> np.ndarray:
    """`ufunc.reduce(values[starts[t]:stops[t]])` for every t at once, where each range lies
    within t +- `half_width` (`neutral` fills the rest of that span); 0 where a range is empty."""
    count = len(values)
    positions = np.arange(count)[:, None] + np.arange(-half_width, half_width + 1)
    inside = (positions >= starts[:, None]) & (positions < stops[:, None])
    gathered = np.where(inside, values[np.clip(positions, 0, count - 1)], neutral)
    return np.where(inside.any(axis=1), ufunc.reduce(gathered, axis=1), 0.0).astype(np.float32)


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of each row of `a` with the same row of `b`, without a temporary product."""
    return np.einsum("ij,ij->i", a, b)


def quadratic_expansion(z: np.ndarray) -> np.ndarray:
    """Features followed by all their pairwise products (squares included)."""
    i, j = np.triu_indices(z.shape[1])
    return np.concatenate([z, z[:, i] * z[:, j]], axis=1)


@dataclass
class TransitionModel:
    """A standardiser and a linear SVM over the quadratic expansion of `FEATURE_NAMES`."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    feature_names: list[str]

    def decision(self, features: np.ndarray) -> np.ndarray:
        return quadratic_expansion((features - self.mean) / self.scale) @ self.coef + self.intercept

    def save(self, path: str | Path, metrics: dict | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "kind": "quadratic_linear_svm",
            "feature_names": self.feature_names,
            "mean": self.mean.round(6).tolist(),
            "scale": self.scale.round(6).tolist(),
            "coef": self.coef.round(6).tolist(),
            "intercept": round(float(self.intercept), 6),
            "metrics": metrics or {},
        }
        Path(path).write_text(json.dumps(payload))

    @classmethod
    def load(cls, path: str | Path | None = None) -> TransitionModel:
        path = Path(path or SHIPPED_MODEL)
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UnreadableFileError(f"{path}: not a transition model's JSON ({exc})") from exc
        if payload.get("feature_names") != FEATURE_NAMES or payload.get("kind") != "quadratic_linear_svm":
            raise UnreadableFileError(f"{path}: trained for other features; retrain with `mugv curate train-transitions`")
        return cls(
            mean=np.asarray(payload["mean"], np.float32),
            scale=np.asarray(payload["scale"], np.float32),
            coef=np.asarray(payload["coef"], np.float32),
            intercept=float(payload["intercept"]),
            feature_names=payload["feature_names"],
        )


def detect_gradual(
    model: TransitionModel, thumbs: np.ndarray, threshold: float = 0.0, min_frames: int = 4
) -> list[tuple[int, int]]:
    """Spans [start, stop) of frames the SVM places inside a gradual transition (runs of at least
    `min_frames` positive frames after a 3-frame majority smoothing)."""
    if len(thumbs) < 2 * min(HALF_WINDOWS) + 1:
        return []
    positive = model.decision(transition_features(thumbs)) > threshold
    padded = np.concatenate([[positive[0]], positive, [positive[-1]]]).astype(np.int8)
    smoothed = (padded[:-2] + padded[1:-1] + padded[2:]) >= 2
    return [(s, e) for s, e in _runs(smoothed) if e - s >= min_frames]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


# --------------------------------------------------------------------------------------------
# Training data synthesised from real footage
# --------------------------------------------------------------------------------------------


def _random_shot(footage: list[np.ndarray], rng: np.random.Generator, length: int) -> np.ndarray:
    """A `length`-frame shot cut from real footage, varied by a random crop, flip and gain."""
    video = footage[rng.integers(len(footage))]
    start = int(rng.integers(0, max(1, len(video) - length)))
    shot = video[start : start + length]
    if len(shot) < length:  # short source: play it back and forth
        shot = np.concatenate([shot, shot[::-1]] * (length // max(1, len(shot)) + 1))[:length]
    h, w = shot.shape[1:3]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    shot = shot[:, top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        shot = shot[:, :, ::-1]
    gain = rng.uniform(0.7, 1.2)
    return np.stack(
        [cv2.resize(np.clip(f * gain, 0, 255).astype(np.uint8), (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA) for f in shot]
    )


def synthesize_sequence(footage: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sequence of thumbnails with per-frame labels (1 inside a gradual transition)
    and a mask of frames far enough from any boundary to be labelled without ambiguity."""
    kind = rng.choice(["dissolve", "fade_through_black", "fade_out", "fade_in", "cut", "continuous"])
    length = int(rng.integers(8, 31))
    before, after = int(rng.integers(20, 41)), int(rng.integers(20, 41))
    if kind == "continuous":
        frames = _random_shot(footage, rng, before + after + length)
        labels = np.zeros(len(frames), np.int8)
        return frames, labels, np.ones(len(frames), bool)
    a = _random_shot(footage, rng, before + length)
    b = _random_shot(footage, rng, length + after)
    ramp = np.linspace(0, 1, length + 2, dtype=np.float32)[1:-1, None, None, None]
    black = np.zeros_like(a[:1])
    if kind == "dissolve":
        middle = (1 - ramp) * a[before:] + ramp * b[:length]
    elif kind == "fade_through_black":
        half = length // 2
        middle = np.concatenate(
            [(1 - ramp[:half] * 2).clip(0) * a[before : before + half], (ramp[half:] * 2 - 1).clip(0) * b[half:length]]
        )
    elif kind == "fade_out":
        middle = (1 - ramp) * a[before:]
        b = np.repeat(black, length + after, axis=0)
    elif kind == "fade_in":
        middle = ramp * b[:length]
        a = np.repeat(black, before + length, axis=0)
    else:  # a hard cut: a negative, since cuts belong to the content detector
        middle = b[:length]
    frames = np.concatenate([a[:before], middle.astype(np.uint8), b[length:]])
    labels = np.zeros(len(frames), np.int8)
    margin = max(HALF_WINDOWS)
    clear = np.ones(len(frames), bool)
    if kind == "cut":
        clear[before - 1 : before + 1] = False  # the cut frame itself: neither class is right
    else:
        labels[before : before + length] = 1
        for edge in (before, before + length):  # windows straddling a boundary only partly see it
            clear[max(0, edge - margin) : edge + margin] = False
        clear[before + 2 : before + length - 2] = True
    clear[:margin] = clear[len(frames) - margin :] = False
    return frames, labels, clear


def build_training_set(footage: list[np.ndarray], sequences: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for _ in range(sequences):
        frames, frame_labels, clear = synthesize_sequence(footage, rng)
        features.append(transition_features(frames)[clear])
        labels.append(frame_labels[clear])
    return np.concatenate(features), np.concatenate(labels)


def train_transition_model(
    footage: list[np.ndarray], sequences: int = 400, seed: int = 0, c: float = 0.3
) -> tuple[TransitionModel, dict]:
    """Fit the SVM on synthesised sequences; returns the model and held-out metrics (a separate
    seed's sequences)."""
    from sklearn.svm import LinearSVC

    x, y = build_training_set(footage, sequences, seed)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    expanded = quadratic_expansion((x - mean) / scale)
    # Standardise the expansion too (the solver converges in seconds), then fold that scaling
    # into the weights so inference needs only the first standardiser.
    q_mean, q_scale = expanded.mean(0), expanded.std(0) + 1e-6
    svm = LinearSVC(C=c, class_weight="balanced", dual=False, max_iter=2000, tol=1e-3)
    svm.fit((expanded - q_mean) / q_scale, y)
    coef = svm.coef_[0] / q_scale
    intercept = float(svm.intercept_[0] - (coef * q_mean).sum())
    model = TransitionModel(mean, scale, coef.astype(np.float32), intercept, list(FEATURE_NAMES))
    x_test, y_test = build_training_set(footage, max(50, sequences // 4), seed + 1)
    predicted = model.decision(x_test) > 0
    true_pos = float((predicted & (y_test == 1)).sum())
    metrics = {
        "train_frames": len(y),
        "test_frames": len(y_test),
        "test_precision": round(true_pos / max(1.0, float(predicted.sum())), 4),
        "test_recall": round(true_pos / max(1.0, float((y_test == 1).sum())), 4),
        "test_accuracy": round(float((predicted == (y_test == 1)).mean()), 4),
    }
    return model, metrics
