"""One CLI generation vs a bare diffusers script, as whole processes: start, imports, load, sample, save a PNG.

"CLI" is `python -m studio generate --model <folder> ... --out <dir>`: argument checks, the model manager,
the A1111 prompt reader, the infotext with the model hash, the PNG with its infotext. "Bare" is the script a
diffusers user would write: `from_pretrained`, the Euler scheduler, `pipe(...)`, `image.save(...)`. Both load the
same diffusers folder in the same dtype (Studio's automatic choice for this CPU) with the same seed and steps, and
their pixels are compared. Goal: at most 1.05x. Processes alternate, so load from other work hits both alike.

The demo model is tiny: its row measures fixed costs (imports, set-up). Set STUDIO_BENCH_SD15_CHECKPOINT to a
full-size SD1.5 `.safetensors` (`bench/make_full_size_checkpoint.py --kind sd15 --out <file>`) to add the real
architecture (converted once to a diffusers folder, so both sides load the same files; quick runs: 64 px,
2 steps). Each process runs torch on STUDIO_BENCH_THREADS threads (default 1; see bench_generation).

    python bench/bench_cli.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, ratio_row

PROMPT = "satellite image of snowy mountains, high detail"
NEGATIVE = "blurry"
SEED = 1234
MAX_RATIO = 1.05

BARE_SCRIPT = """
import sys
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

folder, dtype, prompt, negative, steps, size, seed, out = sys.argv[1:]
pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=getattr(torch, dtype), safety_checker=None)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
image = pipe(
    prompt,
    negative_prompt=negative,
    num_inference_steps=int(steps),
    guidance_scale=7.0,
    width=int(size),
    height=int(size),
    generator=torch.Generator("cpu").manual_seed(int(seed)),
).images[0]
image.save(out)
"""


def _env() -> dict[str, str]:
    threads = os.environ.get("STUDIO_BENCH_THREADS", "1")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    if threads != "0":
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def _timed(command: list[str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n{result.stderr[-3000:]}")
    return seconds


def _auto_dtype() -> str:
    from studio.models.manager import resolve_device, resolve_dtype

    return str(resolve_dtype("auto", resolve_device("cpu"))).removeprefix("torch.")


def _bench_one(folder: Path, work: Path, size: int, steps: int, repeat: int, dtype: str) -> Row:
    import numpy as np
    from PIL import Image

    common = dict(prompt=PROMPT, negative=NEGATIVE, steps=str(steps), size=str(size), seed=str(SEED))
    cli_out, bare_out = work / f"cli-{folder.name}", work / f"bare-{folder.name}.png"

    def cli() -> float:
        command = [sys.executable, "-m", "studio", "generate", "--model", folder.name, "--prompt", PROMPT]
        command += ["--negative", NEGATIVE, "--steps", str(steps), "--width", str(size), "--height", str(size)]
        command += ["--seed", str(SEED), "--cfg", "7", "--scheduler", "Euler", "--device", "cpu", "--dtype", dtype]
        command += ["--models-dir", str(folder.parent), "--outputs-dir", str(work / "outputs"), "--out", str(cli_out)]
        command += ["--loras-dir", str(work / "loras"), "--embeddings-dir", str(work / "embeddings")]
        return _timed(command)

    def bare() -> float:
        values = [common[k] for k in ("prompt", "negative", "steps", "size", "seed")]
        return _timed([sys.executable, "-c", BARE_SCRIPT, str(folder), dtype, *values, str(bare_out)])

    times: dict[str, list[float]] = {"cli": [], "bare": []}
    for _ in range(repeat):  # in turns
        times["cli"].append(cli())
        times["bare"].append(bare())
    cli_image = sorted(cli_out.glob("*.png"))[-1]
    same = np.array_equal(np.asarray(Image.open(cli_image).convert("RGB")), np.asarray(Image.open(bare_out)))
    return ratio_row(
        f"one CLI generation, {folder.name} {size}px {steps} steps {dtype}: whole process vs bare diffusers script",
        statistics.median(times["cli"]),
        statistics.median(times["bare"]),
        "s",
        max_ratio=MAX_RATIO,
        extra_ok=same,
        note="identical pixels" if same else "PIXELS DIFFER",
    )


def _full_size_folder(checkpoint: Path, models: Path) -> Path:
    """The checkpoint as a diffusers folder, loaded the way Studio loads single files (offline configs)."""
    from studio.config import StudioConfig
    from studio.models.manager import ModelManager

    folder = models / "full-sd15"
    manager = ModelManager(StudioConfig(models_dir=checkpoint.parent, device="cpu", dtype="float32"))
    manager.load(str(checkpoint)).pipe.save_pretrained(folder)
    return folder


def run(quick: bool) -> list[Row]:
    from studio.models.kinds import ModelKind
    from studio.models.tiny import save_tiny

    dtype = os.environ.get("STUDIO_BENCH_DTYPE") or _auto_dtype()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, models = Path(tmp), Path(tmp) / "models"
        for name in ("loras", "embeddings", "outputs"):
            (work / name).mkdir()
        tiny = save_tiny(ModelKind.SD15, models / "tiny-sd15")
        rows.append(_bench_one(tiny, work, 256, 10 if quick else 20, 3 if quick else 5, dtype))
        checkpoint = os.environ.get("STUDIO_BENCH_SD15_CHECKPOINT")
        if checkpoint:  # quick: one run each of a small image, so the fixed costs still show
            full = _full_size_folder(Path(checkpoint).resolve(), models)
            rows.append(_bench_one(full, work, *((64, 2, 1) if quick else (256, 10, 2)), dtype))
    return rows


if __name__ == "__main__":
    from common import main_for

    main_for(run)
