"""Hires fix: two passes through the real manager and tiny SD1.5/SDXL pipelines, the upscalers, the infotext."""

import dataclasses
import re
import sys
import threading

import pytest
import torch
from PIL import Image

from studio.engine import Studio, form_from_png_info
from studio.errors import InvalidRequestError, UnsafeFileError, UnsupportedModelError
from studio.generation import infotext, upscalers
from studio.generation.hires import hires_size, pipeline_steps
from studio.generation.outputs import save_png
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.manager import ModelManager
from tests.helpers import add_lora, folders, make_config, mean_abs_diff, pixels, run_cli


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """fp32 whatever the CPU: the tests compare two computations of one image pixel for pixel."""
    config = dataclasses.replace(make_config(tmp_path_factory.mktemp("hires")), dtype="float32")
    upscalers.upscalers_dir(config).mkdir()
    return config


@pytest.fixture(scope="module")
def manager(config):
    """One manager for the module: the demo pipelines load once."""
    return ModelManager(config)


def request(**overrides) -> GenerationRequest:
    fields = dict(model="demo-sd15", prompt="satellite image of mountains", steps=2, seed=7, width=64, height=64)
    return GenerationRequest(**{**fields, **overrides})


def run(manager, req, **kwargs):
    """generate(), with every StepInfo it reported."""
    events = []
    result = generate(manager, req, on_step=events.append, **kwargs)
    return result, events


# --- the two passes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "upscaler"), [("demo-sd15", "Latent"), ("demo-sdxl", "Lanczos")])
def test_hires_fix_upscales_and_its_first_pass_is_the_text_to_image_image(manager, model, upscaler):
    plain = generate(manager, request(model=model)).images[0]
    result, events = run(manager, request(model=model, hires_scale=2, hires_upscaler=upscaler))

    assert result.images[0].size == (128, 128)
    first = [e for e in events if e.stage == "first pass"]
    assert len(first) == 1 and (pixels(first[0].preview) == pixels(plain)).all()
    # The second pass redrew the image: it is not the first pass resized.
    assert mean_abs_diff(result.images[0], plain.resize((128, 128), Image.Resampling.LANCZOS)) > 1.0
    stages = [(e.stage, e.step, e.total_steps) for e in events]
    assert stages == [("", 1, 2), ("", 2, 2), ("first pass", 2, 2), ("hires", 1, 2), ("hires", 2, 2)]
    assert all(isinstance(e.preview, Image.Image) for e in events)  # live preview in both passes
    text = result.infotexts[0]
    assert "Size: 64x64," in text  # A1111 records the first pass's size
    assert f"Denoising strength: 0.7, Hires upscale: 2, Hires upscaler: {upscaler}, " in text


def test_resize_to_a_box_crops_and_hires_steps_denoise_and_upscaler_change_the_result(manager):
    base = request(hires_width=128, hires_height=96, hires_steps=3, hires_denoise=0.5)
    result, events = run(manager, base)
    assert result.images[0].size == (128, 96)
    assert [e.step for e in events if e.stage == "hires"] == [1, 2, 3]  # A1111: Hires steps are the steps run
    assert (
        "Denoising strength: 0.5, Hires resize: 128x96, Hires steps: 3, Hires upscaler: Latent, "
        in (result.infotexts[0])
    )
    for change in (dict(hires_denoise=0.9), dict(hires_upscaler="Latent (nearest)")):
        other = generate(manager, dataclasses.replace(base, **change)).images[0]
        assert mean_abs_diff(other, result.images[0]) > 0.5, change


def test_lora_blend_and_clip_skip_reach_both_passes(manager, config):
    add_lora(config.loras_dir, "alps", seed=1)
    styled = request(loras=(("alps", 1.0),), clip_skip=2)
    plain_first = generate(manager, styled).images[0]
    result, events = run(manager, dataclasses.replace(styled, hires_scale=1.5))
    first = next(e.preview for e in events if e.stage == "first pass")
    assert (pixels(first) == pixels(plain_first)).all()
    assert result.images[0].size == (96, 96)
    without = generate(manager, request(clip_skip=2, hires_scale=1.5)).images[0]
    assert mean_abs_diff(without, result.images[0]) > 1.0
    text = result.infotexts[0]
    assert "<lora:alps:1>" in text and "Clip skip: 2, Hires upscale: 1.5, " in text and "Lora hashes: " in text


def test_stop_during_the_second_pass_ends_the_run_and_the_app_keeps_working(manager):
    cancel = threading.Event()
    seen = []

    def on_step(info):
        seen.append(info.stage)
        if info.stage == "hires":
            cancel.set()

    result = generate(manager, request(hires_scale=2, hires_steps=4), on_step=on_step, cancel=cancel)
    assert result.interrupted and result.images == []
    assert seen.count("hires") == 1  # stopped within one step
    assert generate(manager, request(hires_scale=2)).images[0].size == (128, 128)


def test_large_second_pass_decodes_in_vae_tiles(config):
    """VAE tiling on (the memory plan's choice for large images): the 128 px decode runs in 64 px tiles."""
    tiled = ModelManager(dataclasses.replace(config, vae_tiling=True))
    result, events = run(tiled, request(hires_scale=2))
    assert tiled.active.pipe.vae.use_tiling and result.images[0].size == (128, 128)
    untiled = generate(ModelManager(config), request(hires_scale=2)).images[0]
    assert 0 < mean_abs_diff(result.images[0], untiled) < 10  # tile seams blend: close, not identical


def test_decode_out_of_memory_in_the_second_pass_is_retried_in_tiles(config):
    from diffusers import AutoencoderKL

    class VaeFitsSmallImagesOnly(AutoencoderKL):
        def decode(self, z, *args, **kwargs):
            if z.shape[-1] > 8 and not self.use_tiling:  # more than 64 px
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().decode(z, *args, **kwargs)

    reference = generate(ModelManager(dataclasses.replace(config, vae_tiling=True)), request(hires_scale=2))
    small = ModelManager(config)
    with small.acquire("demo-sd15") as model:
        vae = VaeFitsSmallImagesOnly.from_config(model.pipe.vae.config)
        vae.load_state_dict(model.pipe.vae.state_dict())
        # from_pipe takes AutoencoderKL itself only: swap the VAE in once the img2img pipeline exists.
        for pipe in (model.pipe, model.pipeline_for("img2img")):
            pipe.vae = vae
    result = generate(small, request(hires_scale=2))
    assert (pixels(result.images[0]) == pixels(reference.images[0])).all()


# --- sizes, steps, requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "first", "upscale", "final"),
    [
        (dict(hires_scale=2), (512, 768), (1024, 1536), (1024, 1536)),
        (dict(hires_scale=1.3), (520, 512), (672, 664), (672, 664)),  # rounded down to multiples of 8
        (dict(hires_width=1024), (512, 768), (1024, 1536), (1024, 1536)),  # height follows the aspect ratio
        (dict(hires_height=1024), (512, 768), (680, 1024), (680, 1024)),
        (dict(hires_width=1024, hires_height=1024), (512, 768), (1024, 1536), (1024, 1024)),  # cover, crop
        (dict(hires_width=1024, hires_height=512), (512, 512), (1024, 1024), (1024, 512)),
    ],
)
def test_hires_size_follows_a1111(fields, first, upscale, final):
    size = hires_size(request(**fields), *first)
    assert (size.upscale, size.final) == (upscale, final)


@pytest.mark.parametrize(("steps", "denoise"), [(2, 0.7), (10, 0.7), (20, 0.35), (7, 1.0), (15, 0.55), (30, 0.01)])
def test_img2img_runs_exactly_the_hires_steps(steps, denoise):
    total, run_steps = pipeline_steps(steps, denoise)
    assert min(int(total * denoise), total) == run_steps
    assert run_steps == (steps if total < 1000 else int(1000 * denoise))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(hires_scale=0.5), "hires_scale=0.5 is out of range"),
        (dict(hires_width=100), "hires_width=100 must be 0 (from the scale) or a multiple of 8"),
        (dict(hires_scale=2, hires_denoise=0.0), "hires_denoise=0.0 is out of range"),
        (dict(hires_steps=-1), "hires_steps=-1 is out of range"),
        (dict(hires_scale=2, init_image=Image.new("RGB", (64, 64))), "hires fix is for text-to-image"),
    ],
)
def test_bad_hires_fields_are_named(fields, message):
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        request(**fields).validate()


def test_hires_is_off_by_default():
    assert not request().hires and request(hires_scale=1.5).hires and request(hires_height=512).hires
    assert "Hires" not in infotext.build_infotext(
        prompt="p", negative_prompt="", params=infotext.hires_params(request())
    )


# --- infotext ------------------------------------------------------------------------------------------------


def test_a1111_hires_infotext_fills_the_form():
    written_by_a1111 = (
        "mountains\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, "
        "Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
        "Clip skip: 2, Hires upscale: 1.5, Hires steps: 12, Hires upscaler: 4x-UltraSharp, Version: v1.10.1"
    )
    form = form_from_png_info(infotext.parse_infotext(written_by_a1111))
    assert form["hires_scale"] == 1.5 and form["hires_steps"] == 12 and form["hires_denoise"] == 0.45
    assert form["hires_upscaler"] == "4x-UltraSharp" and form["steps"] == 20 and form["clip_skip"] == 2
    resized = written_by_a1111.replace("Hires upscale: 1.5, Hires steps: 12, ", "Hires resize: 1024x768, ")
    form = form_from_png_info(infotext.parse_infotext(resized))
    assert (form["hires_width"], form["hires_height"], form["hires_steps"]) == (1024, 768, 0)
    assert "strength" not in form  # on a hires image the denoising strength is the second pass's
    img2img = written_by_a1111.replace("Hires upscale: 1.5, Hires steps: 12, Hires upscaler: 4x-UltraSharp, ", "")
    form = form_from_png_info(infotext.parse_infotext(img2img))
    assert not any(key.startswith("hires") for key in form) and form["strength"] == 0.45
    inpaint = img2img.replace("Clip skip: 2", "Mask blur: 8, Inpaint area: Only masked, Masked area padding: 48")
    form = form_from_png_info(infotext.parse_infotext(inpaint))
    assert (form["mask_blur"], form["inpaint_full_res"], form["inpaint_full_res_padding"]) == (8, True, 48)


def test_hires_infotext_round_trips_through_png_info(manager, tmp_path):
    req = request(hires_scale=1.5, hires_steps=1, hires_denoise=0.6, hires_upscaler="Lanczos")
    result = generate(manager, req)
    path = save_png(result.images[0], result.infotexts[0], tmp_path / "hires.png")
    form = form_from_png_info(Studio.read_png_info(path))
    assert {key: form[key] for key in form if key.startswith("hires")} == dict(
        hires_scale=1.5, hires_steps=1, hires_denoise=0.6, hires_upscaler="Lanczos"
    )
    assert (form["width"], form["height"], form["seed"]) == (64, 64, 7)
    again = generate(manager, request(**{k: form[k] for k in form if k.startswith("hires")}))
    assert (pixels(again.images[0]) == pixels(result.images[0])).all()


# --- upscalers -----------------------------------------------------------------------------------------------


def test_upscaler_list_checks_and_pickle_opt_in(studio_config, capsys):
    config = studio_config
    folder = upscalers.upscalers_dir(config)
    folder.mkdir()
    (folder / "4x-Test.safetensors").write_bytes(b"")
    (folder / "old.pth").write_bytes(b"")
    (folder / "notes.txt").write_text("not a model")
    assert Studio(config, manager=object()).upscalers() == [*upscalers.BUILTIN, "4x-Test.safetensors"]
    assert upscalers.list_upscalers(dataclasses.replace(config, allow_pickle=True))[-2:] == [
        "4x-Test.safetensors",
        "old.pth",
    ]
    with pytest.raises(InvalidRequestError, match="did you mean 'Lanczos'"):
        upscalers.check_upscaler("lanczos", config)
    with pytest.raises(InvalidRequestError, match="not a built-in upscaler"):
        upscalers.check_upscaler("../models/x.safetensors", config)
    with pytest.raises(UnsafeFileError, match="old.pth is a pickle file.*--allow-pickle"):
        upscalers.check_upscaler("old.pth", config)
    assert upscalers.check_upscaler("old.pth", dataclasses.replace(config, allow_pickle=True)) == folder / "old.pth"
    assert upscalers.check_upscaler("4x-Test", config) == folder / "4x-Test.safetensors"  # as A1111 names it
    with pytest.raises(InvalidRequestError, match="hires_upscaler='nope'"):
        generate(ModelManager(config), request(hires_scale=2, hires_upscaler="nope"))
    from studio.cli import main

    assert main(["upscalers", "--models-dir", str(config.models_dir)]) == 0
    assert capsys.readouterr().out.split()[-2:] == ["Nearest", "4x-Test.safetensors"]


def test_latent_upscalers_interpolate_as_a1111():
    latents = torch.randn(1, 4, 8, 8)
    for name, mode, antialias in [("Latent", "bilinear", False), ("Latent (nearest)", "nearest", False)]:
        expected = torch.nn.functional.interpolate(latents, size=(16, 12), mode=mode, antialias=antialias)
        assert torch.equal(upscalers.Upscaler(name).upscale_latents(latents, 96, 128), expected)
    image = Image.effect_noise((32, 32), 64).convert("RGB")
    lanczos = upscalers.Upscaler("Lanczos").upscale_image(image, 64, 48)
    assert (pixels(lanczos) == pixels(image.resize((64, 48), Image.Resampling.LANCZOS))).all()


def test_upscaler_model_without_spandrel_says_what_to_install(config, monkeypatch):
    (upscalers.upscalers_dir(config) / "2x-Missing.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "spandrel", None)  # as if it were not installed
    with pytest.raises(
        UnsupportedModelError, match=r'needs the spandrel package.*pip install spandrel "torchvision==0\.'
    ):
        upscalers.load_upscaler("2x-Missing.safetensors", config)


# --- upscaler models through spandrel --------------------------------------------------------------------------


@pytest.fixture
def spandrel(tmp_path, monkeypatch):
    """spandrel, importable even where torchvision is not.

    spandrel imports torchvision at import time for two architectures (LaMa, RestoreFormer) that upscaling never
    runs, and PyPI's torchvision does not load with a CPU build of torch. Where torchvision cannot be imported, a
    stand-in with just those names (raising if called) lets the real spandrel load and run ESRGAN models.
    """
    pytest.importorskip("einops")
    if __import__("importlib").util.find_spec("spandrel") is None:
        pytest.skip("spandrel is not installed (pip install --no-deps spandrel einops)")
    before = set(sys.modules)
    try:
        import torchvision.transforms.functional  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            monkeypatch.delitem(sys.modules, name)
        stub = tmp_path / "stub" / "torchvision" / "transforms"
        stub.mkdir(parents=True)
        (stub.parent / "__init__.py").write_text("")
        (stub / "__init__.py").write_text("")
        (stub / "functional.py").write_text(
            "import enum\n\n\nclass InterpolationMode(enum.Enum):\n    NEAREST = 'nearest'\n    BILINEAR = 'bilinear'\n"
            "\n\ndef rotate(*args, **kwargs):\n    raise NotImplementedError\n\n\nnormalize = rotate\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path / "stub"))
    import spandrel

    yield spandrel
    for name in set(sys.modules) - before:  # the stand-in must not outlive this test
        if name.split(".")[0] in ("spandrel", "torchvision"):
            del sys.modules[name]


def tiny_esrgan(spandrel, path):
    """A 2x ESRGAN (RRDBNet, 8 filters, 1 block) with random weights, saved as users get them."""
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def test_esrgan_safetensors_upscaler_runs_in_the_hires_fix(spandrel, manager, config, monkeypatch):
    tiny_esrgan(spandrel, upscalers.upscalers_dir(config) / "2x-Tiny.safetensors")
    upscaler = upscalers.load_upscaler("2x-Tiny.safetensors", config, device=torch.device("cpu"))
    assert upscaler.model.architecture.name == "ESRGAN" and upscaler.model.scale == 2

    image = Image.effect_noise((40, 40), 64).convert("RGB")
    tensor = torch.from_numpy(pixels(image).astype("float32")).permute(2, 0, 1)[None] / 255
    whole = upscaler.model(tensor)
    monkeypatch.setattr(upscalers, "MODEL_TILE", 16)
    monkeypatch.setattr(upscalers, "_TILE_OVERLAP", 32)  # wider than the tiny model's receptive field
    assert torch.allclose(upscalers._tiled(upscaler.model, tensor), whole, atol=1e-5)
    by_model = upscaler.upscale_image(image, 80, 80)
    assert by_model.size == (80, 80)
    assert mean_abs_diff(by_model, upscalers.Upscaler("Lanczos").upscale_image(image, 80, 80)) > 1.0

    result, events = run(manager, request(hires_scale=2, hires_upscaler="2x-Tiny.safetensors"))
    assert result.images[0].size == (128, 128)
    assert "Hires upscaler: 2x-Tiny.safetensors" in result.infotexts[0]


def test_a_safetensors_file_that_is_no_upscaler_is_refused(spandrel, config):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 3)}, upscalers.upscalers_dir(config) / "random.safetensors")
    with pytest.raises(UnsupportedModelError, match="Upscaler random.safetensors is not an architecture spandrel"):
        upscalers.load_upscaler("random.safetensors", config)


# --- CLI -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_generates_with_the_hires_fix(tmp_path):
    done = run_cli(
        "generate", "--model", "demo-sd15", "--prompt", "mountains", "--steps", "2", "--seed", "3",
        "--width", "64", "--height", "64", "--hires", "2", "--hires-steps", "1", "--hires-denoise", "0.5",
        "--upscaler", "Lanczos", "--out", tmp_path / "out", *folders(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip()
    text = infotext.read_infotext(path)
    assert Image.open(path).size == (128, 128)
    assert "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 1, Hires upscaler: Lanczos" in text
