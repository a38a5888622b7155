"""Small helpers shared by tests."""

import numpy as np


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def mean_abs_diff(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())
