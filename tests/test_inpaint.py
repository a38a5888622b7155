"""Inpainting through the real manager and tiny pipelines (ordinary and dedicated 9-channel inpainting models):
the input's pixels survive outside the blurred mask, "Only masked", masked content, notes, errors, infotext.

The blur is A1111's (a Gaussian of sigma `mask_blur` cut at 2*int(2.5*sigma+0.5)+1 taps), so for a 4 px blur
the mask reaches 10 px past its edge; every pixel farther out must be the input's own, exactly.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from studio.errors import InvalidRequestError
from studio.generation import images, infotext
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.kinds import ModelKind, describe_checkpoint
from studio.models.manager import ModelManager
from studio.models.sources import list_models, resolve_model
from tests.helpers import mean_abs_diff, pixels

REACH = 10  # how far a 4 px blur carries the mask


@pytest.fixture
def manager(studio_config):
    return ModelManager(studio_config)


def picture(width=64, height=64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], -1).astype(np.uint8))


def square_mask(box=(24, 24, 40, 40), size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def request(**overrides):
    fields = dict(model="demo-sd15", prompt="a red roof", steps=2, seed=3, width=64, height=64, strength=1.0)
    fields.update(init_image=picture(), mask=square_mask())
    fields.update(overrides)
    return GenerationRequest(**fields)


def outside(box, reach=REACH, size=(64, 64)) -> np.ndarray:
    """Pixels farther than `reach` from the box."""
    keep = np.ones(size[::-1], bool)
    x1, y1, x2, y2 = box
    keep[max(y1 - reach, 0) : y2 + reach, max(x1 - reach, 0) : x2 + reach] = False
    return keep


def assert_kept(result_image, source, where):
    assert (pixels(result_image)[where] == pixels(source)[where]).all()


@pytest.mark.parametrize("model", ["demo-sd15", "demo-sdxl"])
def test_pixels_outside_the_blurred_mask_are_the_input_and_inside_are_redrawn(manager, model):
    result = generate(manager, request(model=model))
    out = result.images[0]
    assert_kept(out, picture(), outside((24, 24, 40, 40)))
    assert np.abs(pixels(out)[26:38, 26:38] - pixels(picture())[26:38, 26:38]).mean() > 5
    again = generate(manager, request(model=model)).images[0]
    assert (pixels(out) == pixels(again)).all()


@pytest.mark.parametrize(
    "changes",
    [
        dict(masked_content="fill"),
        dict(masked_content="latent noise"),
        dict(masked_content="latent nothing", batch_size=2),
        dict(inpaint_full_res=True, inpaint_full_res_padding=8),
    ],
    ids=["fill", "latent-noise", "latent-nothing-batch", "only-masked"],
)
def test_every_masked_content_and_only_masked_keep_the_outside(manager, changes):
    changes = {"strength": 0.75, "steps": 4, **changes}
    result = generate(manager, request(**changes))
    for image in result.images:
        assert_kept(image, picture(), outside((24, 24, 40, 40)))
    if "masked_content" in changes:
        # The masked area started from something else than the input: same seed, other pixels there (tiny random
        # VAEs decode any latents to similar noise, so the difference is small, but it is there).
        original = generate(manager, request(strength=0.75, steps=4, batch_size=len(result.images)))
        assert (pixels(result.images[0])[24:40, 24:40] != pixels(original.images[0])[24:40, 24:40]).any()


def test_inpaint_not_masked_repaints_the_black_part(manager):
    box = (8, 8, 56, 56)
    out = generate(manager, request(mask=square_mask(box), inpaint_not_masked=True)).images[0]
    inside = ~outside((box[0] + REACH + 1, box[1] + REACH + 1, box[2] - REACH - 1, box[3] - REACH - 1), reach=0)
    assert_kept(out, picture(), inside)
    assert np.abs(pixels(out)[:4] - pixels(picture())[:4]).mean() > 5  # the border was redrawn


def test_only_masked_works_on_a_box_and_pastes_back_at_the_input_size(manager):
    wide = picture(128, 64)
    mask = square_mask((90, 20, 106, 36), size=(128, 64))
    result = generate(manager, request(init_image=wide, mask=mask, inpaint_full_res=True, strength=0.75))
    out = result.images[0]
    assert out.size == (128, 64)  # the input's size; 64x64 was the size the box was drawn at
    assert_kept(out, wide, outside((90, 20, 106, 36), size=(128, 64)))
    info = infotext.parse_infotext(result.infotexts[0])
    assert (info["Inpaint area"], info["Masked area padding"], info["Size"]) == ("Only masked", "32", "64x64")


def test_a_mask_of_another_size_is_stretched_with_a_note(manager):
    result = generate(manager, request(mask=square_mask((12, 12, 20, 20), size=(32, 32))))
    assert result.notes == ["The mask is 32x32 but the picture is 64x64; the mask was stretched to the picture's size."]
    assert_kept(result.images[0], picture(), outside((24, 24, 40, 40)))


@pytest.mark.parametrize(
    ("mask", "inverted", "message"),
    [
        (Image.new("L", (64, 64), 0), False, "all black"),
        (Image.new("L", (64, 64), 255), True, "all white"),
        (Image.new("RGBA", (64, 64), (255, 255, 255, 0)), False, "all black"),  # fully transparent
    ],
)
def test_a_mask_with_nothing_to_repaint_is_refused_in_one_line(manager, mask, inverted, message):
    with pytest.raises(InvalidRequestError, match=message) as error:
        generate(manager, request(model="no-such-model", mask=mask, inpaint_not_masked=inverted))
    assert "\n" not in str(error.value)


def test_infotext_uses_a1111_names_and_reads_back(manager):
    changes = dict(
        strength=0.5,
        steps=4,
        mask_blur=6,
        inpaint_not_masked=True,
        masked_content="latent nothing",
        inpaint_full_res=True,
        inpaint_full_res_padding=12,
        mask=square_mask((4, 4, 60, 60)),
    )
    text = generate(manager, request(**changes)).infotexts[0]
    assert (
        "Denoising strength: 0.5, Mask blur: 6, Mask mode: Inpaint not masked, Masked content: latent nothing, "
        "Inpaint area: Only masked, Masked area padding: 12" in text
    )
    fields = infotext.image_fields(infotext.parse_infotext(text))
    assert fields == {key: value for key, value in changes.items() if key not in ("steps", "mask")}
    plain = infotext.image_fields(infotext.parse_infotext(generate(manager, request()).infotexts[0]))
    assert plain == {
        "strength": 1.0,
        "mask_blur": 4,
        "inpaint_full_res": False,
        "inpaint_not_masked": False,
        "masked_content": "original",
    }


# --- dedicated inpainting checkpoints (9-channel UNet) ----------------------------------------------------


def inpainting_pipeline(kind: ModelKind):
    """A tiny demo pipeline whose UNet reads latents + mask + masked picture, as sd-v1-5-inpainting's does."""
    from diffusers import UNet2DConditionModel

    from studio.models.tiny import build_tiny

    pipe = build_tiny(kind)
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    return pipe


@pytest.fixture(scope="module")
def inpainting_sd15(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd15-inpainting"
    inpainting_pipeline(ModelKind.SD15).save_pretrained(folder, safe_serialization=True)
    return folder


def test_inpainting_checkpoints_are_recognized_from_the_header_and_the_unet_config(
    inpainting_sd15, tiny_sd15_dir, tmp_path, studio_config
):
    from studio.models.original_layout import save_as_single_file
    from studio.models.single_file import load_single_file
    from studio.models.tiny import build_tiny

    single = save_as_single_file(inpainting_pipeline(ModelKind.SD15), tmp_path / "sd15-inpainting.safetensors")
    ordinary = save_as_single_file(build_tiny(ModelKind.SD15), tmp_path / "sd15.safetensors")
    assert describe_checkpoint(single) == (ModelKind.SD15, True)
    assert describe_checkpoint(ordinary) == (ModelKind.SD15, False)
    loaded = load_single_file(single, ModelKind.SD15, dtype=torch.float32, config_dir=tiny_sd15_dir)
    assert loaded.unet.config.in_channels == 9

    (studio_config.models_dir / "inpaint.safetensors").symlink_to(single)
    listed = {source.name: source for source in list_models(studio_config)}
    assert listed["inpaint.safetensors"].inpainting
    assert listed["inpaint.safetensors"].label.startswith("inpaint.safetensors  [SD1.5 inpainting]")
    assert resolve_model(str(inpainting_sd15), studio_config).inpainting
    assert not resolve_model(str(tiny_sd15_dir), studio_config).inpainting


def test_an_inpainting_model_runs_every_mode_and_keeps_the_outside(manager, inpainting_sd15):
    model = str(inpainting_sd15)
    inpainted = generate(manager, request(model=model, masked_content="latent noise")).images[0]
    assert_kept(inpainted, picture(), outside((24, 24, 40, 40)))
    # Text-to-image and image-to-image run through the inpaint pipeline too (an all-white mask), as in A1111.
    drawn = generate(manager, request(model=model, init_image=None, mask=None)).images[0]
    redrawn = generate(manager, request(model=model, mask=None, strength=0.5)).images[0]
    assert drawn.size == redrawn.size == (64, 64)
    assert mean_abs_diff(drawn, redrawn) > 0.5
    with manager.acquire(model) as loaded:
        assert loaded.pipeline_for("inpaint").unet is loaded.pipe.unet
        assert loaded.pipe.unet.config.in_channels == 9


def test_an_sdxl_inpainting_model_inpaints(manager, tmp_path):
    folder = tmp_path / "tiny-sdxl-inpainting"
    inpainting_pipeline(ModelKind.SDXL).save_pretrained(folder, safe_serialization=True)
    out = generate(manager, request(model=str(folder), mask_blur=0)).images[0]
    assert_kept(out, picture(), outside((24, 24, 40, 40), reach=0))


# --- the preparation itself (torch-free) ------------------------------------------------------------------


def test_blur_reaches_as_far_as_a1111s_kernel_and_no_farther():
    blurred = np.asarray(images.gaussian_blur(square_mask(), 4))
    assert blurred[32, 24 - REACH] > 0 and blurred[32, 24 - REACH - 1] == 0
    assert blurred[32, 39 + REACH] > 0 and blurred[32, 39 + REACH + 1] == 0
    assert blurred[32, 32] == blurred.max() > 200


def test_only_masked_box_is_padded_and_widened_to_the_output_shape():
    mask = square_mask((40, 10, 48, 14), size=(128, 64))
    box = images.crop_region(mask, 4)
    assert box == (36, 6, 52, 18)
    assert images.expand_crop_region(box, 64, 64, 128, 64) == (36, 4, 52, 20)  # 16x12 -> 16x16
    assert images.expand_crop_region((0, 0, 10, 60), 64, 32, 128, 64) == (0, 0, 120, 60)  # pushed inside
