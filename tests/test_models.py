"""Model sources, kinds, loading from disk, the RAM cache and the memory plan."""

import dataclasses
import gc
import weakref

import pytest
import torch

from studio.config import StudioConfig
from studio.errors import ModelNotFoundError, UnsafeFileError, UnsupportedModelError
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.kinds import ModelKind, kind_of_checkpoint_keys, kind_of_folder
from studio.models.manager import ModelManager
from studio.models.memory import GiB, plan_memory
from studio.models.precision import cpu_has_native_bf16, generation_dtype
from studio.models.sources import list_models, resolve_model
from studio.models.tiny import build_tiny
from tests.helpers import pixels


def test_diffusers_folder_loads_through_the_manager_with_the_same_output(tiny_sd15_dir, studio_config):
    manager = ModelManager(studio_config)
    request = GenerationRequest(model=str(tiny_sd15_dir), prompt="mountains", steps=2, seed=3, width=64, height=64)
    from_disk = generate(manager, request).images[0]
    in_memory = generate(manager, GenerationRequest(**{**request.__dict__, "model": "demo-sd15"})).images[0]
    # The saved folder holds the same seed-0 weights as the demo model, so the pixels must match.
    assert (pixels(from_disk) == pixels(in_memory)).all()
    assert manager.active.kind is ModelKind.SD15


def test_models_folder_is_listed_with_kinds_and_problems(studio_config, tiny_sd15_dir, tiny_sdxl_dir):
    import shutil

    shutil.copytree(tiny_sdxl_dir, studio_config.models_dir / "my-sdxl")
    (studio_config.models_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (studio_config.models_dir / "old.ckpt").write_bytes(b"pickle")
    (studio_config.models_dir / "notes.txt").write_text("ignored")
    entries = {s.name: s for s in list_models(studio_config)}
    assert entries["demo-sd15"].kind is ModelKind.SD15
    assert entries["my-sdxl"].kind is ModelKind.SDXL and entries["my-sdxl"].origin == "folder"
    assert "broken.safetensors" in entries and "not a safetensors file" in entries["broken.safetensors"].problem
    assert entries["old.ckpt"].origin == "pickle"
    assert "notes.txt" not in entries


def test_pickle_checkpoint_is_refused_unless_opted_in(studio_config):
    (studio_config.models_dir / "old.ckpt").write_bytes(b"pickle")
    with pytest.raises(UnsafeFileError, match="old.ckpt is a pickle checkpoint"):
        ModelManager(studio_config).load("old.ckpt")


def test_corrupt_checkpoint_is_reported_by_name(studio_config):
    (studio_config.models_dir / "half.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(UnsupportedModelError, match="half.safetensors"):
        resolve_model("half.safetensors", studio_config)


def test_missing_model_suggests_close_names(studio_config):
    with pytest.raises(ModelNotFoundError, match="Did you mean: demo-sd15"):
        resolve_model("demo-sd1.5", studio_config)


def test_names_cannot_climb_out_of_the_models_folder(studio_config, tmp_path):
    outside = tmp_path / "secret-model"
    outside.mkdir()
    (outside / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    config = StudioConfig(models_dir=studio_config.models_dir / "sub")
    config.models_dir.mkdir()
    with pytest.raises(ModelNotFoundError, match="'../../secret-model' was not found"):
        resolve_model("../../secret-model", config)  # not an entry of the models folder, not a path from here


@pytest.mark.parametrize(
    "keys, kind",
    [
        (["model.diffusion_model.x", "cond_stage_model.transformer.text_model.y"], ModelKind.SD15),
        (["model.diffusion_model.x", "conditioner.embedders.1.model.ln_final.weight"], ModelKind.SDXL),
    ],
)
def test_checkpoint_kind_from_keys(keys, kind):
    assert kind_of_checkpoint_keys(keys) is kind


@pytest.mark.parametrize(
    "keys, message",
    [
        (["cond_stage_model.model.transformer.x"], "Stable Diffusion 2.x"),
        (["lora_unet_down_blocks_0.lora_down.weight"], "not a Stable Diffusion checkpoint"),
    ],
)
def test_checkpoint_kind_refuses_what_it_cannot_load(keys, message):
    with pytest.raises(UnsupportedModelError, match=message):
        kind_of_checkpoint_keys(keys, name="x.safetensors")


def test_folder_kind(tiny_sd15_dir, tiny_sdxl_dir):
    assert kind_of_folder(tiny_sd15_dir) is ModelKind.SD15
    assert kind_of_folder(tiny_sdxl_dir) is ModelKind.SDXL


def test_switching_reuses_the_ram_cache_and_does_not_grow(studio_config, tiny_sd15_dir, tiny_sdxl_dir):
    manager = ModelManager(studio_config)  # keeps 2 pipelines
    with manager.acquire("demo-sd15") as first:
        first_pipe = first.pipe
    with manager.acquire("demo-sdxl"):
        pass
    with manager.acquire("demo-sd15") as again:
        assert again.pipe is first_pipe  # switched back from RAM, not reloaded
    dropped = []
    for name in [str(tiny_sdxl_dir), str(tiny_sd15_dir)] * 3 + ["demo-sdxl"]:
        with manager.acquire(name) as model:
            dropped.append(weakref.ref(model.pipe))
    gc.collect()
    assert len(manager.cached_names()) == 2
    alive = [ref for ref in dropped if ref() is not None]
    assert len({id(ref()) for ref in alive}) <= 2  # evicted pipelines are really freed


def test_released_accelerator_keeps_the_model_in_ram(studio_config):
    manager = ModelManager(studio_config)
    with manager.acquire("demo-sd15"):
        pass
    manager.release_accelerator()
    assert manager.active is None and manager.cached_names() == ["demo-sd15"]
    manager.release_accelerator(keep_in_ram=False)
    assert manager.cached_names() == []


def test_loaded_model_uses_the_cpus_precision(studio_config):
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    auto = dataclasses.replace(studio_config, dtype="auto")
    with ModelManager(auto).acquire("demo-sdxl") as model:
        assert model.pipe.unet.dtype == expected
        assert model.plan.mode == "none"


@pytest.mark.parametrize(
    "requested, device, cpu_bf16, expected",
    [
        ("auto", "cpu", True, "bfloat16"),  # AMX / AVX512-BF16 / Zen 4
        ("auto", "cpu", False, "float32"),  # emulated bf16 would be slower than fp32
        ("auto", "cuda", False, "float16"),
        ("auto", "mps", False, "float16"),
        ("float32", "cpu", True, "float32"),  # --dtype wins
        ("bfloat16", "cpu", False, "bfloat16"),
    ],
)
def test_precision_follows_the_devices_reported_features(requested, device, cpu_bf16, expected):
    assert generation_dtype(requested, device, cpu_bf16=cpu_bf16) == expected


@pytest.mark.parametrize(
    "requested, device, kind, weights_gb, free_gb, mode",
    [
        ("auto", "cpu", ModelKind.SDXL, 7, None, "none"),
        ("model-offload", "cpu", ModelKind.SDXL, 7, None, "none"),  # never offload without a GPU
        ("auto", "cuda", ModelKind.SD15, 2, 10, "none"),
        ("auto", "cuda", ModelKind.SDXL, 7, 11, "none"),  # RTX 3060 12 GB
        ("auto", "cuda", ModelKind.SDXL, 7, 7.5, "model-offload"),  # 8 GB card
        ("auto", "cuda", ModelKind.SDXL, 7, 4, "sequential-offload"),
        ("auto", "cuda", ModelKind.SD15, 2, 3, "model-offload"),
        ("auto", "cuda", ModelKind.SD15, 2, 2, "sequential-offload"),
        ("sequential-offload", "cuda", ModelKind.SD15, 2, 20, "sequential-offload"),
        ("auto", "mps", ModelKind.SDXL, 7, None, "none"),
    ],
)
def test_memory_plan(requested, device, kind, weights_gb, free_gb, mode):
    plan = plan_memory(
        requested=requested,
        device_type=device,
        kind=kind,
        weights_bytes=int(weights_gb * GiB),
        free_bytes=None if free_gb is None else int(free_gb * GiB),
    )
    assert plan.mode == mode, plan.reason
    assert plan.reason


def test_tiny_builders_are_deterministic_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny(ModelKind.SD15)
    assert torch.rand(1) == expected
    b = build_tiny(ModelKind.SD15)
    assert all(torch.equal(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters()))


def test_a_models_folder_entry_given_by_full_path_is_named_by_its_entry(studio_config, tiny_sd15_dir):
    import shutil

    shutil.copytree(tiny_sd15_dir, studio_config.models_dir / "alps-base")
    source = resolve_model(str(studio_config.models_dir / "alps-base"), studio_config)
    assert source.name == "alps-base"  # the name reaches infotexts and model cards: never a local path
