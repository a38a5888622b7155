"""Latent and text-embedding caches: encode every image and caption once, not at every step.

Why: the VAE encoder and the text encoders are frozen, so their outputs for a given image (in a given
bucket and orientation) and a given caption never change. Encoding them once lets those models leave
the GPU while the UNet trains, and saves their forward passes at every step (the diffusers example
script re-encodes both at each step).

Keys name the sample, never the step: shuffling changes which sample a step sees, not what a sample
encodes to. Latents are stored as the VAE's mean and standard deviation, so every step still draws a
fresh `mean + std * noise` sample as an uncached run would. Both caches are saved in
`outputs/training/.cache/<data folder>-<model>/`, shared by every run on the same photos and base model, so a
resumed run, and the next run on the same photos, skip the encoding.

With random flip on a CPU, each image is encoded up front only in the orientation the first epoch draws
it in, and the other one the first time the data order draws it (`LatentStore`): a short run never pays
for the flips it does not draw. The encoding is the
same either way (one image at a time, fp32 VAE), so when it happens does not change what a run learns.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Callable, ContextManager

import torch
from safetensors.torch import load_file, save_file

from studio.atomic import atomic_file
from studio.training.buckets import fit_to_bucket
from studio.training.dataset import Sample, load_image

Tensors = dict[str, torch.Tensor]


def latent_key(sample: Sample, bucket: tuple[int, int], flipped: bool) -> str:
    """Identifies what an image encodes to: the file (path, size, mtime), its bucket and orientation."""
    stat = sample.path.stat()
    text = f"{sample.path}|{stat.st_size}|{stat.st_mtime_ns}|{bucket[0]}x{bucket[1]}|{int(flipped)}"
    return "latent." + hashlib.sha1(text.encode()).hexdigest()


def text_key(caption: str) -> str:
    return "text." + hashlib.sha1(caption.encode()).hexdigest()


def image_tensor(sample: Sample, bucket: tuple[int, int], flipped: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """The sample fitted to its bucket as a (3, H, W) tensor in [-1, 1], and the crop's (top, left)."""
    image, crop = fit_to_bucket(load_image(sample.path), bucket)
    if flipped:
        image = image.transpose(0)  # Image.Transpose.FLIP_LEFT_RIGHT
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(image.height, image.width, 3)
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0), crop


class Cache:
    """A dict of tensors by key, loaded from and saved to one safetensors file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.tensors: Tensors = {}
        if path is not None and path.is_file():
            self.tensors = load_file(path)
        self._dirty = False

    def __contains__(self, key: str) -> bool:
        return f"{key}.0" in self.tensors

    def put(self, key: str, values: list[torch.Tensor]) -> None:
        for i, value in enumerate(values):
            self.tensors[f"{key}.{i}"] = value.detach().to("cpu").contiguous()
        self._dirty = True

    def get(self, key: str) -> list[torch.Tensor]:
        values, i = [], 0
        while f"{key}.{i}" in self.tensors:
            values.append(self.tensors[f"{key}.{i}"])
            i += 1
        return values

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        with atomic_file(self.path) as tmp:
            save_file(self.tensors, tmp)
        self._dirty = False


@torch.no_grad()
def cache_latents(
    cache: Cache,
    vae,
    items: list[tuple[Sample, tuple[int, int], bool]],
    *,
    device: torch.device,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Encode each (sample, bucket, flipped) not yet in the cache: [latent mean, std (VAE-scaled), crop (top, left)].

    Returns False if stopped before the end; what was encoded stays in the cache for the next run.
    """
    missing = [item for item in items if latent_key(*item) not in cache]
    scale = vae.config.scaling_factor
    for done, (sample, bucket, flipped) in enumerate(missing, start=1):
        if should_stop():
            return False
        pixels, crop = image_tensor(sample, bucket, flipped)
        dist = vae.encode(pixels[None].to(device, vae.dtype)).latent_dist
        values = [dist.mean[0] * scale, dist.std[0] * scale, torch.tensor(crop)]
        cache.put(latent_key(sample, bucket, flipped), values)
        on_progress(done, len(missing))
    return True


def encode_text(encoders: list[tuple], captions: list[str], device: torch.device) -> list[torch.Tensor]:
    """[prompt_embeds] for SD1.5, [prompt_embeds, pooled] for SDXL, as the pipelines condition the UNet.

    `encoders` is [(tokenizer, text_encoder)], two pairs for SDXL. SD1.5 uses the last hidden state; SDXL
    the penultimate hidden states of both encoders side by side and the projected pooled output of the
    second. No `no_grad` here: a trained text encoder needs grads.
    """
    kind_is_sdxl = len(encoders) == 2
    hidden, pooled = [], None
    for tokenizer, encoder in encoders:
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        output = encoder(ids, output_hidden_states=True)
        hidden.append(output.hidden_states[-2] if kind_is_sdxl else output.last_hidden_state)
        pooled = output[0]  # text_embeds of CLIPTextModelWithProjection (only used for SDXL's second encoder)
    if kind_is_sdxl:
        return [torch.cat(hidden, dim=-1), pooled]
    return [hidden[0]]


@torch.no_grad()
def cache_text(cache: Cache, encoders: list[tuple], captions: list[str], *, device: torch.device) -> None:
    for caption in dict.fromkeys(captions):
        if text_key(caption) not in cache:
            values = encode_text(encoders, [caption], device)
            cache.put(text_key(caption), [v[0] for v in values])


class LatentStore:
    """(sample index, flipped) -> cached [mean, std, crop], as the step loop asks for them.

    An entry missing from the cache (a flip not encoded up front) is encoded when first asked for, by
    `encode(items)`, inside `timer()` (the run charges that time to caching, not to the step)."""

    def __init__(
        self,
        cache: Cache,
        samples: list[Sample],
        buckets: list[tuple[int, int]],
        encode: Callable[[list], None],
        timer: Callable[[], ContextManager] = contextlib.nullcontext,
    ):
        self.cache, self.samples, self.buckets = cache, samples, buckets
        self._encode, self._timer = encode, timer
        self._found: dict[tuple[int, bool], list[torch.Tensor]] = {}  # looked up once, not hashed at every step

    def __getitem__(self, index_flipped: tuple[int, bool]) -> list[torch.Tensor]:
        if index_flipped not in self._found:
            i, flipped = index_flipped
            item = (self.samples[i], self.buckets[i], flipped)
            key = latent_key(*item)
            if key not in self.cache:
                with self._timer():
                    self._encode([item])
            self._found[index_flipped] = self.cache.get(key)
        return self._found[index_flipped]

    def save(self) -> None:
        self.cache.save()
