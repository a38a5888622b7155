"""Sizes and batches that would not fit in memory are planned (batch split, sliced or tiled decode) or refused
before the pipeline runs; the estimate is checked on real model shapes, the plans on the tiny demo model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from studio.engine import Finished, Studio
from studio.errors import OutOfMemoryError
from studio.generation.memory_plan import (
    GiB,
    PipelineShape,
    choose_plan,
    decode_bytes,
    peak_bytes,
    system_available_memory,
)
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.manager import ModelManager
from tests.helpers import pixels

# The published configs of SD1.5 (fp32 on a CPU) and SDXL (fp16 on a GPU; its pipeline decodes in fp32).
SD15_CPU = PipelineShape((320, 640, 1280, 1280), 2, 4, (128, 256, 512, 512), 4, vae_tile=512)
SDXL_GPU = PipelineShape((320, 640, 1280), 2, 2, (128, 256, 512, 512), 4, vae_tile=1024)
REQUEST = dict(model="demo-sd15", prompt="mountains", steps=2, seed=7, width=128, height=128, batch_size=4)


def test_what_the_sliders_allow_is_estimated_past_a_consumer_machine_and_ordinary_sizes_are_not():
    assert peak_bytes(SD15_CPU, 2048, 2048, 8) > 9 * GiB  # the reported case: the CPU process grew past 9 GB
    assert peak_bytes(SD15_CPU, 512, 512, 1) < 2 * GiB
    assert peak_bytes(SDXL_GPU, 1024, 1024, 1) < 6 * GiB  # SDXL at its native size fits an 8-12 GB card
    # Decoding one image at a time, or in tiles, needs a fraction of the whole batch at once.
    whole = decode_bytes(SD15_CPU, 2048, 2048, 8, slicing=False, tiling=False)
    assert decode_bytes(SD15_CPU, 2048, 2048, 8, slicing=True, tiling=False) < whole / 4
    assert decode_bytes(SD15_CPU, 2048, 2048, 8, slicing=True, tiling=True) < whole / 20


def test_a_16_gb_machine_splits_the_slider_maximum_and_refuses_the_cli_maximum_naming_what_fits():
    plan = choose_plan(SD15_CPU, 2048, 2048, 8, available=12 * GiB)
    assert plan.per_call < 8 and plan.needed <= 12 * GiB
    assert "2048x2048, batch 8" in plan.note and "per call" in plan.note
    assert sum(len(part) for part in plan.split(list(range(8)))) == 8

    with pytest.raises(OutOfMemoryError) as refused:
        choose_plan(SD15_CPU, 4096, 4096, 16, available=12 * GiB)
    message = str(refused.value)
    assert "\n" not in message and "4096x4096, batch 16" in message and "12.0 GB is free" in message
    size = message.split("use at most ")[1].split(",")[0]
    width, height = map(int, size.split("x"))
    assert width == height and peak_bytes(SD15_CPU, width, height, 1, tiling=True) <= 12 * GiB


def test_an_8_gb_card_with_model_offload_still_runs_sdxl_at_its_native_size():
    # Offload moves the 5 GB fp16 UNet in for sampling only; CUDA's allocator reuses its blocks for the decode.
    offloaded = dataclasses.replace(SDXL_GPU, phases_share_memory=True, unet_to_load=5 * GiB)
    free = int(7.5 * GiB * 0.85)  # an 8 GB card with the text encoders and VAE resident, at USABLE_SHARE
    plan = choose_plan(offloaded, 1024, 1024, 1, available=free, device="cuda")
    assert (plan.per_call, plan.vae_tiling, plan.note) == (1, False, "")
    four = choose_plan(offloaded, 1024, 1024, 4, available=free, device="cuda")
    assert (four.per_call, four.vae_slicing) == (4, True) and "one decode at a time" in four.note


def test_free_memory_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    available = system_available_memory(meminfo)
    assert available is not None and 0 < available <= 8_000_000 * 1024  # a cgroup limit may lower it
    assert system_available_memory() > 0  # this machine's own figure


def _run(config, on_step=None, **changes):
    steps = []
    result = generate(ModelManager(config), GenerationRequest(**{**REQUEST, **changes}), on_step=steps.append)
    return result, steps


def test_a_batch_that_does_not_fit_runs_in_smaller_calls_with_the_same_images(studio_config):
    alone, alone_steps = _run(studio_config)
    assert len(alone_steps) == 2  # one pipeline call of 4 images

    with ModelManager(studio_config).acquire("demo-sd15") as model:
        shape = PipelineShape.from_pipe(model.pipe)
    two_per_call = peak_bytes(shape, 128, 128, 2, slicing=True)
    assert two_per_call < peak_bytes(shape, 128, 128, 3, slicing=True)
    planned, planned_steps = _run(dataclasses.replace(studio_config, available_memory=two_per_call))

    assert len(planned_steps) == 4  # two calls of 2 images, 2 steps each
    assert planned.seeds == alone.seeds
    for a, b in zip(planned.images, alone.images):
        assert np.abs(pixels(a) - pixels(b)).max() <= 2  # the same images (batched convs round a little apart)


def test_a_size_that_cannot_fit_is_refused_before_any_work_and_nothing_is_saved(studio_config):
    with ModelManager(studio_config).acquire("demo-sd15") as model:
        one_small_image = peak_bytes(PipelineShape.from_pipe(model.pipe), 64, 64, 1)
    studio = Studio(dataclasses.replace(studio_config, available_memory=one_small_image))
    events = []
    with pytest.raises(
        OutOfMemoryError, match=r"^128x128, batch 4 needs about .* MB is free on cpu; use at most 64x64"
    ):
        for event in studio.generate_stream(GenerationRequest(**REQUEST)):
            events.append(event)
    assert not any(hasattr(event, "step") for event in events)  # refused before the first sampling step
    assert not any(studio_config.outputs_dir.rglob("*.png"))

    # The same Studio still serves what fits; the files on disk are the finished images only.
    small = GenerationRequest(**{**REQUEST, "width": 64, "height": 64, "batch_size": 1})
    finished = [event for event in studio.generate_stream(small) if isinstance(event, Finished)][0]
    saved = [p for p in studio_config.outputs_dir.rglob("*") if p.is_file()]
    assert sorted(saved) == sorted(finished.paths) and len(saved) == 1
    assert not [p for p in saved if p.name.startswith(".")]
