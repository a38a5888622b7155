"""Distances between two sets of image features, with confidence intervals and a floor.

All inputs are L2-normalised feature matrices (images x features), e.g. CLIP image embeddings.

CMMD (Jayasumana et al. 2024, "Rethinking FID"): squared maximum mean discrepancy with a Gaussian RBF
kernel, sigma = 10, scaled by 1000, on CLIP ViT-L/14@336 embeddings. Unlike FID it assumes nothing about
the shape of the distributions and is unbiased for small sets, which is what a LoRA data set is.

"KID (CLIP features)" is the polynomial-kernel MMD of KID (Binkowski et al. 2018), but on the same CLIP
features, not on Inception features: its numbers are not comparable with Inception KID from papers.

Both use the unbiased estimator: within-set averages skip pairs of an image with itself, so two sets
drawn from the same distribution score 0 on average (a finite sample scatters around 0, slightly below
included). A set scored against an exact copy of itself scores below 0, since every image meets its twin.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
KID_SCALE = 1000.0
CONFIDENCE = 0.95
MEMORIZED_SIMILARITY = 0.95
"""A generated image this close (cosine) to a training image is flagged as a likely copy."""

Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]


def rbf_kernel(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA) -> np.ndarray:
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.exp(-np.maximum(squared, 0.0) / (2.0 * sigma**2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel: (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    kernel: Kernel
    scale: float


METRICS = {
    "cmmd": Metric("cmmd", "CMMD", rbf_kernel, CMMD_SCALE),
    "kid": Metric("kid", "KID (CLIP features) x1000", polynomial_kernel, KID_SCALE),
}


@dataclasses.dataclass(frozen=True)
class Score:
    value: float
    """The estimate on all images."""
    mean: float
    """Mean over bootstrap resamples."""
    low: float
    high: float
    """The central 95% of bootstrap resamples."""

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _within_mean(kernel: np.ndarray, index: np.ndarray) -> float:
    # Pairs of the same source image (the diagonal, and repeats drawn by the bootstrap) are left out:
    # that is what makes the estimator unbiased.
    distinct = index[:, None] != index[None, :]
    if not distinct.any():
        return float("nan")
    return float(kernel[np.ix_(index, index)][distinct].mean())


def _mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> float:
    return _within_mean(kxx, ix) + _within_mean(kyy, iy) - 2.0 * float(kxy[np.ix_(ix, iy)].mean())


def mmd2(x: np.ndarray, y: np.ndarray, kernel: Kernel) -> float:
    """Unbiased squared MMD between the rows of `x` and `y` (each set needs at least 2 rows)."""
    return _mmd2(kernel(x, x), kernel(y, y), kernel(x, y), np.arange(len(x)), np.arange(len(y)))


def score(x: np.ndarray, y: np.ndarray, metric: Metric, *, resamples: int = 200, seed: int = 0) -> Score:
    """`metric` between sets x and y, with a bootstrap interval (both sets resampled, fixed RNG seed)."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"MMD needs at least 2 images in each set, got {len(x)} and {len(y)}.")
    kxx, kyy, kxy = metric.kernel(x, x), metric.kernel(y, y), metric.kernel(x, y)
    value = metric.scale * _mmd2(kxx, kyy, kxy, np.arange(len(x)), np.arange(len(y)))
    rng = np.random.default_rng(seed)
    draws = (
        np.array(
            [
                _mmd2(kxx, kyy, kxy, rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y)))
                for _ in range(resamples)
            ]
        )
        * metric.scale
    )
    draws = draws[np.isfinite(draws)]  # a resample of 2 images can draw one image twice: no pair left
    if not len(draws):
        return Score(value, value, value, value)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Score(value, float(draws.mean()), float(low), float(high))


def split_halves(count: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return order[: count // 2], order[count // 2 :]


def floor_score(x: np.ndarray, metric: Metric, *, resamples: int = 200, seed: int = 0) -> Score:
    """The data set against itself, split in two random halves: what "as close as the data itself" scores."""
    first, second = split_halves(len(x), seed=seed)
    return score(x[first], x[second], metric, resamples=resamples, seed=seed)


def nearest(generated: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each generated row, the index of the most similar data row and that cosine similarity."""
    similarity = generated @ data.T
    index = similarity.argmax(axis=1)
    # Rounding can put the similarity of identical unit vectors a hair above 1.
    return index, np.minimum(similarity[np.arange(len(generated)), index], 1.0)


def closest_pair(data: np.ndarray) -> float:
    """The highest cosine similarity between two different rows: the data's own "near duplicate" level."""
    similarity = data @ data.T
    np.fill_diagonal(similarity, -np.inf)
    return float(min(similarity.max(), 1.0))
