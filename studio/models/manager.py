"""The model manager: the only code that loads pipelines, moves them between devices and frees memory.

One instance is created by launch.py (or the CLI) and passed to whoever needs a model. Callers use

    with manager.acquire("demo-sd15") as model:
        model.pipe(...)

which takes the GPU lock, loads or swaps the pipeline, and places it on the device according to
the memory plan. The previously active pipeline is parked in CPU RAM (a small LRU cache) so that
switching back is fast, and its accelerator memory is released.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import torch

from studio.config import StudioConfig
from studio.errors import BusyError, ModelNotFoundError, UnsafeFileError, UnsupportedModelError
from studio.models.hashes import CACHE_NAME, HashCache, sha256_file, weights_file
from studio.models.kinds import ModelKind, kind_of_folder
from studio.models.memory import OFFLOAD_MODES, MemoryPlan, plan_memory
from studio.models.precision import cpu_has_native_bf16, generation_dtype
from studio.models.sources import ModelSource, resolve_model

log = logging.getLogger(__name__)
ProgressFn = Callable[[float, str], None]


def resolve_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """See `studio.models.precision`: fp16 on GPUs, bf16 on CPUs that compute it natively, else fp32."""
    cpu_bf16 = requested == "auto" and device.type == "cpu" and cpu_has_native_bf16()
    return getattr(torch, generation_dtype(requested, device.type, cpu_bf16=cpu_bf16))


@dataclasses.dataclass
class LoadedModel:
    source: ModelSource
    kind: ModelKind
    pipe: object
    plan: MemoryPlan | None = None
    weights_bytes: int = 0
    base_scheduler_config: dict = dataclasses.field(default_factory=dict)
    lora_state: object = None
    """What LoRA blend the pipeline carries; owned and read only by `studio.lora.blend`."""

    _hash: Future | None = None
    _mode_pipes: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.source.name

    def pipeline_for(self, mode: str):
        """The pipeline for "txt2img", "img2img" or "inpaint", sharing this model's component objects.

        Made once with diffusers' `from_pipe` (the same UNet, VAE, text encoders and LoRA layers: no second copy
        of any weight) and cached until the model is parked or dropped (`forget_mode_pipelines`).
        """
        if mode == "txt2img":
            return self.pipe
        if mode not in _MODE_PIPELINES:
            raise ValueError(f"mode={mode!r}; use 'txt2img', 'img2img' or 'inpaint'")
        pipe = self._mode_pipes.get(mode)
        if pipe is None:
            import diffusers

            pipeline_class = getattr(diffusers, _MODE_PIPELINES[mode][self.kind])
            # `from_pipe` casts the shared modules to its `dtype` (float32 by default!): pass the one they were
            # loaded in, which makes the cast a no-op (it still warns, once per module: not worth showing).
            with quiet_logger("diffusers.models.modeling_utils"):
                pipe = pipeline_class.from_pipe(self.pipe, dtype=self.pipe.unet.dtype)
            pipe.set_progress_bar_config(disable=True)
            # Offload hooks live on the shared modules; the new pipeline must re-arm them after each call too.
            for attribute in ("_all_hooks", "_offload_device", "_offload_gpu_id"):
                if hasattr(self.pipe, attribute):
                    setattr(pipe, attribute, getattr(self.pipe, attribute))
            self._mode_pipes[mode] = pipe
        pipe.scheduler = self.pipe.scheduler
        return pipe

    def forget_mode_pipelines(self) -> None:
        self._mode_pipes.clear()

    @property
    def model_hash(self) -> str:
        """A1111's "Model hash": first 10 hex digits of the sha256 of the weights file.

        Started in the background when the model loads (`start_hashing`), so sampling does not wait for a
        multi-GB read; the first image's infotext picks it up.
        """
        if self._hash is None:
            self._hash = _done(_weights_hash(self, None))
        return self._hash.result()

    def start_hashing(self, executor: ThreadPoolExecutor, cache: HashCache) -> None:
        if self.source.origin in ("single-file", "pickle", "folder", "hub"):
            self._hash = executor.submit(_weights_hash, self, cache)
        # Demo models hash their in-memory UNet: milliseconds, and done at first use before any LoRA is applied.


_MODE_PIPELINES = {
    "img2img": {ModelKind.SD15: "StableDiffusionImg2ImgPipeline", ModelKind.SDXL: "StableDiffusionXLImg2ImgPipeline"},
    "inpaint": {ModelKind.SD15: "StableDiffusionInpaintPipeline", ModelKind.SDXL: "StableDiffusionXLInpaintPipeline"},
}


@contextlib.contextmanager
def quiet_logger(logger_name: str) -> Iterator[None]:
    """Silence one library logger below errors for the duration (for known false alarms)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _done(value) -> Future:
    future = Future()
    future.set_result(value)
    return future


def _weights_hash(model: LoadedModel, cache: HashCache | None) -> str:
    source = model.source

    def file_hash(path: Path) -> str:
        return (cache.sha256(path) if cache is not None else sha256_file(path))[:10]

    location = model.pipe.config._name_or_path or source.location if source.origin == "hub" else source.location
    weights = weights_file("folder" if source.origin == "hub" else source.origin, location)
    if weights is not None:
        return file_hash(weights)
    # Demo models live only in memory: hash the UNet weights themselves.
    digest = hashlib.sha256()
    for name, tensor in sorted(model.pipe.unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:10]


def _components(pipe) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def _weights_bytes(pipe) -> int:
    return sum(p.numel() * p.element_size() for c in _components(pipe) for p in c.parameters())


class ModelManager:
    def __init__(self, config: StudioConfig, *, hash_cache: HashCache | None = None):
        self.config = config
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None
        self._lock = threading.RLock()
        self._holder: str | None = None
        self._cache: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._active: LoadedModel | None = None
        self._hash_cache = hash_cache or HashCache(config.models_dir / CACHE_NAME)
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-hash")  # no thread until used

    # Device and dtype are probed on first use, never at import or construction time.
    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        if self._dtype is None:
            self._dtype = resolve_dtype(self.config.dtype, self.device)
        return self._dtype

    @property
    def active(self) -> LoadedModel | None:
        return self._active

    def cached_names(self) -> list[str]:
        return list(self._cache)

    @contextlib.contextmanager
    def acquire(self, name: str, *, on_progress: ProgressFn | None = None) -> Iterator[LoadedModel]:
        """Hold the GPU and the named model, loaded and placed, for the duration of the block."""
        with self.exclusive("generation"):
            yield self._activate(name, on_progress)

    @contextlib.contextmanager
    def exclusive(self, purpose: str) -> Iterator[None]:
        """Hold the GPU lock. A training run holds it for its whole length; others are refused meanwhile."""
        if self._holder == "training" and purpose != "training":
            raise BusyError(
                "A LoRA training run is using the GPU. Wait for it to finish or press Stop in the Train tab."
            )
        with self._lock:
            previous, self._holder = self._holder, purpose
            try:
                yield
            finally:
                self._holder = previous

    def release_accelerator(self, *, keep_in_ram: bool = True) -> None:
        """Free the accelerator (before training): park the active pipeline in RAM, or drop everything."""
        with self._lock:
            if self._active is not None:
                self._park(self._active)
                self._active = None
            if not keep_in_ram:
                self._cache.clear()
            self._free_memory()

    def load(self, source: ModelSource | str, *, on_progress: ProgressFn | None = None) -> LoadedModel:
        """Load a pipeline into CPU RAM in the manager's dtype. Used by `acquire` and by the trainer."""
        if isinstance(source, str):
            source = resolve_model(source, self.config)
        if source.problem:
            raise UnsupportedModelError(f"{source.name} cannot be loaded: {source.problem}")
        progress = on_progress or (lambda fraction, message: None)
        progress(0.0, f"Loading {source.name}")
        pipe, kind = self._load_pipeline(source, progress)
        pipe.set_progress_bar_config(disable=True)
        progress(1.0, f"Loaded {source.name}")
        model = LoadedModel(
            source=source,
            kind=kind,
            pipe=pipe,
            weights_bytes=_weights_bytes(pipe),
            base_scheduler_config=dict(pipe.scheduler.config),
        )
        model.start_hashing(self._hasher, self._hash_cache)
        return model

    # --- internals -------------------------------------------------------------------------------

    def _activate(self, name: str, on_progress: ProgressFn | None) -> LoadedModel:
        source = resolve_model(name, self.config)
        if self._active is not None and self._active.source == source:
            return self._active
        if self._active is not None:
            self._park(self._active)
            self._active = None
        model = self._cache.pop(source.name, None)
        if model is None or model.source != source:
            model = self.load(source, on_progress=on_progress)
        self._cache[source.name] = model
        self._evict_beyond_limit()
        self._place(model)
        self._active = model
        return model

    def _load_pipeline(self, source: ModelSource, progress: ProgressFn):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        dtype = self.dtype
        if source.origin == "demo":
            from studio.models.tiny import build_tiny

            pipe = build_tiny(source.kind)
            return (pipe if dtype == torch.float32 else pipe.to(dtype=dtype)), source.kind
        if source.origin == "pickle" and not self.config.allow_pickle:
            raise UnsafeFileError(
                f"{Path(source.location).name} is a pickle checkpoint, which can run code when loaded. "
                "Convert it to .safetensors, or start Studio with --allow-pickle if you trust it."
            )
        if source.origin in ("single-file", "pickle"):
            from studio.models.single_file import load_single_file

            pipe = load_single_file(
                Path(source.location), source.kind, dtype=dtype, allow_pickle=self.config.allow_pickle
            )
            return pipe, source.kind
        folder = Path(source.location)
        if source.origin == "hub":
            from studio.hub.download import download_pipeline

            folder = download_pipeline(source.location, fp16=dtype == torch.float16, on_progress=progress)
        kind = kind_of_folder(folder)
        pipeline_class = StableDiffusionXLPipeline if kind is ModelKind.SDXL else StableDiffusionPipeline
        extra = {} if kind is ModelKind.SDXL else {"safety_checker": None, "requires_safety_checker": False}
        try:
            pipe = pipeline_class.from_pretrained(folder, dtype=dtype, use_safetensors=True, **extra)
        except OSError as e:
            if not self.config.allow_pickle and "safetensors" in str(e).lower():
                raise UnsafeFileError(
                    f"{source.name} has no .safetensors weights (only pickle files). Convert it, or start "
                    "Studio with --allow-pickle if you trust it."
                ) from e
            raise ModelNotFoundError(f"Could not load {source.name}: {e}") from e
        except (ValueError, KeyError, RuntimeError) as e:
            raise UnsupportedModelError(f"{source.name} could not be loaded as {kind.label}: {e}") from e
        return pipe, kind

    def _place(self, model: LoadedModel) -> None:
        device = self.device
        free = None
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
        plan = plan_memory(
            requested=self.config.memory_mode,
            device_type=device.type,
            kind=model.kind,
            weights_bytes=model.weights_bytes,
            free_bytes=free,
            vae_tiling=self.config.vae_tiling,
        )
        pipe = model.pipe
        if plan.mode == "model-offload":
            pipe.enable_model_cpu_offload(device=device)
        elif plan.mode == "sequential-offload":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device)
        set_vae_tiling(pipe, plan.vae_tiling)
        model.plan = plan
        log.info("%s placed on %s: %s", model.name, device, plan.reason)

    def _park(self, model: LoadedModel) -> None:
        """Move a pipeline off the accelerator, keeping it in RAM if the cache allows."""
        model.forget_mode_pipelines()
        if model.plan is not None and model.plan.mode in OFFLOAD_MODES:
            model.pipe.remove_all_hooks()
            if model.plan.mode == "sequential-offload":
                # Sequential offload leaves weights in accelerate's offload buffers; reloading is safer.
                self._cache.pop(model.name, None)
        model.plan = None
        # On the CPU the pipeline is already where it is parked: walking its modules and a full gc pass
        # (~0.3 s with torch and transformers loaded) would only slow the switch down.
        if self.device.type != "cpu":
            model.pipe.to("cpu")
            self._free_memory()

    def _evict_beyond_limit(self) -> None:
        evicted = False
        while len(self._cache) > self.config.cached_pipelines:
            name, evicted_model = self._cache.popitem(last=False)
            evicted_model.forget_mode_pipelines()
            evicted = True
            log.info("Dropped %s from the RAM cache", name)
        if evicted:
            self._free_memory()

    def _free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif hasattr(torch, "mps") and torch.backends.mps.is_available():
            torch.mps.empty_cache()


def set_vae_tiling(pipe, enabled: bool) -> None:
    if enabled:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
