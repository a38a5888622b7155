"""A1111 infotext: written so A1111's PNG Info and Civitai read it, and read back into the form."""

import re

import pytest
from PIL import Image

from studio.engine import form_from_png_info
from studio.errors import InvalidRequestError
from studio.generation import infotext, outputs

A1111_SAMPLE = (
    "masterpiece, mountains, <lora:alps_v2:0.7>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 768x512, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "alps_v2: 1f2e3d4c5b6a", Version: v1.10.1'
)


def test_parses_an_a1111_infotext_into_form_values():
    info = infotext.parse_infotext(A1111_SAMPLE)
    assert info["Lora hashes"] == "alps_v2: 1f2e3d4c5b6a"
    form = form_from_png_info(info)
    assert form == {
        "prompt": "masterpiece, mountains, <lora:alps_v2:0.7>",
        "negative_prompt": "blurry, lowres",
        "steps": 30,
        "cfg": 6.5,
        "seed": 1234,
        "width": 768,
        "height": 512,
        "scheduler": "DPM++ 2M Karras",
        "model": "v1-5-pruned-emaonly",
    }


def test_round_trip_with_quoting_of_commas_and_colons():
    text = infotext.build_infotext(
        prompt="line one\nline two",
        negative_prompt="bad: hands",
        params={"Steps": 4, "Model": "my, model", "Lora hashes": "a: 123, b: 456", "Clip skip": None},
    )
    assert 'Model: "my, model"' in text and "Clip skip" not in text
    info = infotext.parse_infotext(text)
    assert info["Prompt"] == "line one\nline two"
    assert info["Negative prompt"] == "bad: hands"
    assert info["Model"] == "my, model"
    assert info["Lora hashes"] == "a: 123, b: 456"


def test_lora_tags_are_split_from_the_prompt():
    prompt, loras = infotext.split_lora_tags("a <lora:alps:0.8> mountain, <lora:snow:-1>")
    assert prompt == "a mountain"
    assert loras == [("alps", 0.8), ("snow", -1.0)]


@pytest.mark.parametrize(
    "text, expected",
    [("alps:0.8", ("alps", 0.8)), ("alps", ("alps", 1.0)), (" snow : -1 ", ("snow", -1.0)), ("a:b:0.5", ("a:b", 0.5))],
)
def test_lora_weight_text_is_parsed(text, expected):
    assert infotext.parse_lora_weight(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "alps:strong",
            "'alps:strong': 'strong' is not a number; the weight after ':' must be a number, e.g. alps:0.8.",
        ),
        (":0.5", "':0.5' has an empty LoRA name"),
        ("", "has an empty LoRA name"),
    ],
)
def test_bad_lora_weight_text_is_named_with_an_example(text, message):
    with pytest.raises(InvalidRequestError, match=re.escape(message)) as raised:
        infotext.parse_lora_weight(text)
    assert "\n" not in str(raised.value)


def test_png_keeps_the_parameters_chunk(tmp_path):
    path = outputs.save_png(Image.new("RGB", (8, 8)), A1111_SAMPLE, tmp_path / "x.png")
    assert infotext.read_infotext(path) == A1111_SAMPLE
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # the temporary file was renamed, not left behind


def test_saved_images_are_numbered_after_existing_ones(tmp_path):
    image = Image.new("RGB", (8, 8))
    first = outputs.save_images([image, image], ["a", "b"], [5, 6], tmp_path)
    second = outputs.save_images([image], ["c"], [9], tmp_path)
    assert [p.name for p in first + second] == ["00001-5.png", "00002-6.png", "00003-9.png"]
    assert outputs.history(tmp_path)[0] == second[0]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from studio.atomic import atomic_file

    path = outputs.save_png(Image.new("RGB", (8, 8)), A1111_SAMPLE, tmp_path / "x.png")
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(path) as tmp:
            tmp.write_bytes(b"half a PNG")
            raise RuntimeError("disk full")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert path.stat().st_mode & 0o777 == 0o644  # readable like any saved file, not mkstemp's 0600
