"""Generation (text-to-image, image-to-image, inpainting): one `GenerationRequest` in, images with A1111 infotext out.

    result = generate(manager, request, on_step=print_progress, cancel=stop_event)

The request is validated before any model loads. Each image i of a run uses seed + i on its own CPU
generator, so any image can be reproduced alone, on any device, from the seed in its infotext.
Prompts are read the A1111 way (`studio.generation.prompts`: weights, long prompts, BREAK, prompt editing) and
reach the pipeline as embeddings; edits and alternations swap them between steps in the step callback.
A request with an input picture (and a mask) runs the img2img / inpaint pipeline made from the loaded one
(`LoadedModel.pipeline_for`: same weights, same LoRA blend); what that adds is in `studio.generation.img2img`.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import threading
import time
from typing import Callable

import torch
from PIL import Image

from studio.errors import OutOfMemoryError
from studio.generation import infotext
from studio.generation.embeddings import embeddings_for_prompt
from studio.generation.hires import HiresFix, hires_size
from studio.generation.img2img import ImageJob, infotext_params, output_size, plan_images
from studio.generation.memory_plan import plan_generation
from studio.generation.prompts import PromptEmbeds, encode_prompts
from studio.generation.request import MAX_SEED, GenerationRequest, GenerationResult, StepInfo
from studio.generation.schedulers import a1111_sampler, make_scheduler
from studio.models.kinds import ModelKind
from studio.models.manager import LoadedModel, ModelManager, set_vae_tiling
from studio.models.memory import NEXT_MODE
from studio.models.precision import precision_name

# Cheap latent -> RGB projection for live previews (the "approximate" preview of A1111/ComfyUI):
# a fixed linear map from the 4 latent channels, no VAE decode.
_PREVIEW_FACTORS = {
    ModelKind.SD15: (
        [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
        [0.0, 0.0, 0.0],
    ),
    ModelKind.SDXL: (
        [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
        [0.1084, -0.0175, -0.0011],
    ),
}


def latent_preview(latents: torch.Tensor, kind: ModelKind) -> Image.Image:
    factors, bias = _PREVIEW_FACTORS[kind]
    weight = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), weight) + torch.tensor(bias)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    image = Image.fromarray(pixels)
    return image.resize((image.width * 4, image.height * 4), Image.Resampling.NEAREST)


class Stopped(Exception):
    """Raised inside the step callback so the pipeline stops at once, without decoding."""


def _pick_seed(seed: int) -> int:
    return random.randint(0, MAX_SEED) if seed == -1 else seed


def _infotext(
    request: GenerationRequest, model: LoadedModel, seed: int, width: int, height: int, loras, embeddings=()
) -> str:
    sampler, schedule = a1111_sampler(request.scheduler)
    prompt = request.prompt
    if loras:
        prompt = f"{prompt} {infotext.lora_tags([(name, weight) for name, weight, _hash in loras])}".strip()
    params = {
        "Steps": request.steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": f"{request.cfg:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model.model_hash,
        "Model": model.name,
        "Denoising strength": f"{request.hires_denoise:g}" if request.hires else None,
        **infotext_params(request),
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        **infotext.hires_params(request),
        "Precision": precision_name(model.pipe.unet.dtype),  # Studio's key (A1111 has none); the form ignores it
        "Lora hashes": ", ".join(f"{name}: {lora_hash}" for name, _w, lora_hash in loras) or None,
        # A1111 drops ':' and ',' from the names, so the list parses back.
        "TI hashes": ", ".join(f"{re.sub(r'[:,]', '', e.name)}: {e.hash}" for e in embeddings) or None,
    }
    return infotext.build_infotext(prompt=prompt, negative_prompt=request.negative_prompt, params=params)


def _apply_loras(model: LoadedModel, loras, loras_dir):
    """Put the requested blend on the pipeline; returns [(name, weight, addnet hash)]."""
    has_adapters = bool(getattr(model.pipe, "get_list_adapters", lambda: {})())
    if not loras and not has_adapters:
        return []
    from studio.lora.blend import apply_blend

    return apply_blend(model, list(loras), loras_dir=loras_dir)


def generate(
    manager: ModelManager,
    request: GenerationRequest,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    on_load: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """Run a generation request. Stop (`cancel.set()`) ends it within one step, keeping finished images."""
    prompt, tag_loras = infotext.split_lora_tags(request.prompt)
    request = dataclasses.replace(request, prompt=prompt, loras=tuple(request.loras) + tuple(tag_loras))
    request.validate()
    cancel = cancel or threading.Event()
    started = time.perf_counter()
    hires_fix = HiresFix.load(request, manager) if request.hires else None  # a bad upscaler fails before loading
    with manager.acquire(request.model, on_progress=on_load) as model:
        width, height = output_size(model, request)
        job = plan_images(model, request, width, height)
        # Refuse, or split the batch / tile the decode, before any work if this would not fit in memory
        # (with hires fix, the second pass at the upscaled size is the peak).
        plan_size = hires_size(request, width, height).upscale if hires_fix else (width, height)
        plan = plan_generation(
            model, request, *plan_size, device=manager.device, available=manager.config.available_memory
        )
        loras = _apply_loras(model, request.loras, manager.config.loras_dir)
        pipe = model.pipe
        pipe.scheduler = make_scheduler(request.scheduler, model.base_scheduler_config)
        vectors, embedding_files = embeddings_for_prompt(
            manager.config, model.kind, request.prompt, request.negative_prompt
        )
        encode = functools.partial(
            encode_prompts,
            pipe,
            sdxl=model.kind is ModelKind.SDXL,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            clip_skip=request.clip_skip,
            embeddings=vectors,
        )
        try:
            # After the LoRAs: adapters on the text encoders change the embeddings.
            conditioning = encode(steps=request.steps)
            if hires_fix is not None:
                hires_fix.prepare(model, encode, conditioning, width, height)
        except torch.OutOfMemoryError as e:
            raise out_of_memory(model, width, height, request.batch_size) from e
        first_seed = _pick_seed(request.seed)
        result = GenerationResult([], [], [], model.name, 0.0, notes=list(job.prepared.notes) if job else [])
        for call in range(request.batch_count):
            if cancel.is_set():
                result.interrupted = True
                break
            seeds = [(first_seed + call * request.batch_size + i) % (MAX_SEED + 1) for i in range(request.batch_size)]
            try:
                images = []
                for part in plan.split(seeds):  # one call, unless the memory plan split the batch
                    latents = {}
                    part_images = _run_pipeline(
                        model, request, conditioning, part, width, height, call, on_step, cancel, job, latents
                    )
                    if hires_fix is not None:
                        part_images = hires_fix.run(model, part_images, latents["latents"], part, call, on_step, cancel)
                    images += part_images
            except Stopped:
                result.interrupted = True
                break
            result.images += images
            result.seeds += seeds
            used = [embedding_files[name] for name in conditioning.embeddings_used]
            result.infotexts += [_infotext(request, model, seed, width, height, loras, used) for seed in seeds]
        result.seconds = time.perf_counter() - started
        return result


def step_callback(model, conditioning, batch, call, total_steps, on_step, cancel, *, stage="", last_latents=None):
    """The pipeline's `callback_on_step_end`: Stop, progress with a latent preview, prompt editing between steps.

    `last_latents` (a dict) receives the latents after each step: the last ones are what the pipeline decodes.
    """
    started = time.perf_counter()

    def step_end(pipe_, step, timestep, tensors):
        if last_latents is not None:
            last_latents["latents"] = tensors["latents"]
        if cancel.is_set():
            raise Stopped()
        if on_step is not None:
            preview = latent_preview(tensors["latents"], model.kind)
            on_step(StepInfo(call, step + 1, total_steps, time.perf_counter() - started, preview, stage))
        if conditioning.changes_after(step):
            return _next_conditioning(pipe_, conditioning.at_step(step + 1), batch, tensors)
        return {}

    return step_end


def callback_tensors(model: LoadedModel, conditioning) -> list[str]:
    return ["latents", *(_EDITED_TENSORS[model.kind] if conditioning.changes else [])]


def _run_pipeline(
    model, request, conditioning, seeds, width, height, call, on_step, cancel, job: ImageJob | None, last_latents=None
) -> list[Image.Image]:
    """The first (or only) pass: text to image, or the image job's img2img / inpaint call."""
    pipe = model.pipeline_for(job.mode if job else "txt2img")
    if job is None:
        extra, finish = (lambda generators: dict(width=width, height=height)), None
    else:
        extra, finish = (lambda generators: job.pipeline_kwargs(pipe, seeds, generators, width, height)), job.finish
    return call_pipeline(
        model, pipe, conditioning, seeds,
        num_inference_steps=request.steps, guidance_scale=request.cfg,
        total_steps=job.sampling_steps(request.steps) if job else request.steps,
        call=call, on_step=on_step, cancel=cancel, size=(width, height),
        extra=extra, finish=finish, last_latents=last_latents,
    )  # fmt: skip


def call_pipeline(
    model: LoadedModel,
    pipe,
    conditioning,
    seeds: list[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    total_steps: int,
    call: int,
    on_step,
    cancel,
    size: tuple[int, int],
    extra: Callable[[list[torch.Generator]], dict],
    finish: Callable[[list[Image.Image]], list[Image.Image]] | None = None,
    stage: str = "",
    last_latents: dict | None = None,
) -> list[Image.Image]:
    """One diffusers pipeline call as every pass makes it: the prompt embeddings, one seeded CPU generator per
    image (the same pixels on any device), the step callback (progress, Stop, prompt edits) and, when memory
    runs out after sampling finished, the images decoded in tiles instead of an error.

    `extra(generators)` gives the pass's own arguments (size, or image and strength); `finish` post-processes
    the images (an inpaint's paste-back), the tiled fallback's too."""
    finish = finish or (lambda images: images)
    last_latents = {} if last_latents is None else last_latents
    step_end = step_callback(
        model, conditioning, len(seeds), call, total_steps, on_step, cancel, stage=stage, last_latents=last_latents
    )
    positive, negative = conditioning.at_step(0)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    kwargs = dict(
        **_embeds_kwargs(positive, negative, len(seeds)),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generators,
        callback_on_step_end=step_end,
        callback_on_step_end_tensor_inputs=callback_tensors(model, conditioning),
    )
    kwargs.update(extra(generators))
    try:
        return finish(pipe(**kwargs).images)
    except torch.OutOfMemoryError as e:
        decoded = decode_in_tiles_after_sampling(model, pipe, last_latents)
        if decoded is None:
            raise out_of_memory(model, *size, len(seeds)) from e
        return finish(decoded)


def decode_in_tiles_after_sampling(model: LoadedModel, pipe, last_latents: dict) -> list[Image.Image] | None:
    """After running out of memory: the images decoded in tiles if sampling had finished (None if it had not).

    Decode is the peak at large sizes; decoding in tiles needs a fraction of the memory.
    """
    step_index = pipe.scheduler.step_index
    denoised = len(last_latents) and step_index is not None and step_index >= len(pipe.scheduler.timesteps)
    if denoised and not pipe.vae.use_tiling:
        return _decode_with_tiling(model, last_latents["latents"])
    return None


def out_of_memory(model: LoadedModel, width: int, height: int, batch: int) -> OutOfMemoryError:
    next_mode = NEXT_MODE.get(model.plan.mode if model.plan else "none")
    hint = f"start Studio with --memory-mode {next_mode}" if next_mode else "use a smaller size or batch"
    return OutOfMemoryError(
        f"Out of GPU memory at {width}x{height}, batch {batch} ({model.plan.mode if model.plan else 'none'}). "
        f"Try a smaller size or batch, or {hint}."
    )


# What the step callback replaces when the prompt changes between steps: the token embeddings, and for SDXL
# the pooled embedding the pipeline calls `add_text_embeds`.
_EDITED_TENSORS = {ModelKind.SD15: ["prompt_embeds"], ModelKind.SDXL: ["prompt_embeds", "add_text_embeds"]}


def _embeds_kwargs(positive: PromptEmbeds, negative: PromptEmbeds, batch: int) -> dict:
    kwargs = {
        "prompt_embeds": positive.embeds.repeat(batch, 1, 1),
        "negative_prompt_embeds": negative.embeds.repeat(batch, 1, 1),
    }
    if positive.pooled is not None:
        kwargs["pooled_prompt_embeds"] = positive.pooled.repeat(batch, 1)
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled.repeat(batch, 1)
    return kwargs


def _next_conditioning(pipe, embeds: tuple[PromptEmbeds, PromptEmbeds], batch: int, tensors: dict) -> dict:
    """The callback's replacement tensors for the next step (prompt editing `[a:b:when]`, alternation `[a|b]`).

    Inside the denoising loop diffusers holds the embeddings with classifier-free guidance already applied:
    `cat([negative, positive])` along the batch, or the positive ones alone when guidance is off (cfg <= 1).
    """
    kwargs = _embeds_kwargs(*embeds, batch)
    current = tensors["prompt_embeds"]
    pairs = [("prompt_embeds", "negative_prompt_embeds")]
    if "add_text_embeds" in tensors:
        pairs.append(("pooled_prompt_embeds", "negative_pooled_prompt_embeds"))
    out = {}
    for (positive_key, negative_key), name in zip(pairs, ["prompt_embeds", "add_text_embeds"]):
        tensor = kwargs[positive_key]
        if pipe.do_classifier_free_guidance:
            tensor = torch.cat([kwargs[negative_key], tensor])
        out[name] = tensor.to(device=current.device, dtype=tensors[name].dtype)
    return out


def _decode_with_tiling(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    pipe = model.pipe
    set_vae_tiling(pipe, True)
    vae = pipe.vae
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)  # the SDXL VAE overflows in fp16, as the pipeline itself knows
    with torch.no_grad():
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil")
