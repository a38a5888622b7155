"""Setup of a training run: accelerator, base model, cached data, LoRA layers, optimizer -> one `Run`.

The frozen parts of the model run once, here: the VAE encodes every image and the text encoders every
caption into caches (`cache.py`), then leave the accelerator, so the step loop only runs the UNet (and the
text encoders when they train). On a CPU, an orientation of an image the first epoch does not draw is
encoded when first drawn instead (`LatentStore`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
from pathlib import Path
from typing import Callable

import torch

from studio.config import StudioConfig
from studio.errors import TrainingError
from studio.models.kinds import ModelKind
from studio.models.manager import LoadedModel, ModelManager, resolve_device
from studio.models.precision import cpu_has_native_bf16
from studio.training import cache as caching
from studio.training.buckets import make_buckets, nearest_bucket
from studio.training.dataset import DatasetReport
from studio.training.events import TrainingEvent
from studio.training.order import DataOrder
from studio.training.phases import PhaseClock
from studio.training.presets import resolve_precision
from studio.training.request import TrainingRequest

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TORCH_DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
# What each precision means here, said when the model loads (the adapter's settings record the same choice).
PRECISION_LABELS = {"no": "fp32", "fp16": "fp16 autocast, fp32 LoRA", "bf16": "bf16 autocast, fp32 LoRA"}

EventFn = Callable[[TrainingEvent], None]


@dataclasses.dataclass
class TrainingData:
    """The data set as the step loop reads it: every image and caption already encoded."""

    samples: list
    buckets: list[tuple[int, int]]
    """`buckets[i]`: the (width, height) sample i trains at."""
    latents: caching.LatentStore
    """(sample index, flipped) -> cached [mean, std, crop]; a flip not cached yet is encoded when first drawn."""
    texts: list[list[torch.Tensor]] | None
    """Sample index -> cached text embeddings; None when the text encoders train (they encode at each step)."""


@dataclasses.dataclass
class Run:
    """Everything the step loop, the checkpoints and the samples need; built once by `setup`."""

    request: TrainingRequest
    model: LoadedModel
    data: TrainingData
    run_dir: Path
    """outputs/training/<name>: caches, checkpoints, samples."""
    accelerator: object
    precision: str
    """accelerate's mixed precision: "no", "fp16" or "bf16"."""
    weight_dtype: torch.dtype
    """The frozen weights' dtype; the LoRA parameters are fp32 whatever the precision."""
    trained: dict[str, torch.nn.Module]
    """Modules with LoRA layers by pipeline attribute ("unet", "text_encoder", ...), as the pipeline holds them."""
    modules: dict[str, torch.nn.Module]
    """The same modules as accelerate prepared them (wrapped in DDP on several GPUs): the loss runs these."""
    params: list[torch.nn.Parameter]
    optimizer: object
    lr_scheduler: object
    noise_scheduler: object
    order: DataOrder
    total: int
    """Optimizer steps of the whole run."""
    emit: EventFn
    """Sends events to the front end; does nothing on the other processes of a multi-GPU run."""
    state: dict
    """What a checkpoint stores besides tensors: settings fingerprint, loss history, samples made so far."""
    clock: PhaseClock = dataclasses.field(default_factory=PhaseClock)
    """Wall time per phase (load, caching, steps, samples, checkpoints, export), reported at the end."""

    @property
    def pipe(self):
        return self.model.pipe

    @property
    def kind(self) -> ModelKind:
        return self.model.kind

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def setup(
    request: TrainingRequest,
    config: StudioConfig,
    report: DatasetReport,
    run_dir: Path,
    on_event: EventFn,
    should_stop: Callable[[], bool],
    clock: PhaseClock | None = None,
) -> Run | None:
    """Load, cache and prepare everything for the first step; None when Stop was pressed while caching."""
    clock = clock or PhaseClock()
    with clock.phase("load"):
        accelerator, precision = start_accelerator(request, config)
        emit = on_event if accelerator.is_main_process else (lambda event: None)
        emit(TrainingEvent("dataset", message=report.summary()))
        manager = ModelManager(dataclasses.replace(config, dtype=TORCH_DTYPES[precision]))
        emit(TrainingEvent("status", message=f"Loading {request.model} ({PRECISION_LABELS[precision]})"))
        model = manager.load(request.model)
    with clock.phase("caching"):
        timer = functools.partial(clock.phase, "caching")  # also for flips encoded later, in the middle of a step
        data = cache_data(request, model, report.samples, accelerator.device, run_dir, emit, should_stop, timer)
    if data is None:
        message = "Stopped while caching, before the first step; the cache is kept, so the next run starts faster."
        emit(TrainingEvent("stopped", message=message))
        return None
    with clock.phase("load"):
        run = prepare_training(request, model, data, run_dir, accelerator, precision, emit)
    run.clock = clock
    return run


def prepare_training(
    request: TrainingRequest,
    model: LoadedModel,
    data: TrainingData,
    run_dir: Path,
    accelerator,
    precision: str,
    emit: EventFn,
) -> Run:
    """LoRA layers, optimizer and LR schedule, prepared by accelerate (for DDP on several GPUs)."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    weight_dtype = model.pipe.unet.dtype  # read before the LoRA layers join the UNet
    trained = add_lora(request, model)
    params = [p for module in trained.values() for p in module.parameters() if p.requires_grad]
    if precision != "no":  # fp16/bf16 weights with fp32 LoRA parameters: stable updates, half the memory
        cast_training_params(list(trained.values()), dtype=torch.float32)
    if request.gradient_checkpointing:
        enable_gradient_checkpointing(trained)

    optimizer = make_optimizer(request, params, accelerator.device)
    order = DataOrder(data.buckets, batch_size=request.batch_size, seed=request.seed, random_flip=request.random_flip)
    world = accelerator.num_processes
    if world > 1:
        where = f"{world} processes ({accelerator.device.type})"
        message = f"Training on {where}; each step takes {request.batch_size} images per process"
        emit(TrainingEvent("status", message=message))
    total = count_steps(request, order, world)
    lr_scheduler = get_scheduler(
        request.lr_scheduler, optimizer, num_warmup_steps=request.warmup_steps, num_training_steps=total
    )
    *prepared, optimizer = accelerator.prepare(*trained.values(), optimizer)
    return Run(
        request=request,
        model=model,
        data=data,
        run_dir=run_dir,
        accelerator=accelerator,
        precision=precision,
        weight_dtype=weight_dtype,
        trained=trained,
        modules=dict(zip(trained, prepared)),
        params=params,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        noise_scheduler=DDPMScheduler.from_config(model.base_scheduler_config),
        order=order,
        total=total,
        emit=emit,
        state={"fingerprint": request.fingerprint(), "losses": [], "samples": []},
    )


def start_accelerator(request: TrainingRequest, config: StudioConfig):
    """accelerate's Accelerator for the device and precision asked for; returns (accelerator, precision)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    device = resolve_device(config.device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
    else:
        bf16 = device.type == "cpu" and cpu_has_native_bf16()
    precision = resolve_precision(request.mixed_precision, device.type, bf16)
    # accelerate keeps one process-wide state and refuses a second Accelerator with another precision in
    # the same process (a notebook, a test run); each run is self-contained, so start it from a clean
    # state. PartialState, the distributed set-up of `accelerate launch`, is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu"), precision


def count_steps(request: TrainingRequest, order: DataOrder, world: int) -> int:
    """Optimizer steps of the run: `steps`, or enough for `epochs` passes over the data on all processes."""
    if request.epochs is None:
        return request.steps
    micro_batches_per_step = request.gradient_accumulation * world
    return math.ceil(request.epochs * order.per_epoch / micro_batches_per_step)


# --- data -------------------------------------------------------------------------------------------


def cache_data(
    request: TrainingRequest,
    model: LoadedModel,
    samples: list,
    device: torch.device,
    run_dir: Path,
    emit: EventFn,
    should_stop: Callable[[], bool],
    timer: Callable = contextlib.nullcontext,
) -> TrainingData | None:
    """Pick buckets, fill the caches, and move the frozen encoders off the accelerator (None: stopped).

    On a CPU only what the first epoch draws is encoded now (each image once, in the orientation it is
    drawn in); the other orientation waits until the data order first draws it: the VAE stays in the same
    RAM anyway, and a VAE encode costs about half a training step, so a one-epoch run encodes no more
    images than it trains on. On an accelerator every flip is encoded now, so the VAE can leave it before
    the UNet trains (a 1024 px encode in the middle of a run would need its activations next to the
    training UNet's)."""
    from diffusers.training_utils import free_memory

    pipe, kind = model.pipe, model.kind
    for component in text_encoders(pipe, kind) + [pipe.vae, pipe.unet]:
        component.requires_grad_(False)
    sizes = make_buckets(request.resolution) if request.buckets else [(request.resolution, request.resolution)]
    buckets = [nearest_bucket(s.width, s.height, sizes) for s in samples]
    if device.type == "cpu":
        first_epoch = DataOrder(
            buckets, batch_size=request.batch_size, seed=request.seed, random_flip=request.random_flip
        )
        items = [(samples[i], buckets[i], flipped) for batch in first_epoch.epoch(0) for i, flipped in batch]
    else:
        flips = (False, True) if request.random_flip else (False,)
        items = [(s, b, f) for s, b in zip(samples, buckets) for f in flips]
    folder = shared_cache_folder(run_dir, request.data, model)
    latents = caching.Cache(folder / "latents.safetensors")
    finished = encode_images(latents, pipe.vae, items, device, emit, should_stop)
    latents.save()
    if not finished:
        return None
    texts = None
    if request.train_text_encoder:
        for encoder in text_encoders(pipe, kind):
            encoder.to(device)  # they train, so they stay on the accelerator
    else:
        texts = caching.Cache(folder / "texts.safetensors")
        encode_captions(texts, pipe, kind, [s.caption for s in samples], device, emit)
    free_memory()  # what the encoders held on the accelerator goes back before the UNet arrives
    pipe.unet.to(device)
    return TrainingData(
        samples=samples,
        buckets=buckets,
        latents=caching.LatentStore(
            latents, samples, buckets, lambda items: encode_images(latents, pipe.vae, items, device), timer
        ),
        texts=[texts.get(caching.text_key(s.caption)) for s in samples] if texts is not None else None,
    )


def shared_cache_folder(run_dir: Path, data: Path, model: LoadedModel) -> Path:
    """`outputs/training/.cache/<data folder>-<model>/`: the caches every run on these photos and this model shares.

    Users train the same photos again and again (another rank, learning rate, trigger word): the second run
    starts at its first step instead of re-encoding every image. Keys name the file (path, size, mtime), the
    bucket and the orientation, so an edited photo is encoded again; the base model is in the folder name,
    because another model encodes the same image differently."""
    source = f"{model.source.name}|{model.source.location}|{model.kind.value}"
    model_id = hashlib.sha1(source.encode()).hexdigest()[:12]
    data_id = hashlib.sha1(str(Path(data).resolve()).encode()).hexdigest()[:12]
    return run_dir.parent / ".cache" / f"{data_id}-{model_id}"


def encode_images(
    latents: caching.Cache,
    vae,
    items: list,
    device,
    emit: EventFn = lambda event: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """VAE-encode each (sample, bucket, flipped) not cached yet; False when stopped (what was done stays)."""
    # The VAE encodes in fp32: SDXL's VAE overflows in fp16, and it runs once per image anyway.
    vae_dtype = vae.dtype
    vae.to(device, torch.float32)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:  # ~20 updates, not one event per image
            emit(TrainingEvent("status", message=f"Caching latents {done}/{total}"))

    finished = caching.cache_latents(latents, vae, items, device=device, on_progress=progress, should_stop=should_stop)
    vae.to("cpu", vae_dtype)
    return finished


def encode_captions(texts: caching.Cache, pipe, kind: ModelKind, captions: list[str], device, emit: EventFn) -> None:
    """Text-encode each caption not cached yet; the encoders then leave the accelerator for the whole run."""
    emit(TrainingEvent("status", message="Caching text embeddings"))
    for encoder in text_encoders(pipe, kind):
        encoder.to(device)
    caching.cache_text(texts, tokenizers_and_encoders(pipe, kind), captions, device=device)
    texts.save()
    for encoder in text_encoders(pipe, kind):
        encoder.to("cpu")


def text_encoders(pipe, kind: ModelKind) -> list[torch.nn.Module]:
    return [pipe.text_encoder, pipe.text_encoder_2] if kind is ModelKind.SDXL else [pipe.text_encoder]


def tokenizers_and_encoders(pipe, kind: ModelKind, encoders: dict | None = None) -> list[tuple]:
    """(tokenizer, text encoder) pairs; `encoders` replaces the pipeline's with the accelerate-prepared ones."""
    names = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")][: 2 if kind is ModelKind.SDXL else 1]
    encoders = encoders or {}
    return [(getattr(pipe, tok), encoders[enc] if enc in encoders else getattr(pipe, enc)) for tok, enc in names]


# --- LoRA layers and optimizer ---------------------------------------------------------------------


def add_lora(request: TrainingRequest, model: LoadedModel) -> dict[str, torch.nn.Module]:
    """Put LoRA layers on the UNet attention (and the text encoders'); returns the modules that train, by name."""
    from peft import LoraConfig, inject_adapter_in_model

    def config(targets):
        return LoraConfig(
            r=request.rank, lora_alpha=request.alpha, init_lora_weights="gaussian", target_modules=targets
        )

    pipe = model.pipe
    torch.manual_seed(request.seed)  # the layers' random init: two runs with the same settings start alike
    pipe.unet.add_adapter(config(UNET_TARGETS))
    trained = {"unet": pipe.unet}
    if request.train_text_encoder:
        names = ["text_encoder", "text_encoder_2"] if model.kind is ModelKind.SDXL else ["text_encoder"]
        for name in names:
            # peft directly: transformers' own add_adapter wants a newer peft than diffusers needs.
            inject_adapter_in_model(config(TEXT_TARGETS), getattr(pipe, name))
            trained[name] = getattr(pipe, name)
    return trained


def enable_gradient_checkpointing(trained: dict[str, torch.nn.Module]) -> None:
    """Recompute activations in the backward pass instead of keeping them: less memory, slower steps."""
    for name, module in trained.items():
        if name == "unet":
            module.enable_gradient_checkpointing()  # diffusers' spelling
        else:
            module.gradient_checkpointing_enable()  # transformers' spelling


def make_optimizer(request: TrainingRequest, params: list, device: torch.device):
    """AdamW; the 8-bit one from bitsandbytes when asked for, or by default on CUDA if it is installed."""
    kwargs = dict(lr=request.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if request.optimizer == "adamw8bit" or (request.optimizer == "auto" and device.type == "cuda"):
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        except Exception as error:  # bitsandbytes fails in many ways (missing, no CUDA, wrong build)
            if request.optimizer == "adamw8bit":
                raise TrainingError(f"8-bit AdamW is not available here ({error}); use optimizer 'adamw'.") from error
    return torch.optim.AdamW(params, **kwargs)
