"""Training speed and peak memory: Studio's trainer vs the per-step work of diffusers' example script.

Baseline: a re-implementation (written here, not copied) of what `examples/text_to_image/
train_text_to_image_lora.py` of diffusers does at every step: load and transform the batch's images
(resize, center crop, random flip, normalize), tokenize the captions, VAE-encode the pixels and sample
the latent, run the text encoder, then noise + timesteps + UNet + MSE + backward + clip + AdamW. The VAE
and the text encoder stay on the device for the whole run, and nothing is cached. Same model, data,
LoRA settings (attention to_q/k/v/out.0, rank, alpha), optimizer, learning rate and batch size as ours.

Ours: `studio.training.trainer.train` (latents and text embeddings cached once, encoders moved off the
accelerator). Each variant runs in its own process, so peak memory is that run's alone: peak RSS on a
CPU, `torch.cuda.max_memory_allocated` on a GPU. Steps per second is the median step time after the
first (warm-up) step; the quick run alternates three runs of each and takes the medians.

Also prints the VRAM budget of every preset, from parameter counts (studio/training/presets.py).

    python bench/bench_training.py --quick     # demo-sd15 at 64 px
    python bench/bench_training.py             # the full-size SD1.5 architecture (random weights) at 256 px
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, main_for, ratio_row

SETTINGS = dict(rank=16, alpha=16.0, learning_rate=1e-4, batch_size=1, seed=0, random_flip=True, buckets=False)


def run(quick: bool) -> list[Row]:
    from studio.training.presets import GB, PRESETS, estimate_vram
    from studio.training.request import TrainingRequest
    from tests.helpers import make_photo_folder

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        photos = make_photo_folder(tmp / "photos")
        if quick:
            model, resolution, steps, rounds = "demo-sd15", 64, 40, 3
        else:
            model, resolution, steps, rounds = str(_full_size_sd15(tmp / "models" / "sd15-full")), 256, 5, 1
        # Rounds alternate ours and baseline (A B A B ...), so load from other processes hits both alike.
        results: dict[str, list[dict]] = {"ours": [], "baseline": []}
        for round_ in range(rounds):
            for variant in results:
                job = dict(
                    model=model,
                    resolution=resolution,
                    steps=steps,
                    data=str(photos),
                    root=str(tmp / f"{variant}-{round_}"),
                )
                results[variant].append(_child(variant, job))
        ours, baseline = (
            {key: statistics.median(r[key] for r in runs) if key != "memory_kind" else runs[0][key] for key in runs[0]}
            for runs in results.values()
        )
        label = "demo-sd15 64px" if quick else "full-size SD1.5 (random) 256px"
        rows.append(
            ratio_row(
                f"train steps/s, {label}: cached vs example-style",
                1 / ours["step_seconds"],
                1 / baseline["step_seconds"],
                "steps/s",
                min_ratio=1.5,
            )
        )
        rows.append(
            ratio_row(
                f"train peak {ours['memory_kind']}, {label}",
                ours["peak_gb"],
                baseline["peak_gb"],
                "GB",
                max_ratio=1.0,
                note="CPU: encoders stay in RAM, cache adds" if ours["memory_kind"] == "RSS" else "",
            )
        )
        rows.append(
            Row(
                f"train wall time incl. load+cache, {label}",
                ours["wall_seconds"],
                baseline["wall_seconds"],
                "s",
                "info",
                True,
            )
        )

    rows += [_flop_share_row(kind, size) for kind, size in (("sd15", 512), ("sdxl", 1024))]
    print("VRAM budget of the presets (full-size models, from parameter counts):", file=sys.stderr)
    for preset in (p for p in PRESETS.values() if p.vram_gb):  # the CPU presets have no card to fit
        request = TrainingRequest(data=ROOT, model="x", name="x", **preset.settings)
        estimate = estimate_vram(request, preset.kind)
        print(
            f"  {preset.name:<10} {estimate.summary()} -> budget {preset.vram_gb} GB "
            f"({'fits' if estimate.total <= preset.vram_gb * GB else 'OVER'})",
            file=sys.stderr,
        )
    return rows


def _flop_share_row(kind_name: str, size: int) -> Row:
    """What caching can win where time follows FLOPs: the example's step (VAE encode + text encoders + UNet forward
    and backward) over the cached step (UNet alone), counted on the meta device for the full-size models. On this
    CPU the UNet step runs at about half the VAE's FLOPs per second, so the measured gain is smaller; on a GPU the
    VAE's full-resolution convolutions are memory-bound, so it may be larger. Not measured on a GPU."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    from studio.models.kinds import ModelKind
    from studio.models.single_file import BUNDLED_CONFIGS
    from studio.training.presets import PARAMS
    from studio.training.trainer import UNET_TARGETS

    kind = ModelKind(kind_name)
    folder = BUNDLED_CONFIGS[kind]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        encoders = [
            CLIPTextModel(CLIPTextConfig.from_pretrained(folder / name))
            for name in ("text_encoder", "text_encoder_2")
            if name in PARAMS[kind]
        ]
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=UNET_TARGETS))
        side = size // 8
        extra = {}
        if kind is ModelKind.SDXL:
            extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}

        def flops(fn) -> int:
            with FlopCounterMode(display=False) as counter:
                fn()
            return counter.get_total_flops()

        def unet_step():
            text = torch.randn(1, 77, unet.config.cross_attention_dim)
            unet(torch.randn(1, 4, side, side), torch.tensor([500]), text, **extra).sample.float().mean().backward()

        cached = flops(unet_step)
        with torch.no_grad():
            encode = flops(lambda: vae.encode(torch.randn(1, 3, size, size)))
            # The projection variant (text_encoder_2) costs about as much as a plain CLIP text model of its size.
            text = sum(flops(lambda e=e: e(torch.zeros(1, 77, dtype=torch.long))) for e in encoders)
    label = f"{kind.label} {size}px"
    return Row(
        f"FLOPs per step, {label}: example-style vs cached (the caching gain if time followed FLOPs)",
        (cached + encode + text) / 1e12,
        cached / 1e12,
        "TFLOP",
        "info",
        True,
    )


def _full_size_sd15(folder: Path) -> Path:
    """The real SD1.5 architecture with random weights (bundled configs), saved as a diffusers folder."""
    import torch

    from studio.models.kinds import ModelKind
    from tests.builders import build_random_pipeline

    started = time.perf_counter()
    build_random_pipeline(ModelKind.SD15, torch.float16).save_pretrained(folder, safe_serialization=True)
    print(f"built the full-size SD1.5 folder in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return folder


def _child(variant: str, job: dict) -> dict:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, "--child", variant, json.dumps(job)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{result.stderr[-3000:]}")
    values = json.loads(result.stdout.strip().splitlines()[-1])
    values["wall_seconds"] = time.perf_counter() - started
    print(f"{variant}: {values}", file=sys.stderr)
    return values


def _peak() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1024**3, "VRAM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, "RSS"


def child_ours(job: dict) -> dict:
    from studio.config import StudioConfig
    from studio.training.request import TrainingRequest
    from studio.training.trainer import train

    root = Path(job["root"])
    config = StudioConfig(models_dir=root / "models", loras_dir=root / "loras", outputs_dir=root / "outputs")
    request = TrainingRequest(
        data=Path(job["data"]),
        model=job["model"],
        name="bench",
        caption="mountains",
        steps=job["steps"],
        resolution=job["resolution"],
        validation_steps=2,
        checkpoint_every=0,
        **SETTINGS,
    )
    paces = []
    folder = train(request, config, on_event=lambda e: paces.append(e.sec_per_step) if e.kind == "step" else None)
    # The events carry the running mean; recover each step's own time from it.
    times = [paces[0]] + [(i + 1) * paces[i] - i * paces[i - 1] for i in range(1, len(paces))]
    from studio.lora.files import read_lora

    weights = read_lora(folder)
    assert weights.rank() == SETTINGS["rank"] and weights.alphas["unet"] == SETTINGS["alpha"]
    peak, kind = _peak()
    return {
        "step_seconds": statistics.median(times[1:]),
        "peak_gb": peak,
        "memory_kind": kind,
        "lora_modules": len(weights.modules("unet")),
    }


def child_baseline(job: dict) -> dict:
    """Per-step work of diffusers' train_text_to_image_lora.py, re-implemented (see the module docstring)."""
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from PIL import Image

    from studio.config import StudioConfig
    from studio.models.manager import ModelManager
    from studio.training.request import TrainingRequest, check_dataset

    root = Path(job["root"])
    config = StudioConfig(models_dir=root / "models", loras_dir=root / "loras", outputs_dir=root / "outputs")
    manager = ModelManager(config)
    pipe = manager.load(job["model"]).pipe
    device = manager.device
    samples = check_dataset(TrainingRequest(data=Path(job["data"]), model="x", name="x", caption="mountains")).samples
    vae, text_encoder, unet, tokenizer = pipe.vae, pipe.text_encoder, pipe.unet, pipe.tokenizer
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False)
        module.to(device)  # the example keeps every model on the device
    torch.manual_seed(SETTINGS["seed"])
    unet.add_adapter(
        LoraConfig(
            r=SETTINGS["rank"],
            lora_alpha=SETTINGS["alpha"],
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=SETTINGS["learning_rate"], betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    size, rng = job["resolution"], random.Random(SETTINGS["seed"])

    def transform(path: Path) -> torch.Tensor:  # Resize(shorter side) + CenterCrop + RandomHorizontalFlip + Normalize
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        image = image.resize(
            (max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.Resampling.BILINEAR
        )
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)

    times = []
    unet.train()
    for step in range(job["steps"]):
        started = time.perf_counter()
        batch = [samples[rng.randrange(len(samples))] for _ in range(SETTINGS["batch_size"])]
        pixels = torch.stack([transform(s.path) for s in batch]).to(device)
        ids = tokenizer(
            [s.caption for s in batch],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), device=device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(ids)[0]
        prediction = unet(noisy, timesteps, hidden).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    unet.eval()
    generator = torch.Generator("cpu").manual_seed(0)
    pipe("mountains", num_inference_steps=2, height=size, width=size, generator=generator)  # the final validation
    peak, kind = _peak()
    return {"step_seconds": statistics.median(times[1:]), "peak_gb": peak, "memory_kind": kind}


if __name__ == "__main__":
    if "--child" in sys.argv:
        variant, job = sys.argv[2], json.loads(sys.argv[3])
        result = (child_ours if variant == "ours" else child_baseline)(job)
        print(json.dumps(result))
    else:
        main_for(run)
