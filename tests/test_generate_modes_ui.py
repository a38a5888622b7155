"""The Generate tab's mode controls without a browser: the mask read from the editor's painted layer or an upload,
and the request each mode builds from the form (the page and the three endpoints share these)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.engine import Studio
from studio.errors import InvalidRequestError
from studio.ui.generate_tab import FORM_FIELDS, build_request
from studio.ui.image_inputs import editor_image_and_mask

FORM = dict(zip(FORM_FIELDS, ["", "a lake", None, 10.0, 7, 5.0, 64.0, 64.0, "Euler", 1.0, 1.0, 1.0]))


def painted(size=(64, 48), box=(0, 0, 20, 48)) -> Image.Image:
    """A brush layer as the ImageEditor sends it: transparent, with a see-through stroke."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 34, 102, 153), box)
    return layer


def test_the_mask_is_white_where_a_stroke_was_painted_and_black_elsewhere():
    background = Image.new("RGBA", (64, 48), (40, 90, 160, 255))
    image, mask = editor_image_and_mask({"background": background, "layers": [painted()], "composite": None}, None)
    assert image.mode == "RGB" and image.size == (64, 48)
    values = np.asarray(mask)
    assert mask.mode == "L" and values.shape == (48, 64)
    assert (values[:, :20] == 255).all() and (values[:, 20:] == 0).all()


def test_an_uploaded_mask_adds_to_the_painted_one_and_is_fitted_to_the_picture():
    background = Image.new("RGB", (64, 48), "gray")
    upload = Image.new("L", (32, 24), 0)
    upload.paste(200, (24, 0, 32, 24))  # light: repaint; the right quarter once scaled to 64x48
    _image, mask = editor_image_and_mask({"background": background, "layers": [painted()]}, upload)
    values = np.asarray(mask)
    assert (values[:, :20] == 255).all() and (values[:, 48:] == 255).all() and (values[:, 20:48] == 0).all()


def test_nothing_painted_or_no_picture_is_refused_with_what_to_do():
    with pytest.raises(InvalidRequestError, match="Nothing is masked: paint over what to repaint"):
        editor_image_and_mask({"background": Image.new("RGB", (64, 64)), "layers": [None]}, Image.new("L", (64, 64)))
    with pytest.raises(InvalidRequestError, match="Inpaint needs a picture"):
        editor_image_and_mask({"background": None, "layers": [painted()]}, None)
    with pytest.raises(InvalidRequestError, match="Inpaint needs a picture"):
        editor_image_and_mask(None, None)


def test_each_mode_builds_its_request_with_whole_numbers_and_the_default_model(studio_config):
    studio = Studio(studio_config)
    picture = Image.new("RGB", (64, 64), "gray")
    txt2img = build_request(studio, "txt2img", {**FORM, "hires_scale": 2, "hires_steps": 3.0, "image": picture})
    assert txt2img.mode == "txt2img" and txt2img.model == studio_config.default_model
    assert (txt2img.steps, txt2img.width, txt2img.hires_steps, txt2img.hires_scale) == (10, 64, 3, 2.0)
    assert all(type(v) is int for v in (txt2img.steps, txt2img.seed, txt2img.batch_size, txt2img.hires_steps))
    assert txt2img.negative_prompt == "" and txt2img.init_image is None  # txt2img ignores a stray image
    img2img = build_request(
        studio, "img2img", {**FORM, "image": picture, "strength": 0.4, "resize_mode": "resize and fill"}
    )
    assert img2img.mode == "img2img" and (img2img.strength, img2img.resize_mode) == (0.4, "resize and fill")
    mask = Image.new("L", (64, 64), 255)
    inpaint = build_request(studio, "inpaint", {**FORM, "image": picture, "mask": mask, "mask_blur": 8.0})
    assert inpaint.mode == "inpaint" and inpaint.mask_blur == 8 and type(inpaint.mask_blur) is int
    img2img.validate(), inpaint.validate(), txt2img.validate()
