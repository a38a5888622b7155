"""Will this size and batch fit in memory? Decide before the pipeline runs, not after the machine swaps.

The sliders allow 2048x2048 x 8 (the CLI 4096x4096 x 16): on a CPU that grows the process by tens of GB, on a
GPU it ends in an out-of-memory error after minutes of sampling. `plan_generation` estimates the peak working
memory of one pipeline call (UNet activations at the latent size, then the VAE decode at the image size), compares
it with what the device has free, and picks the first plan that fits:

1. as asked;
2. decode one image at a time (VAE slicing: the same images);
3. fewer images per pipeline call (each image keeps its own seeded generator, so the images do not change);
4. decode in tiles (VAE tiling: large images, slightly different seams);
or refuses with one line that names the size and batch and says what fits.

The estimate comes from the model's own configs (channels, layers, tile size). On the tiny demo models on a CPU it
is between 20% under and 40% over the measured peak RSS (512-1024 px, batch 1-4); the full-size
numbers are not measured here (no weights, no GPU). It only has to be right about which side of the free memory
a request lands on; `USABLE_SHARE` leaves the margin.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from studio.errors import OutOfMemoryError

log = logging.getLogger(__name__)
GiB = 1024**3

# Share of the measured free memory a generation may use: the OS, the browser and allocator slack need the rest.
USABLE_SHARE = 0.85
# Live tensors the size of one feature map at the widest level, counted per sample:
UNET_WORKING_MAPS = 12  # resnet temporaries plus a transformer block (q, k, v, out, the 8x GEGLU projection)
DECODE_WORKING_MAPS = 5  # upsampled input, group norm, activation, conv output, residual
# Per output pixel, after the decode: the float RGB tensor, its denormalized copy, the numpy array, the PIL image.
POSTPROCESS_BYTES_PER_PIXEL = 3 * (4 + 4 + 4 + 1)


@dataclasses.dataclass(frozen=True)
class PipelineShape:
    """What memory use depends on, read from the pipeline's configs (`from_pipe`) or written out for a model."""

    unet_channels: tuple[int, ...]
    """`block_out_channels` of the UNet, one per resolution level."""

    unet_layers_per_block: int
    unet_bytes: int
    """Bytes per activation element (2 for fp16/bf16, 4 for fp32)."""

    vae_channels: tuple[int, ...]
    vae_bytes: int
    vae_tile: int
    """Image size of one tile when the VAE decodes in tiles (`vae.tile_sample_min_size`)."""

    latent_scale: int = 8
    phases_share_memory: bool = False
    """CUDA: the caching allocator hands sampling's freed blocks to the decode, so the peak is the larger phase.
    On a CPU freed activations mostly stay with the process (glibc keeps small blocks): the peaks add up."""

    unet_to_load: int = 0
    """Bytes of UNet weights that model offload moves onto the GPU for sampling only (not there while decoding)."""

    @classmethod
    def from_pipe(cls, pipe) -> PipelineShape:
        unet, vae = pipe.unet, pipe.vae
        vae_bytes = vae.dtype.itemsize
        if vae_bytes == 2 and getattr(vae.config, "force_upcast", False):
            vae_bytes = 4  # the SDXL pipeline decodes in float32
        tile = vae.tile_sample_min_size
        return cls(
            unet_channels=tuple(unet.config.block_out_channels),
            unet_layers_per_block=_first(unet.config.layers_per_block),
            unet_bytes=unet.dtype.itemsize,
            vae_channels=tuple(vae.config.block_out_channels),
            vae_bytes=vae_bytes,
            vae_tile=_first(tile),
            latent_scale=getattr(pipe, "vae_scale_factor", 8),
        )


def _first(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    per_call: int
    """Images per pipeline call (the request's batch split into calls of at most this many)."""

    vae_slicing: bool
    vae_tiling: bool
    needed: int
    """Estimated peak working memory of one call, in bytes."""

    available: int | None
    note: str = ""
    """Empty when the request runs as asked; else one sentence for the log."""

    def split(self, seeds: list[int]) -> list[list[int]]:
        return [seeds[i : i + self.per_call] for i in range(0, len(seeds), self.per_call)]


def unet_bytes(shape: PipelineShape, width: int, height: int, batch: int, *, guidance: bool = True) -> int:
    """Peak UNet activations of one denoising step: kept skip connections plus the widest level's working set."""
    area = (width // shape.latent_scale) * (height // shape.latent_scale)
    skips = sum((shape.unet_layers_per_block + 1) * c / 4**level for level, c in enumerate(shape.unet_channels))
    working = max(UNET_WORKING_MAPS * c / 4**level for level, c in enumerate(shape.unet_channels))
    samples = batch * (2 if guidance else 1)  # classifier-free guidance runs the negative prompt alongside
    return int(samples * area * (skips + working) * shape.unet_bytes)


def decode_bytes(shape: PipelineShape, width: int, height: int, batch: int, *, slicing: bool, tiling: bool) -> int:
    """Peak of the VAE decode plus turning the result into images.

    The widest full-resolution map is the output of the last upsampler, in the decoder's second-to-last up block,
    which has the channels of the encoder's second level (256 for the SD VAE). Tiled decoding holds that map for
    one tile, plus every decoded tile (overlapping by a quarter, so about 1.8x the image) and the blended result.
    """
    channels = shape.vae_channels[1] if len(shape.vae_channels) > 1 else shape.vae_channels[0]
    at_once = 1 if slicing else batch
    pixels = width * height
    if tiling and max(width, height) > shape.vae_tile:
        decoder = at_once * (DECODE_WORKING_MAPS * channels * shape.vae_tile**2 + 3 * pixels * 3) * shape.vae_bytes
    else:
        decoder = at_once * DECODE_WORKING_MAPS * channels * pixels * shape.vae_bytes
    return int(decoder + batch * pixels * POSTPROCESS_BYTES_PER_PIXEL)


def peak_bytes(
    shape: PipelineShape, width: int, height: int, batch: int, *, guidance=True, slicing=False, tiling=False
) -> int:
    """Working memory of one pipeline call of `batch` images: sampling, then decoding (see `phases_share_memory`;
    on a CPU the sum matches the measured peak RSS of the tiny models)."""
    sampling = unet_bytes(shape, width, height, batch, guidance=guidance) + shape.unet_to_load
    decoding = decode_bytes(shape, width, height, batch, slicing=slicing, tiling=tiling)
    return max(sampling, decoding) if shape.phases_share_memory else sampling + decoding


def choose_plan(
    shape: PipelineShape,
    width: int,
    height: int,
    batch: int,
    *,
    available: int | None,
    guidance: bool = True,
    tiling_on: bool = False,
    device: str = "cpu",
) -> GenerationPlan:
    """The first plan (see the module doc) whose peak fits in `available` bytes, or OutOfMemoryError."""

    def peak(per_call, slicing, tiling):
        return peak_bytes(shape, width, height, per_call, guidance=guidance, slicing=slicing, tiling=tiling)

    asked = peak(batch, False, tiling_on)
    if available is None or asked <= available:
        return GenerationPlan(batch, False, tiling_on, asked, available)
    for tiling in dict.fromkeys((tiling_on, True)):
        for per_call in range(batch, 0, -1):
            needed = peak(per_call, batch > 1, tiling)
            if needed <= available:
                changes = [f"{per_call} image(s) per call"] if per_call < batch else []
                changes += ["tiled VAE decode"] if tiling and not tiling_on else []
                changes += ["one decode at a time"] if per_call > 1 else []
                note = (
                    f"{width}x{height}, batch {batch} needs about {_gb(asked)} and {_gb(available)} is free on "
                    f"{device}: running with {', '.join(changes)}."
                )
                return GenerationPlan(per_call, per_call > 1, tiling, needed, available, note)
    fits = _largest_size(shape, width, height, available, guidance)
    advice = f"use at most {fits[0]}x{fits[1]}" if fits else "free memory (close other programs)"
    raise OutOfMemoryError(
        f"{width}x{height}, batch {batch} needs about {_gb(peak(1, False, True))} even one image at a time with tiled "
        f"decoding, but {_gb(available)} is free on {device}; {advice}, or use a GPU / --memory-mode model-offload."
    )


def _largest_size(shape, width, height, available, guidance) -> tuple[int, int] | None:
    """The largest size with the same aspect ratio (multiples of 64) whose single image fits."""
    for long_side in range(max(width, height) - 64, 63, -64):
        scale = long_side / max(width, height)
        w, h = (max(64, round(width * scale / 64) * 64), max(64, round(height * scale / 64) * 64))
        if peak_bytes(shape, w, h, 1, guidance=guidance, tiling=True) <= available:
            return w, h
    return None


def _gb(n: int) -> str:
    return f"{n / GiB:.1f} GB" if n >= GiB / 10 else f"{n / 1024**2:.1f} MB"


# --- free memory ---------------------------------------------------------------------------------------------


def free_memory(device) -> int | None:
    """Bytes a generation may still allocate on `device` (a torch.device), or None when it cannot be measured."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        # Blocks PyTorch holds in its cache but no tensor uses are free for us too.
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return system_available_memory()  # CPU, and Apple's unified memory


def system_available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """RAM the kernel can hand out without swapping (`MemAvailable`), within a container's cgroup limit."""
    available = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if available is None:
        available = _without_proc()
        if available is None:
            return None
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _without_proc() -> int | None:
    """Available RAM where there is no /proc (macOS, Windows): psutil when installed (not a requirement), else
    free pages on systems whose free count means something; None (no plan, the old behaviour) otherwise."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    if sys.platform == "darwin":
        return None  # macOS counts cached and compressed memory as used: its free pages would refuse too much
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


# --- the hook in generation.run -----------------------------------------------------------------------------


def plan_generation(model, request, width: int, height: int, *, device, available: int | None) -> GenerationPlan:
    """Plan one request on a loaded model and set its VAE up; refuses (OutOfMemoryError) what cannot fit.

    `device` is where the pipeline runs (the manager's device, also under offload). `available` overrides the
    measured free memory (config `available_memory`: tests, or room left for other programs); measured memory is
    used at `USABLE_SHARE`.
    """
    pipe = model.pipe
    if available is None:
        measured = free_memory(device)
        available = None if measured is None else int(measured * USABLE_SHARE)
    shape = PipelineShape.from_pipe(pipe)
    if device.type == "cuda":
        offloaded = pipe.unet.device.type != "cuda"  # model offload: the UNet moves in when sampling starts
        shape = dataclasses.replace(
            shape, phases_share_memory=True, unet_to_load=_module_bytes(pipe.unet) if offloaded else 0
        )
    plan = choose_plan(
        shape,
        width,
        height,
        request.batch_size,
        available=available,
        guidance=request.cfg > 1,
        tiling_on=bool(pipe.vae.use_tiling),
        device=device.type,
    )
    if plan.note:
        log.warning(plan.note)
    if plan.vae_tiling and not pipe.vae.use_tiling:
        pipe.vae.enable_tiling()  # stays on, like the out-of-memory retry in run.py
    if plan.vae_slicing:
        pipe.vae.enable_slicing()
    else:
        pipe.vae.disable_slicing()
    return plan


def _module_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
