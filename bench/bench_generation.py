"""The app's generation time vs a bare diffusers call on the same pipeline, seed and scheduler.

"App" is what a click on Generate runs: `Studio.generate_stream` (validation, the model manager's
lock, the scheduler picked by its A1111 name, the per-step callback with its latent preview and Stop
check, infotext, the background thread) plus writing the PNGs with their infotext. "Engine" is the
same without the thread and the PNG files (`studio.generation.generate`). "Bare" is
`pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), ...)` with the scheduler built
directly from diffusers. Goal: at most 3% slower, and identical pixels.

The demo models are tiny, so their steps are cheap and fixed costs weigh far more than on a real
model. Runs on one CPU thread unless STUDIO_BENCH_THREADS says otherwise (see `run`).
Set STUDIO_BENCH_SD15_CHECKPOINT to a full-size SD1.5 `.safetensors` (for example the one
`bench/make_full_size_checkpoint.py --kind sd15 --out <file>` writes) to add the real architecture.

    python bench/bench_generation.py [--quick]
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from common import Row, interleaved_medians, main_for, ratio_row

PROMPT = "satellite image of snowy mountains, high detail"
NEGATIVE = "blurry"
SEED = 1234
MAX_RATIO = 1.03


def _cases(quick: bool) -> list[tuple[str, int, int, int]]:
    """(model, size, steps, repeats) to measure."""
    cases = [("demo-sd15", 256, 10 if quick else 20, 9 if quick else 11)]
    if not quick:
        cases.append(("demo-sdxl", 256, 20, 11))
        checkpoint = os.environ.get("STUDIO_BENCH_SD15_CHECKPOINT")
        if checkpoint:
            cases.append((str(Path(checkpoint).resolve()), 128, 4, 2))
    return cases


def on_worker_thread(fn):
    """`fn` run on a fresh thread, as the app runs every generation."""

    def run_on_thread():
        thread = threading.Thread(target=fn)
        thread.start()
        thread.join()

    return run_on_thread


def _bench_one(studio, model: str, size: int, steps: int, repeat: int, *, thread_row: bool) -> list[Row]:
    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler

    from studio.engine import Finished
    from studio.generation.request import GenerationRequest
    from studio.generation.run import generate

    request = GenerationRequest(
        model=model,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        steps=steps,
        cfg=7.0,
        seed=SEED,
        width=size,
        height=size,
        scheduler="Euler",
    )
    images: dict[str, object] = {}

    def app():
        for event in studio.generate_stream(request):
            if isinstance(event, Finished):
                images["app"] = event.result.images[0]

    def engine():
        images["engine"] = generate(studio.manager, request, on_step=lambda info: None).images[0]

    with studio.manager.acquire(model) as loaded:
        pipe, base_config = loaded.pipe, loaded.base_scheduler_config

    def bare():
        pipe.scheduler = EulerDiscreteScheduler.from_config(base_config)
        generator = torch.Generator("cpu").manual_seed(SEED)
        images["bare"] = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=steps,
            guidance_scale=7.0,
            width=size,
            height=size,
            generator=generator,
        ).images[0]

    # The app runs the pipeline on a worker thread. torch's CPU thread pool behaves differently there than on
    # the main thread (up to 80x apart on 2 busy shared cores), so the app/engine/bare comparison runs all
    # three on worker threads, and (full runs) a separate row shows the worker thread vs the main thread.
    times = interleaved_medians(
        {"app": app, "engine": on_worker_thread(engine), "bare": on_worker_thread(bare)}, repeat=repeat
    )

    def same_pixels(name):
        return np.array_equal(np.asarray(images[name]), np.asarray(images["bare"]))

    label = Path(model).name if os.sep in model else model
    what = f"{label} {size}px {steps} steps"
    rows = [
        ratio_row(
            f"generate {what}: app (+PNG save) vs bare diffusers",
            times["app"],
            times["bare"],
            "s",
            max_ratio=MAX_RATIO,
            extra_ok=same_pixels("app"),
            note="identical pixels" if same_pixels("app") else "PIXELS DIFFER",
        ),
        ratio_row(
            f"generate {what}: engine vs bare diffusers",
            times["engine"],
            times["bare"],
            "s",
            max_ratio=MAX_RATIO,
            extra_ok=same_pixels("engine"),
            note="identical pixels" if same_pixels("engine") else "PIXELS DIFFER",
        ),
    ]
    if thread_row:
        threads = interleaved_medians({"worker": on_worker_thread(bare), "main": bare}, repeat=3)
        rows.append(
            ratio_row(
                f"bare diffusers {what}: worker thread vs main thread",
                threads["worker"],
                threads["main"],
                "s",
                max_ratio=MAX_RATIO,
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    import torch

    from studio.config import StudioConfig
    from studio.engine import Studio

    # One CPU thread by default: on a busy or shared machine torch's multi-thread pool spins and swings timings
    # by 10x and more, which swamps the few percent measured here. STUDIO_BENCH_THREADS=0 keeps torch's default.
    threads = int(os.environ.get("STUDIO_BENCH_THREADS", "1"))
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: Path(tmp) / name for name in ("models", "loras", "outputs")}
        for folder in folders.values():
            folder.mkdir()
        config = StudioConfig(
            models_dir=folders["models"], loras_dir=folders["loras"], outputs_dir=folders["outputs"], device="cpu"
        )
        studio = Studio(config)
        for model, size, steps, repeat in _cases(quick):
            rows += _bench_one(studio, model, size, steps, repeat, thread_row=not quick and model == "demo-sd15")
    torch.set_num_threads(previous_threads)  # run_all runs other benchmarks in this process
    return rows


if __name__ == "__main__":
    main_for(run)
