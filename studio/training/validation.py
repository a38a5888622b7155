"""Validation samples: one image from the same prompt and seed every N steps, so the user sees the LoRA learn.

A sample is a preview, not a result: by default it is drawn at half the training resolution with few steps
(`TrainingRequest.sample_size`, `validation_steps`), since on a CPU a full-size 20-step sample cost as much as
a dozen training steps. The infotext records the size and steps, so the image can be redrawn exactly.
"""

from __future__ import annotations

import torch

from studio.generation import outputs
from studio.generation.infotext import build_infotext
from studio.models.kinds import ModelKind
from studio.models.precision import precision_name
from studio.training.events import TrainingEvent
from studio.training.setup import Run, text_encoders

VALIDATION_SAMPLER = "Euler"
VALIDATION_CFG = 7.0


@torch.no_grad()
def sample(run: Run, step: int) -> dict:
    """Draw the validation image with the model as trained so far; saved with A1111 infotext.

    Returns the sample's entry for the run state (and the adapter manifest)."""
    from diffusers.training_utils import free_memory

    from studio.generation.schedulers import make_scheduler

    request, pipe = run.request, run.pipe
    prompt = request.validation_prompt or run.data.samples[0].caption
    size = request.sample_size()
    # The VAE and the frozen text encoders wait in CPU RAM during training; they visit the accelerator for this.
    offloaded = [m for m in [pipe.vae, *text_encoders(pipe, run.kind)] if m.device != run.device]
    for module in offloaded:
        module.to(run.device)
    for module in run.trained.values():
        module.eval()
    pipe.scheduler = make_scheduler(VALIDATION_SAMPLER, run.model.base_scheduler_config)
    generator = torch.Generator("cpu").manual_seed(request.validation_seed)
    with run.accelerator.autocast():  # fp16/bf16 weights with fp32 LoRA layers: let autocast pick each op's dtype
        image = pipe(
            **_prompt_kwargs(pipe, run, prompt),
            num_inference_steps=request.validation_steps,
            guidance_scale=VALIDATION_CFG,
            height=size,
            width=size,
            generator=generator,
        ).images[0]
    for module in run.trained.values():
        module.train()
    for module in offloaded:
        module.to("cpu")
    free_memory()

    path = outputs.save_png(image, _infotext(run, prompt, step), run.run_dir / "samples" / f"step-{step:06d}.png")
    run.emit(TrainingEvent("sample", step=step, path=str(path), message=prompt))
    return {
        "file": f"samples/{path.name}",
        "prompt": prompt,
        "negative_prompt": "",
        "seed": request.validation_seed,
        "step": step,
    }


def _prompt_kwargs(pipe, run: Run, prompt: str) -> dict:
    """The prompt read as A1111 reads it (weights, BREAK, long prompts; the first part of an edited prompt).

    A prompt of one chunk leaves the negative to the pipeline, as before (SDXL's is zeros there); a longer one
    also needs a negative padded to its length, which `encode_prompts` builds from the empty prompt.
    """
    from studio.generation.prompts import encode_prompts

    sdxl = run.kind is ModelKind.SDXL
    conditioning = encode_prompts(
        pipe, sdxl=sdxl, prompt=prompt, negative_prompt="", steps=run.request.validation_steps
    )
    positive, negative = conditioning.at_step(0)
    kwargs = {"prompt_embeds": positive.embeds}
    if sdxl:
        kwargs["pooled_prompt_embeds"] = positive.pooled
    if positive.embeds.shape[1] > 77:
        kwargs["negative_prompt_embeds"] = negative.embeds
        if sdxl:
            kwargs["negative_pooled_prompt_embeds"] = negative.pooled
    return kwargs


def _infotext(run: Run, prompt: str, step: int) -> str:
    """The A1111 "parameters" text: the settings that redraw the sample with the adapter loaded."""
    from studio.generation.schedulers import a1111_sampler

    request = run.request
    sampler, schedule = a1111_sampler(VALIDATION_SAMPLER)
    return build_infotext(
        prompt=prompt,
        negative_prompt="",
        params={
            "Steps": request.validation_steps,
            "Sampler": sampler,
            "Schedule type": schedule,
            "CFG scale": VALIDATION_CFG,
            "Seed": request.validation_seed,
            "Size": f"{request.sample_size()}x{request.sample_size()}",
            "Model": run.model.name,
            "Lora": f"{request.name} (training step {step})",
            "Precision": precision_name(run.precision),
        },
    )
