"""Image-to-image through the real manager and tiny pipelines: reproducibility, strength, shared weights, LoRA
blends, resize modes, infotext and bad input.

Tiny random VAEs decode any latents to much the same noise, so how close a result stays to its input is measured
where the sampler works: on the final latents, through the live preview's projection (the last step's preview),
against the same projection of the input's encoding.
"""

import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from studio.errors import InvalidRequestError, UnreadableImageError
from studio.generation import images, infotext
from studio.generation.request import GenerationRequest
from studio.generation.run import generate, latent_preview
from studio.models.manager import ModelManager
from tests.helpers import add_lora, mean_abs_diff, pixels, png_header_only

MODELS = ["demo-sd15", "demo-sdxl"]


@pytest.fixture
def manager(studio_config):
    return ModelManager(studio_config)


def picture(width=64, height=64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8))


def request(**overrides):
    fields = dict(model="demo-sd15", prompt="satellite image of mountains", steps=2, seed=7, width=64, height=64)
    fields.update(init_image=picture(), strength=0.5)
    fields.update(overrides)
    return GenerationRequest(**fields)


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_gives_identical_pixels_and_each_batch_image_redraws_alone(manager, model):
    first = generate(manager, request(model=model)).images[0]
    again = generate(manager, request(model=model)).images[0]
    assert (pixels(first) == pixels(again)).all()
    batch = generate(manager, request(model=model, batch_size=2, seed=20))
    alone = generate(manager, request(model=model, seed=21)).images[0]
    assert abs(pixels(batch.images[1]) - pixels(alone)).max() <= 2
    assert mean_abs_diff(batch.images[0], batch.images[1]) > 0.5


@pytest.mark.parametrize("model", MODELS)
def test_low_strength_stays_near_the_input_and_high_strength_moves_away(manager, model):
    with manager.acquire(model) as loaded:
        pipe = loaded.pipe
        with torch.no_grad():
            encoded = pipe.vae.encode(pipe.image_processor.preprocess(picture())).latent_dist.mode()
        reference = latent_preview(encoded * pipe.vae.config.scaling_factor, loaded.kind)
    distance = {}
    for strength in (0.125, 0.5, 1.0):
        steps = []
        generate(manager, request(model=model, steps=8, strength=strength), on_step=steps.append)
        assert len(steps) == int(8 * strength)  # progress counts the steps img2img really runs
        distance[strength] = mean_abs_diff(steps[-1].preview, reference)
    assert distance[0.125] < distance[0.5] < distance[1.0]
    assert distance[1.0] > 3 * distance[0.125], distance


def test_mode_pipelines_share_every_weight_with_the_loaded_one(manager):
    with manager.acquire("demo-sd15") as loaded:
        base = loaded.pipe
        for mode in ("img2img", "inpaint"):
            pipe = loaded.pipeline_for(mode)
            assert pipe is loaded.pipeline_for(mode)  # made once
            for name in ("unet", "vae", "text_encoder"):
                ours = dict(getattr(pipe, name).named_parameters())
                for key, tensor in getattr(base, name).named_parameters():
                    assert ours[key].data_ptr() == tensor.data_ptr(), (mode, name, key)
        first = loaded.pipeline_for("img2img")
    with manager.acquire("demo-sdxl"):
        pass
    with manager.acquire("demo-sd15") as loaded:
        # Parked and back: a new pipeline object, still on the same tensors.
        assert loaded.pipeline_for("img2img") is not first
        assert loaded.pipeline_for("img2img").unet is loaded.pipe.unet


def test_lora_blend_changes_img2img_as_it_changes_text_to_image(manager, studio_config):
    add_lora(studio_config.loras_dir, "alps", seed=1)
    lora = (("alps", 1.0),)
    text = dict(init_image=None)
    plain_txt = generate(manager, request(**text)).images[0]
    lora_txt = generate(manager, request(**text, loras=lora)).images[0]
    plain = generate(manager, request()).images[0]
    with_lora = generate(manager, request(loras=lora)).images[0]
    assert mean_abs_diff(plain_txt, lora_txt) > 0.5
    assert mean_abs_diff(plain, with_lora) > 0.5
    # The blend goes away again in every mode.
    assert (pixels(generate(manager, request()).images[0]) == pixels(plain)).all()


def test_clip_skip_and_weighted_prompts_reach_img2img(manager):
    base = generate(manager, request()).images[0]
    assert mean_abs_diff(base, generate(manager, request(clip_skip=2)).images[0]) > 0.2
    weighted = generate(manager, request(prompt="(satellite image:1.6) of mountains")).images[0]
    assert mean_abs_diff(base, weighted) > 0.2


def test_stop_ends_img2img_within_a_step(manager):
    cancel = threading.Event()
    steps = []

    def on_step(info):
        steps.append(info)
        cancel.set()

    result = generate(manager, request(steps=20, strength=1.0), on_step=on_step, cancel=cancel)
    assert result.interrupted and result.images == [] and len(steps) == 1


def test_output_size_defaults_to_the_input_shape_within_the_native_area(manager):
    wide = generate(manager, request(init_image=picture(96, 64), width=None, height=None))
    assert wide.images[0].size == (96, 64)
    assert "Size: 96x64" in wide.infotexts[0]
    assert images.default_size(picture(4000, 3000), 512) == (584, 440)


def test_infotext_records_denoising_strength_and_reads_back(manager):
    result = generate(manager, request(strength=0.35, steps=3, resize_mode="crop and resize"))
    info = infotext.parse_infotext(result.infotexts[0])
    assert info["Denoising strength"] == "0.35"
    assert info["Resize mode"] == "Crop and resize"
    assert "Mask blur" not in info
    assert infotext.image_fields(info) == {"strength": 0.35, "resize_mode": "crop and resize"}
    assert "Denoising strength" not in generate(manager, request(init_image=None)).infotexts[0]


# --- resize modes (torch-free) ---------------------------------------------------------------------------


def halves(width=40, height=20) -> Image.Image:
    """Left half red, right half blue, green columns (4 px) at each edge."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    array[:, :4] = array[:, -4:] = (0, 255, 0)
    return Image.fromarray(array)


def test_just_resize_stretches_the_whole_picture():
    out = np.asarray(images.resize_image("just resize", halves(), 32, 32))
    assert out.shape == (32, 32, 3)
    assert (out[:, 0, 1] > 150).all() and (out[:, 31, 1] > 150).all()  # both green edges are still there


def test_crop_and_resize_fills_the_output_and_cuts_the_sides():
    out = np.asarray(images.resize_image("crop and resize", halves(), 32, 32))
    assert out[16, 2, 0] > 200 and out[16, 29, 2] > 200  # red left, blue right
    assert (out[:, 0, 1] < 60).all() and (out[:, 31, 1] < 60).all()  # the green edges were cut off


def test_resize_and_fill_keeps_everything_and_stretches_the_edges_into_the_bands():
    source = halves(40, 20)
    out = np.asarray(images.resize_image("resize and fill", source, 32, 32))
    # The whole picture fits in a 32x16 band in the middle; above and below repeat its edge rows.
    assert out.shape == (32, 32, 3)
    assert (out[0, 16:28, 2] > 200).all() and (out[31, 4:14, 0] > 200).all()
    assert out[16, 0, 1] > 150  # the green edge column is kept


@pytest.mark.parametrize("mode", images.RESIZE_MODES)
def test_every_resize_mode_gives_the_output_size(mode):
    assert images.resize_image(mode, halves(40, 20), 24, 48).size == (24, 48)
    assert images.resize_image(mode, halves(20, 40), 48, 24).size == (48, 24)


# --- bad input: one line, before any model loads ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(strength=0.0), "strength=0.0"),
        (dict(strength=1.5), "strength=1.5"),
        (dict(strength=math.nan), "strength=nan"),
        (dict(strength=0.2, steps=4), "leaves no sampling step.*at least 5 steps"),
        (dict(resize_mode="stretch"), "resize_mode='stretch'"),
        (dict(init_image="photo.png"), "must be a picture"),
        (dict(init_image=Image.new("RGB", (9000, 100))), "9000x100"),
        (dict(init_image=None, mask=Image.new("L", (64, 64), 255)), "needs an input image"),
    ],
)
def test_bad_image_requests_are_refused_in_one_line(manager, changes, message):
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(")) as error:
        generate(manager, request(model="no-such-model", **changes))
    assert "\n" not in str(error.value)


def test_files_that_are_not_pictures_are_refused_in_one_line(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    bomb, large = tmp_path / "bomb.png", tmp_path / "large.png"
    png_header_only(bomb, 50_000, 50_000)  # past Pillow's own limit
    png_header_only(large, 10_000, 10_000)  # past ours
    for path, message in [
        (text, "not an image"),
        (bomb, "decompression bomb"),
        (large, "10000x10000"),
        (tmp_path / "missing.png", "no such image file"),
        (tmp_path, "is a folder"),
    ]:
        with pytest.raises(UnreadableImageError, match=message) as error:
            images.load_image(path)
        assert "\n" not in str(error.value)
