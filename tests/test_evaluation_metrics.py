"""CMMD / KID on features where the answer is known: the estimator, the floor, intervals, nearest neighbours."""

import numpy as np
import pytest

from studio.evaluation import metrics
from studio.evaluation.metrics import METRICS


def sphere(rng, count, dim=16, shift=None):
    """Unit vectors around a random centre (or `shift`): one "distribution" of L2-normalised features."""
    x = rng.normal(size=(count, dim)) * 0.3 + (shift if shift is not None else 0)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_mmd2(x, y, k):
    """The unbiased MMD^2 written out as in Gretton et al. 2012, eq. 3, one pair at a time."""
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def gaussian(a, b, sigma=10.0):
    return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))


def cubic(a, b):
    return (a @ b / len(a) + 1) ** 3


@pytest.mark.parametrize("key, pair_kernel", [("cmmd", gaussian), ("kid", cubic)])
def test_estimator_matches_the_definition_pair_by_pair(key, pair_kernel):
    rng = np.random.default_rng(1)
    x, y = sphere(rng, 7), sphere(rng, 5, shift=1.0)
    assert metrics.mmd2(x, y, METRICS[key].kernel) == pytest.approx(brute_force_mmd2(x, y, pair_kernel), rel=1e-9)
    # CMMD is reported x1000, as in the paper.
    result = metrics.score(x, y, METRICS[key], resamples=20)
    assert result.value == pytest.approx(1000 * brute_force_mmd2(x, y, pair_kernel), rel=1e-9)


def test_same_distribution_scores_at_the_floor_and_a_different_one_far_above():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    data = sphere(rng, 40, shift=centre)
    same = sphere(rng, 40, shift=centre)  # new draws from the data's distribution
    other = sphere(rng, 40, shift=rng.normal(size=16))

    floor = metrics.floor_score(data, METRICS["cmmd"])
    assert floor.low <= 0 <= floor.high  # the data against itself: 0 up to sampling noise
    near = metrics.score(same, data, METRICS["cmmd"])
    far = metrics.score(other, data, METRICS["cmmd"])
    assert near.low <= 0 <= near.high
    assert far.low > 10 * max(floor.high, near.high)
    assert far.value > 50 * abs(near.value)


def test_an_exact_copy_of_the_data_scores_at_or_below_the_floor():
    rng = np.random.default_rng(2)
    data = sphere(rng, 20, shift=rng.normal(size=16))
    for key in ("cmmd", "kid"):
        copy = metrics.score(data.copy(), data, METRICS[key])
        floor = metrics.floor_score(data, METRICS[key])
        assert copy.value < 0 <= floor.high  # every image meets its twin: below what fresh samples score
        assert floor.low <= copy.value  # "at the floor": inside its interval, not an outlier either way


def test_intervals_are_reproducible_and_contain_the_estimate():
    rng = np.random.default_rng(3)
    x, y = sphere(rng, 12), sphere(rng, 9, shift=0.5)
    first = metrics.score(x, y, METRICS["cmmd"], resamples=100, seed=7)
    assert first == metrics.score(x, y, METRICS["cmmd"], resamples=100, seed=7)
    assert first != metrics.score(x, y, METRICS["cmmd"], resamples=100, seed=8)
    assert first.low < first.value < first.high
    assert first.low < first.mean < first.high


def test_bootstrap_duplicates_do_not_inflate_the_score():
    # Resampling with replacement repeats images; counting an image paired with its own repeat would add
    # k(x, x) = 1 to the within-set average and push every resample up. The mean must stay near the estimate.
    rng = np.random.default_rng(4)
    centre = rng.normal(size=16)
    x, y = sphere(rng, 10, shift=centre), sphere(rng, 10, shift=centre)
    result = metrics.score(x, y, METRICS["cmmd"], resamples=500)
    assert abs(result.mean - result.value) < (result.high - result.low) / 4


def test_floor_uses_two_disjoint_halves():
    first, second = metrics.split_halves(9, seed=0)
    assert len(first) == 4 and len(second) == 5
    assert sorted(np.concatenate([first, second])) == list(range(9))


def test_nearest_finds_the_copy_of_each_generated_image():
    rng = np.random.default_rng(5)
    data = sphere(rng, 10)
    picks = [7, 2, 2, 9]
    index, similarity = metrics.nearest(data[picks], data)
    assert index.tolist() == picks
    assert similarity == pytest.approx(np.ones(4))


def test_fewer_than_two_images_per_set_is_refused():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="at least 2 images"):
        metrics.score(sphere(rng, 1), sphere(rng, 5), METRICS["cmmd"])


def test_closest_pair_ignores_each_image_itself():
    data = np.eye(4)
    data[3] = (data[0] + data[1] * 0.1) / np.linalg.norm(data[0] + data[1] * 0.1)
    assert metrics.closest_pair(data) == pytest.approx(1 / np.sqrt(1.01))
