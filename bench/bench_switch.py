"""Switching models: back to a model parked in the RAM cache vs loading it cold; memory over many switches.

Two tiny diffusers folders (SD1.5 and SDXL shaped) are saved to a temporary models folder and loaded
through the real `ModelManager`. "Cold" is a fresh manager loading the folder from disk (what the
first pick of a model costs); "cached" is `acquire()` of a model that another model displaced
(the README promises switching back is fast). Goal: the cached switch takes at most a fifth of a cold load.
Memory: resident set size (Linux /proc) after many A -> B -> A switches vs after the first few;
goal: at most 5% growth. Set STUDIO_BENCH_SD15_CHECKPOINT to a full-size SD1.5 `.safetensors` to
switch a real-size model too (non-quick runs).

    python bench/bench_switch.py [--quick]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from common import Row, interleaved_medians, main_for, ratio_row

MAX_CACHED_RATIO = 0.2
MAX_RSS_GROWTH = 1.05


def rss_mb() -> float | None:
    """Resident set size of this process in MB, or None where /proc is missing."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _config(root: Path):
    from studio.config import StudioConfig

    for name in ("models", "loras", "outputs"):
        (root / name).mkdir(exist_ok=True)
    return StudioConfig(
        models_dir=root / "models", loras_dir=root / "loras", outputs_dir=root / "outputs", device="cpu"
    )


def _switch_rows(config, model_a: str, model_b: str, *, repeat: int, cycles: int) -> list[Row]:
    from studio.models.manager import ModelManager

    def cold():
        with ModelManager(config).acquire(model_a):
            pass

    manager = ModelManager(config)
    for name in (model_a, model_b):
        with manager.acquire(name):
            pass

    def cached():
        with manager.acquire(model_a) as loaded:
            assert loaded is manager.active
        with manager.acquire(model_b):  # untimed in spirit: the same cost as the timed switch, other direction
            pass

    times = interleaved_medians({"cold": cold, "cached": cached}, repeat=repeat)
    label = Path(model_a).name
    # `cached` switched twice (to A and back to B); one switch is half of it.
    rows = [
        ratio_row(
            f"switch back to {label}: RAM cache vs cold load",
            times["cached"] / 2,
            times["cold"],
            "s",
            max_ratio=MAX_CACHED_RATIO,
        ),
    ]

    if rss_mb() is not None:
        for _ in range(3):
            cached()
        settled = rss_mb()
        for _ in range(cycles):
            cached()
        after = rss_mb()
        rows.append(
            ratio_row(
                f"RSS after {cycles} more {label} <-> {Path(model_b).name} switches vs before",
                after,
                settled,
                "MB",
                max_ratio=MAX_RSS_GROWTH,
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    from studio.models.kinds import ModelKind
    from studio.models.tiny import save_tiny

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp))
        save_tiny(ModelKind.SD15, config.models_dir / "tiny-sd15")
        save_tiny(ModelKind.SDXL, config.models_dir / "tiny-sdxl")
        rows += _switch_rows(config, "tiny-sd15", "tiny-sdxl", repeat=3 if quick else 7, cycles=10 if quick else 40)
        checkpoint = os.environ.get("STUDIO_BENCH_SD15_CHECKPOINT")
        if checkpoint and not quick:
            rows += _switch_rows(config, str(Path(checkpoint).resolve()), "tiny-sdxl", repeat=2, cycles=5)
    return rows


if __name__ == "__main__":
    main_for(run)
