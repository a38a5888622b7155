"""Evaluation benchmarks, as ratios measured side by side in one run.

1. Bootstrap intervals: ours computes the three kernel matrices once and resamples indices into them;
   the baseline recomputes the kernels from resampled features for each resample (the obvious way).
   Same numbers (checked), goal: ours takes at most a fifth of the time.
2. Scoring overhead: a whole evaluation of demo-sd15 (feature model, data embedding, floor, scores,
   grids, report) against bare generation of the same images. Tiny models make generation unrealistically
   cheap, so this is the worst case for the overhead; reported, goal loose (<= 3x).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from common import Row, interleaved_medians, main_for, ratio_row


def _naive_bootstrap(x, y, metric, resamples, seed):
    """Kernels recomputed on each resample's features; pairs of the same source image left out, as ours."""
    rng = np.random.default_rng(seed)

    def within(kernel, index):
        return kernel[index[:, None] != index[None, :]].mean()

    draws = []
    for _ in range(resamples):
        ix, iy = rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y))
        xs, ys = x[ix], y[iy]
        draws.append(
            within(metric.kernel(xs, xs), ix) + within(metric.kernel(ys, ys), iy) - 2 * metric.kernel(xs, ys).mean()
        )
    return np.array(draws) * metric.scale


def bootstrap_row(quick: bool) -> Row:
    from studio.evaluation import metrics

    rng = np.random.default_rng(0)
    data, generated = (rng.normal(size=(n, 768)) for n in ((128, 32) if quick else (400, 64)))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    generated /= np.linalg.norm(generated, axis=1, keepdims=True)
    metric, resamples = metrics.METRICS["cmmd"], 50 if quick else 200
    ours = metrics.score(generated, data, metric, resamples=resamples, seed=1)
    naive = _naive_bootstrap(generated, data, metric, resamples, seed=1)
    same = bool(np.isclose(ours.mean, naive.mean(), rtol=1e-9, atol=1e-12))
    times = interleaved_medians(
        {
            "ours": lambda: metrics.score(generated, data, metric, resamples=resamples, seed=1),
            "naive": lambda: _naive_bootstrap(generated, data, metric, resamples, seed=1),
        },
        repeat=3 if quick else 5,
    )
    name = f"CMMD bootstrap {resamples}x, {len(generated)} vs {len(data)} images, 768-d: precomputed kernels vs naive"
    return ratio_row(
        name,
        times["ours"],
        times["naive"],
        "s",
        max_ratio=0.2,
        extra_ok=same,
        note="same intervals" if same else "DIFFERENT numbers",
    )


def overhead_row(quick: bool) -> Row:
    from PIL import Image

    from studio.config import StudioConfig
    from studio.evaluation.requests import Candidate, EvaluationRequest, SamplingSettings
    from studio.evaluation.runner import evaluate
    from studio.generation.run import generate
    from studio.models.manager import ModelManager
    from tests.builders import save_tiny_feature_model

    root = Path(tempfile.mkdtemp(prefix="bench-evaluation-"))
    config = StudioConfig(models_dir=root / "m", loras_dir=root / "l", outputs_dir=root / "o", device="cpu")
    manager = ModelManager(config)
    clip = save_tiny_feature_model(root / "clip")
    (root / "data").mkdir()
    for i in range(16):
        Image.effect_noise((64, 64), 10 + 5 * i).convert("RGB").save(root / "data" / f"{i}.png")
    count = 4 if quick else 8
    sampling = SamplingSettings(steps=4, width=64, height=64, scheduler="Euler")
    request = EvaluationRequest(
        candidates=(Candidate("demo-sd15"),),
        data=root / "data",
        prompt="mountains",
        count=count,
        sampling=sampling,
        feature_model=str(clip),
    )
    generation = sampling.generation_request(Candidate("demo-sd15"), prompt="mountains", seed=0, count=count)
    generate(manager, generation)  # load the pipeline once, outside the timings
    times = interleaved_medians(
        {
            "evaluate": lambda: evaluate(manager, request, outputs_dir=config.outputs_dir),
            "generate": lambda: generate(manager, generation),
        },
        repeat=2 if quick else 4,
    )
    return ratio_row(
        f"evaluate demo-sd15 64px x{count} vs generating the same images",
        times["evaluate"],
        times["generate"],
        "s",
        max_ratio=3.0,
        note="tiny models: worst case for the overhead",
    )


def run(quick: bool) -> list[Row]:
    started = time.perf_counter()
    rows = [bootstrap_row(quick), overhead_row(quick)]
    print(f"bench_evaluation: {time.perf_counter() - started:.1f}s")
    return rows


if __name__ == "__main__":
    main_for(run)
