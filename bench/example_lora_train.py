"""BENCH-ONLY BASELINE, not part of Studio: what diffusers' LoRA example script does, re-implemented.

The reference is `examples/text_to_image/train_text_to_image_lora.py` of huggingface/diffusers (the peft
version). It cannot be downloaded here, so this file re-implements its program flow from reading it (not a
copy), with the same options under the same names, for `bench_training_e2e.py` to time from a cold process:

    1. Accelerator(mixed_precision); the noise scheduler, tokenizer, text encoder, VAE and UNet loaded one by
       one with from_pretrained; frozen; moved to the device in the weight dtype (fp16/bf16 with mixed
       precision, else fp32); LoRA (rank r, alpha r, gaussian init, to_q/k/v/out.0) added to the UNet; the
       LoRA parameters upcast to fp32 only for fp16, as the example does.
    2. AdamW (lr, betas 0.9/0.999, weight decay 1e-2, eps 1e-8); `datasets.load_dataset("imagefolder")` on
       the folder (captions from metadata.jsonl); per image: resize the shorter side to the resolution
       (bilinear), random crop (the example's default; --center_crop for a center crop), random horizontal
       flip, to [-1, 1]; captions tokenized to 77 tokens; a shuffled DataLoader; the LR schedule; prepared.
    3. Each step, with accelerator.accumulate: VAE-encode the batch and sample the latent, noise, timesteps,
       text-encode the captions, UNet, MSE (min-SNR when asked), gather the loss, backward, clip to 1.0,
       step. Checkpoints every --checkpointing_steps (500 by default: none in a 30-step run).
    4. The UNet upcast to fp32, its LoRA state dict converted to diffusers keys and saved with
       StableDiffusionPipeline.save_lora_weights. Validation images only with --validation_prompt (the
       timed runs pass none, as the example's own README command does not).

Differences, none of which changes the work per step: torchvision is not installed here, so the image
transforms are written with PIL and numpy (same operations); no trackers (tensorboard) are started.
Prints one JSON line on stdout: seconds per phase (load, data, steps, export) and the loss of each step.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained_model_name_or_path", required=True)
    parser.add_argument("--train_data_dir", required=True)
    parser.add_argument("--caption_column", default="text")
    parser.add_argument("--output_dir", default="sd-model-finetuned-lora")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--center_crop", action="store_true")
    parser.add_argument("--random_flip", action="store_true")
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--num_train_epochs", type=int, default=100)
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--lr_scheduler", default="constant")
    parser.add_argument("--lr_warmup_steps", type=int, default=500)
    parser.add_argument("--snr_gamma", type=float, default=None)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--rank", type=int, default=4)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params, compute_snr
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTokenizer

    phases = {}
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision
    )
    if args.seed is not None:
        set_seed(args.seed)
    model = args.pretrained_model_name_or_path
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    lora_config = LoraConfig(
        r=args.rank,
        lora_alpha=args.rank,
        init_lora_weights="gaussian",
        target_modules=["to_k", "to_q", "to_v", "to_out.0"],
    )
    for module in (unet, vae, text_encoder):
        module.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(lora_config)
    if args.mixed_precision == "fp16":
        cast_training_params(unet, dtype=torch.float32)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=args.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    phases["load"] = time.perf_counter() - started

    mark = time.perf_counter()
    from datasets import load_dataset
    from PIL import Image

    dataset = load_dataset(
        "imagefolder", data_files={"train": str(Path(args.train_data_dir) / "**")}, cache_dir=args.cache_dir
    )
    size = args.resolution

    def transform(image: Image.Image) -> torch.Tensor:
        # Resize(size, bilinear) + RandomCrop/CenterCrop(size) + RandomHorizontalFlip + ToTensor + Normalize(0.5, 0.5)
        scale = size / min(image.size)
        image = image.resize(
            (max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BILINEAR
        )
        if args.center_crop:
            left, top = (image.width - size) // 2, (image.height - size) // 2
        else:
            left, top = random.randint(0, image.width - size), random.randint(0, image.height - size)
        image = image.crop((left, top, left + size, top + size))
        if args.random_flip and random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)

    def preprocess(examples):
        examples["pixel_values"] = [transform(image.convert("RGB")) for image in examples["image"]]
        captions = examples[args.caption_column]
        examples["input_ids"] = tokenizer(
            captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids
        return examples

    train_dataset = dataset["train"].with_transform(preprocess)

    def collate(examples):
        pixel_values = torch.stack([e["pixel_values"] for e in examples]).to(memory_format=torch.contiguous_format)
        return {"pixel_values": pixel_values.float(), "input_ids": torch.stack([e["input_ids"] for e in examples])}

    dataloader = torch.utils.data.DataLoader(
        train_dataset, shuffle=True, collate_fn=collate, batch_size=args.train_batch_size
    )
    updates_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    epochs = math.ceil(max_steps / updates_per_epoch)
    phases["data"] = time.perf_counter() - mark

    mark, global_step, losses = time.perf_counter(), 0, []
    for _epoch in range(epochs):
        unet.train()
        train_loss = 0.0
        for batch in dataloader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"].to(dtype=weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
                ).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                else:
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
                if args.snr_gamma is None:
                    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                else:
                    snr = compute_snr(noise_scheduler, timesteps)
                    weights = torch.stack([snr, args.snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
                    weights = (
                        weights / snr if noise_scheduler.config.prediction_type == "epsilon" else weights / (snr + 1)
                    )
                    loss = (
                        F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3]) * weights
                    )
                    loss = loss.mean()
                avg_loss = accelerator.gather(loss.repeat(args.train_batch_size)).mean()
                train_loss += avg_loss.item() / args.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(lora_layers, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                global_step += 1
                losses.append(train_loss)
                train_loss = 0.0
                if global_step % args.checkpointing_steps == 0 and accelerator.is_main_process:
                    accelerator.save_state(str(Path(args.output_dir) / f"checkpoint-{global_step}"))
            if global_step >= max_steps:
                break
    phases["steps"] = time.perf_counter() - mark

    mark = time.perf_counter()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet).to(torch.float32)
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(
            save_directory=args.output_dir, unet_lora_layers=state, safe_serialization=True
        )
    accelerator.end_training()
    phases["export"] = time.perf_counter() - mark
    phases["total"] = time.perf_counter() - started
    return {"phases": phases, "steps": global_step, "losses": losses}


if __name__ == "__main__":
    print(json.dumps(main()))
