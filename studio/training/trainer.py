"""LoRA training on a folder of images, SD1.5 and SDXL: `train(request, config)` -> `loras/<name>/`.

The loop, nanoGPT style: scan the data set (errors before any model loads), load the base model through
the ModelManager, cache latents and text embeddings once (then the VAE and text encoders leave the GPU),
put LoRA layers on the UNet attention (and optionally the text encoders), then for each step: draw noise
and timesteps, predict, take the MSE (optionally min-SNR weighted) against the noise or the velocity,
step the optimizer. Sample images every N steps, save checkpoints every N steps and on Stop, and write
the adapter folder at the end.

Runs in-process (the CLI, also under `accelerate launch` for several GPUs) or in the training child
process of the UI (`studio.training.worker`). Determinism: the data order comes from (seed, epoch)
(`order.py`) and each micro-batch's noise from its own generator seeded with (seed, micro-batch), so a
run resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from studio.config import StudioConfig
from studio.errors import TrainingError
from studio.generation import outputs
from studio.generation.infotext import build_infotext
from studio.models.kinds import ModelKind
from studio.models.manager import ModelManager, resolve_device
from studio.training import cache as caching
from studio.training.buckets import make_buckets, nearest_bucket
from studio.training.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from studio.training.dataset import DatasetReport
from studio.training.events import TrainingEvent
from studio.training.order import DataOrder
from studio.training.presets import resolve_precision
from studio.training.request import TrainingRequest, check_dataset

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TORCH_DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
VALIDATION_SAMPLER = "Euler"
VALIDATION_CFG = 7.0
MAX_GRAD_NORM = 1.0

EventFn = Callable[[TrainingEvent], None]


@dataclasses.dataclass
class _Run:
    """What the loop needs besides the request: models, data, caches and the run's bookkeeping."""

    request: TrainingRequest
    kind: ModelKind
    pipe: object
    device: torch.device
    samples: list
    buckets: list[tuple[int, int]]
    latents: dict[tuple[int, bool], list[torch.Tensor]]
    """(sample index, flipped) -> cached [mean, std, crop]: looked up once, not hashed at every step."""
    texts: list[list[torch.Tensor]] | None
    """Sample index -> cached text embeddings; None when the text encoder trains."""
    trained: dict[str, torch.nn.Module]
    noise_scheduler: object
    weight_dtype: torch.dtype


def train(
    request: TrainingRequest,
    config: StudioConfig,
    *,
    on_event: EventFn = lambda event: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Path | None:
    """Train and export the adapter; returns `loras/<name>`, or None when stopped (a checkpoint is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    report = preflight(request, config)
    output_dir = request.output_dir(config.loras_dir)
    run_dir = request.run_dir(config.outputs_dir)
    checkpoint = _resume_point(request, run_dir, on_event)

    device = resolve_device(config.device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    precision = resolve_precision(request.mixed_precision, device.type, bf16)
    # accelerate keeps one process-wide state and refuses a second Accelerator with another precision in
    # the same process (a notebook, a test run); each run is self-contained, so start it from a clean
    # state. PartialState, the distributed set-up of `accelerate launch`, is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    main = accelerator.is_main_process
    emit = on_event if main else (lambda event: None)
    emit(TrainingEvent("dataset", message=report.summary()))

    manager = ModelManager(dataclasses.replace(config, dtype=TORCH_DTYPES[precision]))
    emit(TrainingEvent("status", message=f"Loading {request.model}"))
    model = manager.load(request.model)
    run = _prepare(request, model, report, accelerator.device, run_dir, emit, should_stop)
    if run is None:
        emit(
            TrainingEvent(
                "stopped",
                message="Stopped while caching, before the first step; the cache is kept, "
                "so the next run starts faster.",
            )
        )
        return None
    pipe = model.pipe

    # LoRA layers, initialized from the seed so two runs with the same settings start alike.
    torch.manual_seed(request.seed)
    _add_lora(run)
    params = [p for module in run.trained.values() for p in module.parameters() if p.requires_grad]
    if precision != "no":
        for p in params:  # fp16 weights with fp32 LoRA parameters: stable updates, half the memory
            p.data = p.data.float()
    if request.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        for name, module in run.trained.items():
            if name != "unet":
                module.gradient_checkpointing_enable()

    optimizer = _optimizer(request, params, accelerator.device)
    order = DataOrder(run.buckets, batch_size=request.batch_size, seed=request.seed, random_flip=request.random_flip)
    world, rank = accelerator.num_processes, accelerator.process_index
    if world > 1:
        emit(
            TrainingEvent(
                "status",
                message=f"Training on {world} processes ({accelerator.device.type}); each step "
                f"takes {request.batch_size} images per process",
            )
        )
    micro_per_step = request.gradient_accumulation * world
    total = request.steps if request.epochs is None else math.ceil(request.epochs * order.per_epoch / micro_per_step)
    lr_scheduler = get_scheduler(
        request.lr_scheduler, optimizer, num_warmup_steps=request.warmup_steps, num_training_steps=total
    )
    prepared = accelerator.prepare(*run.trained.values(), optimizer)
    optimizer = prepared[-1]
    modules = dict(zip(run.trained, prepared[:-1]))

    state = {"fingerprint": request.fingerprint(), "losses": [], "samples": []}
    start = 0
    if checkpoint is not None:
        _load_lora_params(run.trained, checkpoint.lora)
        optimizer.load_state_dict(checkpoint.optimizer)
        lr_scheduler.load_state_dict(checkpoint.state["scheduler"])
        restore_grad_scaler(accelerator.scaler, checkpoint.state.get("grad_scaler"))
        state.update(losses=checkpoint.state["losses"], samples=checkpoint.state["samples"])
        start = checkpoint.step
        emit(TrainingEvent("status", message=f"Resumed at step {start} of {total}", losses=list(state["losses"])))
    run.noise_scheduler = DDPMScheduler.from_config(model.base_scheduler_config)

    def save(step: int) -> Path | None:
        accelerator.wait_for_everyone()
        if not main:
            return None
        state["scheduler"] = lr_scheduler.state_dict()
        state["grad_scaler"] = grad_scaler_state(accelerator.scaler)
        path = save_checkpoint(
            run_dir / "checkpoints", step, lora=_lora_params(run.trained), optimizer=optimizer.state_dict(), state=state
        )
        emit(TrainingEvent("checkpoint", step=step, total_steps=total, path=str(path)))
        return path

    for module in run.trained.values():
        module.train()
    train_seconds, timed_steps = 0.0, 0  # pace of training steps alone, without samples and checkpoints
    for step in range(start, total):
        step_started = time.perf_counter()
        if _stop_requested(should_stop, accelerator):
            path = save(step)
            emit(
                TrainingEvent(
                    "stopped",
                    step=step,
                    total_steps=total,
                    path=str(path) if path else None,
                    message=f"Stopped at step {step}; resume continues from there.",
                )
            )
            return None
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(request.gradient_accumulation):
            index = (step * request.gradient_accumulation + micro) * world + rank
            last = micro == request.gradient_accumulation - 1
            with contextlib.ExitStack() as stack:
                if not last:  # sync gradients across GPUs once per optimizer step, not per micro-batch
                    for module in modules.values():
                        stack.enter_context(accelerator.no_sync(module))
                loss = _loss(run, modules, order.micro_batch(index), _generator(request.seed, index))
                accelerator.backward(loss / request.gradient_accumulation)
            step_loss += loss.detach() / request.gradient_accumulation
        accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        mean_loss = accelerator.reduce(step_loss, "mean").item() if world > 1 else step_loss.item()
        state["losses"].append([done, mean_loss])
        timed_steps += 1
        train_seconds += time.perf_counter() - step_started
        pace = train_seconds / timed_steps
        emit(
            TrainingEvent(
                "step",
                step=done,
                total_steps=total,
                loss=mean_loss,
                lr=lr_scheduler.get_last_lr()[0],
                sec_per_step=pace,
                eta=pace * (total - done),
            )
        )
        if done < total and request.validation_every and done % request.validation_every == 0 and main:
            state["samples"].append(_sample(run, run_dir, done, model, emit, accelerator))
        if done < total and request.checkpoint_every and done % request.checkpoint_every == 0:
            save(done)

    accelerator.wait_for_everyone()
    if not main:
        return None
    state["samples"].append(_sample(run, run_dir, total, model, emit, accelerator))
    from studio.training.export import export_adapter

    emit(TrainingEvent("status", step=total, total_steps=total, message="Writing the adapter"))
    folder = export_adapter(
        output_dir,
        run_dir=run_dir,
        trained=run.trained,
        request=request,
        kind=run.kind,
        state=state,
        num_images=len(report.samples),
        precision=precision,
    )
    emit(TrainingEvent("done", step=total, total_steps=total, path=str(folder), message=f"Adapter saved to {folder}"))
    return folder


# --- preparation ----------------------------------------------------------------------------------


def preflight(request: TrainingRequest, config: StudioConfig) -> DatasetReport:
    """The checks that need no model, so a bad folder, a taken name or nothing to resume fail in a moment;
    the UI runs them before it starts the training process (whose imports alone take seconds)."""
    request.validate()
    report = check_dataset(request)
    output_dir = request.output_dir(config.loras_dir)
    if output_dir.exists():
        raise TrainingError(
            f"An adapter named {request.name!r} already exists in {output_dir.parent}; pick another name or delete it."
        )
    run_dir = request.run_dir(config.outputs_dir)
    if request.resume and not list_checkpoints(run_dir / "checkpoints"):
        raise TrainingError(f"Nothing to resume: {run_dir} has no checkpoint for {request.name!r}; press Train.")
    return report


def _resume_point(request: TrainingRequest, run_dir: Path, emit: EventFn):
    found = list_checkpoints(run_dir / "checkpoints")
    if request.resume:  # preflight made sure there is one
        checkpoint = load_checkpoint(found[-1])
        if checkpoint.state["fingerprint"] != request.fingerprint():
            raise TrainingError(
                f"The checkpoint in {found[-1]} was made with other settings; resume with the same settings, "
                "or train under a new name."
            )
        return checkpoint
    if found:
        emit(TrainingEvent("status", message=f"Starting over: removed the earlier run's checkpoint {found[-1].name}"))
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # every process of a multi-GPU run tries
    return None


def _prepare(request, model, report, device, run_dir, emit, should_stop) -> _Run | None:
    """Pick buckets, fill the caches, and move the frozen encoders off the accelerator (None: stopped)."""
    pipe, kind = model.pipe, model.kind
    for component in _encoders(pipe, kind) + [pipe.vae, pipe.unet]:
        component.requires_grad_(False)
    samples = report.samples
    sizes = make_buckets(request.resolution) if request.buckets else [(request.resolution, request.resolution)]
    buckets = [nearest_bucket(s.width, s.height, sizes) for s in samples]
    flips = (False, True) if request.random_flip else (False,)
    items = [(s, b, f) for s, b in zip(samples, buckets) for f in flips]

    identity = hashlib.sha1(f"{model.source.name}|{model.source.location}|{kind.value}".encode()).hexdigest()[:12]
    latents = caching.Cache(run_dir / "cache" / f"latents-{identity}.safetensors")
    # The VAE encodes in fp32: SDXL's VAE overflows in fp16, and it runs once per image anyway.
    vae_dtype = pipe.vae.dtype
    pipe.vae.to(device, torch.float32)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:  # ~20 updates, not one event per image
            emit(TrainingEvent("status", message=f"Caching latents {done}/{total}"))

    finished = caching.cache_latents(
        latents, pipe.vae, items, device=device, on_progress=progress, should_stop=should_stop
    )
    latents.save()
    pipe.vae.to("cpu", vae_dtype)
    if not finished:
        return None

    texts = None
    if not request.train_text_encoder:
        texts = caching.Cache(run_dir / "cache" / f"texts-{identity}.safetensors")
        emit(TrainingEvent("status", message="Caching text embeddings"))
        for encoder in _encoders(pipe, kind):
            encoder.to(device)
        caching.cache_text(texts, _tokenizers_and_encoders(pipe, kind), [s.caption for s in samples], device=device)
        texts.save()
        for encoder in _encoders(pipe, kind):
            encoder.to("cpu")  # the encoders leave the GPU for the whole run
    else:
        for encoder in _encoders(pipe, kind):
            encoder.to(device)
    _free_accelerator()
    pipe.unet.to(device)
    latent_entries = {
        (i, f): latents.get(caching.latent_key(s, b, f))
        for i, (s, b) in enumerate(zip(samples, buckets))
        for f in flips
    }
    text_entries = [texts.get(caching.text_key(s.caption)) for s in samples] if texts is not None else None
    return _Run(request, kind, pipe, device, samples, buckets, latent_entries, text_entries, {}, None, pipe.unet.dtype)


def _encoders(pipe, kind: ModelKind) -> list[torch.nn.Module]:
    return [pipe.text_encoder, pipe.text_encoder_2] if kind is ModelKind.SDXL else [pipe.text_encoder]


def _tokenizers_and_encoders(pipe, kind: ModelKind, encoders: dict | None = None) -> list[tuple]:
    """(tokenizer, text encoder) pairs; `encoders` replaces the pipeline's with the accelerate-prepared ones."""
    names = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")][: 2 if kind is ModelKind.SDXL else 1]
    encoders = encoders or {}
    return [(getattr(pipe, tok), encoders[enc] if enc in encoders else getattr(pipe, enc)) for tok, enc in names]


def _add_lora(run: _Run) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    r = run.request

    def config(targets):
        return LoraConfig(r=r.rank, lora_alpha=r.alpha, init_lora_weights="gaussian", target_modules=targets)

    run.pipe.unet.add_adapter(config(UNET_TARGETS))
    run.trained["unet"] = run.pipe.unet
    if r.train_text_encoder:
        names = ["text_encoder", "text_encoder_2"] if run.kind is ModelKind.SDXL else ["text_encoder"]
        for name in names:
            # peft directly: transformers' own add_adapter wants a newer peft than diffusers needs.
            inject_adapter_in_model(config(TEXT_TARGETS), getattr(run.pipe, name))
            run.trained[name] = getattr(run.pipe, name)


def _optimizer(request: TrainingRequest, params, device: torch.device):
    kwargs = dict(lr=request.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if request.optimizer == "adamw8bit" or (request.optimizer == "auto" and device.type == "cuda"):
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        except Exception as error:  # bitsandbytes fails in many ways (missing, no CUDA, wrong build)
            if request.optimizer == "adamw8bit":
                raise TrainingError(f"8-bit AdamW is not available here ({error}); use optimizer 'adamw'.") from error
    return torch.optim.AdamW(params, **kwargs)


def _free_accelerator() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- one step ---------------------------------------------------------------------------------------


def _generator(seed: int, micro_batch: int) -> torch.Generator:
    """The noise of each micro-batch comes from its own CPU generator: the same on resume, on any device."""
    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + micro_batch) % 2**63)


def _loss(run: _Run, modules: dict, batch: list[tuple[int, bool]], generator: torch.Generator) -> torch.Tensor:
    """The training loss of one micro-batch; `modules` are the trained modules as accelerate prepared them."""
    request, device, dtype = run.request, run.device, run.weight_dtype
    entries = [run.latents[i, flipped] for i, flipped in batch]
    latents = torch.stack([mean + std * torch.randn(mean.shape, generator=generator) for mean, std, _crop in entries])
    noise = torch.randn(latents.shape, generator=generator)
    if request.noise_offset:
        noise += request.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    num_timesteps = run.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_timesteps, (len(batch),), generator=generator)
    latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
    noisy = run.noise_scheduler.add_noise(latents, noise, timesteps).to(dtype)

    captions = [run.samples[i].caption for i, _ in batch]
    if run.texts is not None:
        cached = [run.texts[i] for i, _ in batch]
        text = [torch.stack(parts).to(device, dtype) for parts in zip(*cached)]
    else:
        pairs = _tokenizers_and_encoders(run.pipe, run.kind, modules)  # through DDP, so their grads sync too
        text = [t.to(dtype) for t in caching.encode_text(pairs, captions, device)]
    extra = {}
    if run.kind is ModelKind.SDXL:
        time_ids = torch.tensor([_time_ids(run, i, c) for (i, _), c in zip(batch, entries)], device=device)
        extra["added_cond_kwargs"] = {"text_embeds": text[1], "time_ids": time_ids.to(dtype)}
    prediction = modules["unet"](noisy, timesteps, text[0], return_dict=False, **extra)[0].float()

    prediction_type = run.noise_scheduler.config.prediction_type
    target = noise if prediction_type == "epsilon" else run.noise_scheduler.get_velocity(latents, noise, timesteps)
    if request.min_snr_gamma is None:
        return F.mse_loss(prediction, target.float())
    # Min-SNR (Hang et al. 2023): cap each timestep's weight at gamma / SNR so easy, low-noise
    # timesteps stop dominating the gradient.
    snr = _snr(run.noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=request.min_snr_gamma)
    weights = weights / snr if prediction_type == "epsilon" else weights / (snr + 1)
    per_sample = F.mse_loss(prediction, target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def _snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1 - alphas_cumprod)


def _time_ids(run: _Run, index: int, entry: list[torch.Tensor]) -> list[int]:
    """SDXL's size conditioning: original size, crop top-left, target size, as (height, width) pairs."""
    sample, (bucket_w, bucket_h) = run.samples[index], run.buckets[index]
    top, left = (int(v) for v in entry[2])
    return [sample.height, sample.width, top, left, bucket_h, bucket_w]


def _stop_requested(should_stop: Callable[[], bool], accelerator) -> bool:
    stop = bool(should_stop())
    if accelerator.num_processes > 1:  # every process must stop at the same step
        flag = torch.tensor(float(stop), device=accelerator.device)
        stop = bool(accelerator.reduce(flag, "max").item())
    return stop


def grad_scaler_state(scaler) -> dict | None:
    """fp16 runs: the loss scale and its growth counter, so a resumed run scales exactly as before."""
    return scaler.state_dict() if scaler is not None else None  # plain numbers: fits state.json


def restore_grad_scaler(scaler, state: dict | None) -> None:
    if scaler is not None and state:
        scaler.load_state_dict(state)


# --- weights and samples -------------------------------------------------------------------------


def _lora_params(trained: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{c}.{n}": p for c, m in trained.items() for n, p in m.named_parameters() if p.requires_grad}


def _load_lora_params(trained: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    params = _lora_params(trained)
    if set(params) != set(tensors):
        raise TrainingError("The checkpoint's LoRA layers do not match this model; train under a new name.")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key])


@torch.no_grad()
def _sample(run: _Run, run_dir: Path, step: int, model, emit: EventFn, accelerator) -> dict:
    """One validation image from the prompt, with the same seed every time; saved with A1111 infotext."""
    from studio.generation.schedulers import a1111_sampler, make_scheduler

    request, pipe = run.request, run.pipe
    prompt = request.validation_prompt or run.samples[0].caption
    size = request.resolution
    offloaded = [m for m in [pipe.vae, *_encoders(pipe, run.kind)] if m.device != run.device]
    for module in offloaded:
        module.to(run.device)
    for module in run.trained.values():
        module.eval()
    pipe.scheduler = make_scheduler(VALIDATION_SAMPLER, model.base_scheduler_config)
    generator = torch.Generator("cpu").manual_seed(request.validation_seed)
    with accelerator.autocast():  # fp16/bf16 weights with fp32 LoRA layers: let autocast pick each op's dtype
        image = pipe(
            prompt,
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
    _free_accelerator()
    sampler, schedule = a1111_sampler(VALIDATION_SAMPLER)
    infotext = build_infotext(
        prompt=prompt,
        negative_prompt="",
        params={
            "Steps": request.validation_steps,
            "Sampler": sampler,
            "Schedule type": schedule,
            "CFG scale": VALIDATION_CFG,
            "Seed": request.validation_seed,
            "Size": f"{size}x{size}",
            "Model": model.name,
            "Lora": f"{request.name} (training step {step})",
        },
    )
    path = outputs.save_png(image, infotext, run_dir / "samples" / f"step-{step:06d}.png")
    emit(TrainingEvent("sample", step=step, path=str(path), message=prompt))
    return {
        "file": f"samples/{path.name}",
        "prompt": prompt,
        "negative_prompt": "",
        "seed": request.validation_seed,
        "step": step,
    }
