"""Image-to-image and inpainting: cost against text-to-image, and what switching modes costs.

Through the real engine (`studio.generation.run.generate` on a `ModelManager`) on the full-size SD1.5
architecture with random weights (saved once to a temporary folder, loaded in the precision Studio picks here).
- Image-to-image at strength s runs int(steps x s) of the steps (plus one VAE encode), so it should cost about
  s x a text-to-image generation of the same size and steps. Goal: ratio <= s + 0.1 for s = 0.25, 0.5, 0.75, 1.
  Inpainting at strength 1 runs every step plus an encode of the picture and of the masked picture: info row.
- Switching mode reuses the loaded weights (`LoadedModel.pipeline_for` = `from_pipe`): no model load, no
  second copy of any tensor (distinct weight storage of the three pipelines vs the loaded one: ratio 1), and
  resident memory after many txt2img -> img2img -> inpaint rounds within 5% of before.

    python bench/bench_img2img.py [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import Row, interleaved_medians, main_for, ratio_row

STRENGTHS = (0.25, 0.5, 0.75, 1.0)
MAX_RSS_GROWTH = 1.05


def _picture(size: int):
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    return Image.fromarray(np.stack([x * 255 // size, y * 255 // size, (x + y) % 256], -1).astype(np.uint8))


def _weight_bytes(pipes) -> int:
    """Bytes of distinct tensor storage over the pipelines' modules (a shared tensor counts once)."""
    import torch

    seen = {}
    for pipe in pipes:
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                for tensor in [*module.parameters(), *module.buffers()]:
                    seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values())


def run(quick: bool) -> list[Row]:
    import dataclasses

    import torch
    from bench_switch import rss_mb
    from PIL import Image

    from studio.config import StudioConfig
    from studio.generation.request import GenerationRequest
    from studio.generation.run import generate
    from studio.models.kinds import ModelKind
    from studio.models.manager import ModelManager, resolve_dtype
    from tests.builders import build_random_pipeline

    class CountingManager(ModelManager):
        loads = 0

        def load(self, source, **kwargs):
            CountingManager.loads += 1
            return super().load(source, **kwargs)

    size, steps, repeat = (128, 8, 1) if quick else (256, 20, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("models", "loras", "outputs"):
            (root / name).mkdir()
        dtype = resolve_dtype("auto", torch.device("cpu"))
        build_random_pipeline(ModelKind.SD15, dtype).save_pretrained(root / "models" / "sd15-full")
        config = StudioConfig(
            models_dir=root / "models", loras_dir=root / "loras", outputs_dir=root / "outputs", device="cpu"
        )
        manager = CountingManager(config)
        text = GenerationRequest(model="sd15-full", prompt="mountains", steps=steps, seed=1, width=size, height=size)
        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        redraw = {s: dataclasses.replace(text, init_image=_picture(size), strength=s) for s in STRENGTHS}
        inpaint = dataclasses.replace(text, init_image=_picture(size), mask=mask, strength=1.0)
        runs = {"txt2img": lambda: generate(manager, text)}
        runs.update({f"img2img {s:g}": (lambda r=r: generate(manager, r)) for s, r in redraw.items()})
        runs["inpaint"] = lambda: generate(manager, inpaint)
        times = interleaved_medians(runs, repeat=repeat)
        label = f"SD1.5 full size {size}px {steps} steps ({str(dtype).removeprefix('torch.')})"
        for s in STRENGTHS:
            rows.append(
                ratio_row(
                    f"{label}: img2img strength {s:g} vs txt2img",
                    times[f"img2img {s:g}"],
                    times["txt2img"],
                    "s",
                    max_ratio=s + 0.1,
                    note=f"{int(steps * s)} of {steps} steps",
                )
            )
        rows.append(
            dataclasses.replace(
                ratio_row(f"{label}: inpaint strength 1 vs txt2img", times["inpaint"], times["txt2img"], "s"),
                goal="info",
            )
        )

        with manager.acquire("sd15-full") as loaded:
            shared = _weight_bytes([loaded.pipe, loaded.pipeline_for("img2img"), loaded.pipeline_for("inpaint")])
            alone = _weight_bytes([loaded.pipe])
        rows.append(
            ratio_row(
                "distinct weight storage: txt2img + img2img + inpaint pipelines vs the loaded one",
                shared / 2**30,
                alone / 2**30,
                "GB",
                max_ratio=1.0,
            )
        )
        loads_before, rss_before = CountingManager.loads, rss_mb()
        small = {"steps": 2, "width": 64, "height": 64}
        cycle = [dataclasses.replace(r, **small) for r in (text, redraw[0.5], inpaint)]
        for _ in range(3 if quick else 10):
            for request in cycle:
                generate(manager, request)
        if rss_before is not None:
            rows.append(
                ratio_row(
                    f"RSS after {3 if quick else 10} txt2img -> img2img -> inpaint rounds vs before",
                    rss_mb(),
                    rss_before,
                    "MB",
                    max_ratio=MAX_RSS_GROWTH,
                    extra_ok=CountingManager.loads == loads_before,
                    note=f"model loads during the rounds: {CountingManager.loads - loads_before}",
                )
            )
    return rows


if __name__ == "__main__":
    main_for(run)
