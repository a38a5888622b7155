"""X/Y/Z plot axes without a model: A1111's value syntax, what each axis sets in a cell, the two-model rules."""

import pytest

from studio.errors import InvalidRequestError
from studio.generation.request import GenerationRequest
from studio.lora.compare import ab_request, finetune_models, finetune_request
from studio.lora.plot_axes import make_axis, parse_axis
from studio.lora.requests import PlotRequest
from studio.models.kinds import ModelKind
from studio.models.sources import ModelSource

BASE = GenerationRequest(model="demo-sd15", prompt="a cat on snow", negative_prompt="cat hair", width=512, height=768)
KINDS = {"demo-sd15": ModelKind.SD15, "mine-sd15": ModelKind.SD15, "demo-sdxl": ModelKind.SDXL}
ADAPTERS = {"alps": ModelKind.SD15, "alps-xl": ModelKind.SDXL}


@pytest.mark.parametrize(
    "spec, values",
    [
        ("steps=1-5", (1, 2, 3, 4, 5)),
        ("steps=10-30 (+10)", (10, 20, 30)),
        ("steps=10-1 (-3)", (10, 7, 4)),
        ("steps=1-3 [5]", (1, 1, 2, 2, 3)),  # A1111: linspace, then int()
        ("seed=1-2, 7", (1, 2, 7)),
        ("cfg=0-1 (+0.25)", (0.0, 0.25, 0.5, 0.75, 1.0)),
        ("cfg=3-9 [4]", (3.0, 5.0, 7.0, 9.0)),
        ("lora:alps=0, 0.5, 1", (0.0, 0.5, 1.0)),
        ("strength=-1-1 (+1)", (-1.0, 0.0, 1.0)),
        ("sampler=euler, dpm++ 2m karras", ("Euler", "DPM++ 2M Karras")),
        ("size=512x768, 640", ((512, 768), (640, 640))),
        ("blend=off, on", (False, True)),
        ('prompt=cat, "dog, big", bird', ("cat", "dog, big", "bird")),
    ],
)
def test_values_are_read_as_a1111_writes_them(spec, values):
    assert parse_axis(spec).values == values


@pytest.mark.parametrize(
    "spec, message",
    [
        ("steps", "needs TYPE=VALUES"),
        ("strenght=0,1", "Did you mean strength"),
        ("lora=0,1", "Unknown axis type 'lora'"),
        ("steps=", "has no values"),
        ("steps=ten", "'ten' is not a number or a range"),
        ("cfg=1-2 (+0)", "is not a number or a range"),
        ("sampler=Fastest", "unknown sampler 'Fastest'"),
        ("size=big", "'big' is not WIDTHxHEIGHT"),
        ("blend=maybe", "on or off"),
    ],
)
def test_bad_axes_are_named_with_what_to_write(spec, message):
    with pytest.raises(InvalidRequestError, match=message):
        parse_axis(spec)


def test_typed_strengths_are_the_strengths_used_and_labelled():
    base = GenerationRequest(model="demo-sd15", prompt="p", loras=(("alps", 0.7), ("snow", 0.4)))
    one = parse_axis("lora:alps=0, 0.5")
    assert one.apply(base, 0.5).loras == (("snow", 0.4), ("alps", 0.5))  # not 0.5 x the slider's 0.7
    assert one.apply(base, 0.0).loras == (("snow", 0.4),)
    assert [one.value_label(v) for v in one.values] == ["alps 0 (no LoRA)", "alps 0.5"]
    every = parse_axis("strength=0.25")
    assert every.apply(base, 0.25).loras == (("alps", 0.25), ("snow", 0.25))
    assert parse_axis("blend=off").apply(base, False).loras == ()


def test_prompt_search_and_replace_changes_both_prompts_and_must_find_its_text():
    axis = parse_axis("prompt=cat, dog")
    cell = axis.apply(BASE, "dog")
    assert (cell.prompt, cell.negative_prompt) == ("a dog on snow", "dog hair")
    with pytest.raises(InvalidRequestError, match="'bird' is not in the prompt"):
        PlotRequest(BASE, parse_axis("prompt=bird, cat")).validate()


def test_two_models_each_at_its_own_scale_with_its_own_adapters():
    base = GenerationRequest(model="demo-sd15", prompt="p", width=512, height=768, loras=(("alps", 1), ("alps-xl", 1)))
    request = PlotRequest(base, parse_axis("strength=0, 1"), parse_axis("model=demo-sd15, demo-sdxl"))
    cells = request.cells(model_kind=KINDS.get, adapter_kind=ADAPTERS.get)
    assert [cell.position for cell in cells] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    sd15, sdxl = cells[1].request, cells[3].request
    assert (sd15.width, sd15.height, sd15.loras) == (512, 768, (("alps", 1.0),))
    assert (sdxl.width, sdxl.height, sdxl.loras) == (1024, 1536, (("alps-xl", 1.0),))  # native: 512 -> 1024
    assert cells[2].request.loras == ()
    ab = PlotRequest(base, parse_axis("blend=off, on")).cells(model_kind=KINDS.get, adapter_kind=ADAPTERS.get)
    assert ab[1].request.loras == (("alps", 1.0),)  # no model axis: still only the adapters made for the model
    sized = PlotRequest(base, parse_axis("size=256x256"), parse_axis("model=demo-sd15, demo-sdxl"))
    assert {(c.request.width, c.request.height) for c in sized.cells(model_kind=KINDS.get)} == {(256, 256)}


@pytest.mark.parametrize(
    "axes, message",
    [
        ((), "at least one axis"),
        (("steps=1,2", "steps=3"), "vary the same setting"),
        (("seed=1-9", "steps=1-8"), "72 images; use at most 64"),
        (("steps=0, 1",), "steps=0"),
    ],
)
def test_bad_plots_are_refused_before_any_work(axes, message):
    with pytest.raises(InvalidRequestError, match=message):
        PlotRequest(BASE, *(parse_axis(spec) for spec in axes)).validate()


def test_the_shortcuts_are_plots():
    with pytest.raises(InvalidRequestError, match="pick a LoRA"):
        ab_request(BASE)
    blended = GenerationRequest(model="demo-sd15", prompt="p", loras=(("alps", 0.8),))
    assert [cell.request.loras for cell in ab_request(blended).cells()] == [(), (("alps", 0.8),)]
    sources = [
        ModelSource("demo-sd15", ModelKind.SD15, "demo", "demo-sd15"),
        ModelSource("demo-sdxl", ModelKind.SDXL, "demo", "demo-sdxl"),
        ModelSource("mine-xl", ModelKind.SDXL, "folder", "/m/mine-xl"),
    ]
    assert finetune_models("demo-sd15", sources) == ["demo-sd15", "mine-xl"]  # the user's own SDXL model first
    assert finetune_models("demo-sdxl", sources) == ["demo-sd15", "demo-sdxl"]  # SD1.5 row on top
    request = finetune_request(blended, ["demo-sd15", "demo-sdxl"])
    assert (request.x.key, request.x.values, request.y.values) == ("strength", (0, 0.5, 1), ("demo-sd15", "demo-sdxl"))
    assert make_axis("lora:alps", "1").label == "LoRA strength: alps"
