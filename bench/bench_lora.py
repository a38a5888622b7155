"""LoRA blending on the full-size SD1.5 UNet (random weights, CPU): slider latency and generation overhead.

Three rank-16 adapters (UNet attention + text-encoder attention, like most Civitai/kohya LoRAs) are written
to a temporary loras/ folder in the diffusers format and blended with `studio.lora.blend.apply_blend`.

1. Slider change: `apply_blend` with new weights on 3 loaded adapters (what releasing a slider does) vs
   reloading the 3 adapter files (delete + `load_lora_weights` x3 + `set_adapters`).
   Goal: at most 1/20 of a reload, and under 50 ms.
2. Per-image time, 3 active adapters vs none: unfused (peft adds B(A(x)) per layer) goal <= 1.15x;
   fused into the weights goal <= 1.02x. Measured as denoising time (`output_type="latent"`; the VAE decode
   is the same work with or without LoRAs, so leaving it out makes the ratio stricter, not looser), as CPU
   time of one thread, so that other processes on a shared machine do not distort the ratio.

    python bench/bench_lora.py [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, main_for, median_seconds, ratio_row

RANK = 16
ADAPTERS = ("alps", "sketch", "dunes")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def full_size_pipeline():
    """SD1.5 with the real UNet and text encoder architectures (random weights) and a small VAE."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from studio.models.tiny import _scheduler, byte_level_tokenizer

    configs = ROOT / "studio" / "models" / "configs" / "sd15"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    # Latents are timed, not decoded: any VAE with the 1/8 scale factor will do.
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=byte_level_tokenizer(),
        scheduler=_scheduler("epsilon"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_adapters(pipe, loras_dir: Path) -> None:
    import torch

    from studio.lora.files import LoraWeights, save_diffusers_lora
    from studio.models.kinds import ModelKind

    for i, name in enumerate(ADAPTERS):
        generator = torch.Generator().manual_seed(i)
        layers = {}
        parts = (("unet", pipe.unet, UNET_TARGETS), ("text_encoder", pipe.text_encoder, TEXT_TARGETS))
        for component, module, targets in parts:
            layers[component] = {}
            for path, layer in module.named_modules():
                if isinstance(layer, torch.nn.Linear) and path.endswith(targets):
                    down = torch.randn(RANK, layer.in_features, generator=generator) * 0.01
                    up = torch.randn(layer.out_features, RANK, generator=generator) * 0.01
                    layers[component][f"{path}.lora_A.weight"] = down
                    layers[component][f"{path}.lora_B.weight"] = up
        alphas = {"unet": RANK / 2, "text_encoder": RANK / 2}
        save_diffusers_lora(LoraWeights(ModelKind.SD15, layers, alphas), loras_dir / name)


def run(quick: bool) -> list[Row]:
    import torch

    from studio.lora.blend import apply_blend
    from studio.models.kinds import ModelKind
    from studio.models.manager import LoadedModel
    from studio.models.sources import ModelSource

    pipe = full_size_pipeline()
    source = ModelSource("bench-sd15", ModelKind.SD15, "demo", "bench-sd15")
    model = LoadedModel(source=source, kind=ModelKind.SD15, pipe=pipe)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        loras = Path(tmp)
        write_adapters(pipe, loras)
        blend = [(name, 0.5) for name in ADAPTERS]
        apply_blend(model, blend, loras_dir=loras)

        # 1. Slider change vs reload.
        weights = iter([0.1 + (i % 17) / 20 for i in range(10_000)])
        slider = median_seconds(
            lambda: apply_blend(model, [(n, next(weights)) for n in ADAPTERS], loras_dir=loras),
            repeat=10 if quick else 30,
            warmup=2,
        )

        def reload():
            pipe.delete_adapters([a for names in pipe.get_list_adapters().values() for a in names])
            for name in ADAPTERS:
                pipe.load_lora_weights(str(loras / name), adapter_name=name)
            pipe.set_adapters(list(ADAPTERS), [0.5] * len(ADAPTERS))

        reload_time = median_seconds(reload, repeat=2 if quick else 3, warmup=0)
        pipe.delete_adapters(list(ADAPTERS))
        rows.append(
            ratio_row(
                "LoRA slider move, 3 adapters, full SD1.5 UNet: vs reloading them",
                slider * 1000,
                reload_time * 1000,
                "ms",
                max_ratio=0.05,
                extra_ok=slider < 0.05,
                note=f"{slider * 1000:.1f} ms, goal < 50 ms",
            )
        )

        # 2. Per-image time: no LoRA / 3 adapters unfused / the same fused. Rounds rotate the order so drift and
        # cache effects hit all alike; CPU time of this one-thread process, so other load on the machine
        # (CI runners, parallel jobs) does not leak into the ratio.
        size, steps, repeat = (128, 1, 3) if quick else (256, 1, 5)
        states = {"none": ([], False), "unfused": (blend, False), "fused": (blend, True)}
        order = list(states)
        times: dict[str, list[float]] = {name: [] for name in states}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for round_ in range(repeat + 1):  # the first round warms up
                for name in order[round_ % 3 :] + order[: round_ % 3]:
                    loras_now, fuse = states[name]
                    apply_blend(model, loras_now, loras_dir=loras, fuse=fuse)
                    # Steady state, as when generating several images with one blend: the first call after a
                    # switch (fresh weights, cold caches) is not timed.
                    pipe("mountains", num_inference_steps=steps, width=size, height=size, output_type="latent")
                    start = time.process_time()
                    pipe("mountains", num_inference_steps=steps, width=size, height=size, output_type="latent")
                    times[name].append(time.process_time() - start)
        finally:
            torch.set_num_threads(threads)
        none, unfused, fused = (statistics.median(times[name][1:]) for name in ("none", "unfused", "fused"))
        label = f"CPU time per image {size}px {steps} step(s), full SD1.5 UNet"
        rows.append(ratio_row(f"{label}: 3 LoRAs unfused vs none", unfused, none, "s", max_ratio=1.15))
        rows.append(ratio_row(f"{label}: 3 LoRAs fused vs none", fused, none, "s", max_ratio=1.02))
    return rows


if __name__ == "__main__":
    main_for(run)
