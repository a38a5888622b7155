"""Evaluation end to end on tiny real models: the CLIP feature model, scoring, ranking, copies, Stop, export.

The feature model is a tiny random CLIPVisionModelWithProjection saved to disk and loaded through the same
code as the real one; the candidates are the demo models. Everything runs offline on the CPU.
"""

import json
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from studio.config import StudioConfig
from studio.errors import DatasetError, InvalidRequestError, ModelNotFoundError, UnsafePathError
from studio.evaluation import metrics
from studio.evaluation.features import load_feature_model
from studio.evaluation.requests import (
    Candidate,
    EvaluationRequest,
    ExportRequest,
    SamplingSettings,
    export_folder,
    parse_candidate,
)
from studio.evaluation.runner import evaluate
from studio.evaluation.synthetic import export_dataset
from studio.generation.infotext import parse_infotext, read_infotext
from studio.generation.outputs import save_png
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.manager import ModelManager
from tests.builders import save_tiny_feature_model
from tests.helpers import pixels, quick_request

SMALL = SamplingSettings(steps=2, width=64, height=64, scheduler="Euler")
CPU = dict(device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_feature_model(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    folders = {f"{name}_dir": root / name for name in ("models", "loras", "outputs")}
    return StudioConfig(**folders, device="cpu")


@pytest.fixture(scope="module")
def manager(config):
    """One manager for the module: the demo pipelines are built once and stay cached, as in the app."""
    return ModelManager(config)


@pytest.fixture(scope="module")
def sd15_data(manager, tmp_path_factory):
    """A data folder of 6 demo-sd15 images, seeds 100-105, as a LoRA's training folder would hold."""
    request = GenerationRequest(
        model="demo-sd15", prompt="mountains", steps=2, width=64, height=64, scheduler="Euler", seed=100, batch_count=6
    )
    result = generate(manager, request)
    folder = tmp_path_factory.mktemp("sd15-data")
    for image, text, seed in zip(result.images, result.infotexts, result.seeds):
        save_png(image, text, folder / f"train-{seed}.png")
    return folder


def warm_noise(rng, count):
    arrays = rng.random((count, 48, 48, 3))
    arrays[..., 0] = 0.6 + 0.4 * arrays[..., 0]
    arrays[..., 2] *= 0.3
    return [Image.fromarray((a * 255).astype("uint8")) for a in arrays]


def blue_stripes(rng, count):
    images = []
    for _ in range(count):
        a = np.zeros((48, 48, 3))
        a[:, :: rng.integers(3, 8), 2] = 1.0
        a[..., 1] = rng.random() * 0.3
        images.append(Image.fromarray((a * 255).astype("uint8")))
    return images


def test_known_answers_through_the_real_feature_model(clip_dir):
    features = load_feature_model(str(clip_dir), **CPU)
    rng = np.random.default_rng(0)
    data, fresh, other = (
        features.embed(images) for images in (warm_noise(rng, 12), warm_noise(rng, 12), blue_stripes(rng, 12))
    )
    assert data.shape == (12, 16) and np.allclose(np.linalg.norm(data, axis=1), 1.0)
    for key in ("cmmd", "kid"):
        metric = metrics.METRICS[key]
        floor = metrics.floor_score(data, metric)
        copy, same, far = (metrics.score(x, data, metric) for x in (data, fresh, other))
        assert copy.value <= floor.high and same.low <= floor.high  # identical / same kind: at the floor
        assert far.low > 100 * floor.high  # a clearly different set: far above it
    index, similarity = metrics.nearest(data[[3, 8]], data)
    assert index.tolist() == [3, 8] and similarity == pytest.approx([1.0, 1.0])


def test_a_whole_clip_checkpoint_loads_as_the_feature_model(tmp_path):
    # Hub repos such as openai/clip-vit-large-patch14-336 hold a full CLIPModel (text and vision towers).
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    vision = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8
    )
    text = dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=99,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12))
    model.save_pretrained(tmp_path / "clip")
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path / "clip")
    features = load_feature_model(str(tmp_path / "clip"), **CPU)
    image = Image.new("RGB", (40, 30), "teal")
    with torch.no_grad():
        inputs = features.processor(images=[image], return_tensors="pt")
        projected = model.visual_projection(model.vision_model(**inputs).pooler_output)
        expected = torch.nn.functional.normalize(projected, dim=-1)
    assert np.allclose(features.embed([image]), expected.double().numpy(), atol=1e-5)


def test_feature_model_problems_are_user_errors(tmp_path):
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="no model.safetensors"):
        load_feature_model(str(tmp_path / "no-weights"), **CPU)
    # Tests run with HF_HUB_OFFLINE=1 and an empty cache for this id: the message says how to get it.
    with pytest.raises(ModelNotFoundError, match="not in the local Hub cache"):
        load_feature_model("studio-tests/not-downloaded-clip", **CPU)


def run(manager, config, **fields):
    request = EvaluationRequest(**{"prompt": "mountains", "count": 3, "seed": 100, "sampling": SMALL, **fields})
    return evaluate(manager, request, outputs_dir=config.outputs_dir)


def test_candidates_share_seeds_are_ranked_and_copies_are_flagged(manager, config, clip_dir, sd15_data):
    candidates = (Candidate("demo-sdxl"), Candidate("demo-sd15"))
    result = run(manager, config, candidates=candidates, data=sd15_data, feature_model=str(clip_dir))

    # demo-sd15 with the data's own seeds redraws the data exactly: a memorizing model, caught by the check.
    assert [r.label for r in result.candidates] == ["demo-sd15", "demo-sdxl"]
    sd15, sdxl = result.candidates
    assert [n.nearest.name for n in sd15.neighbours] == ["train-100.png", "train-101.png", "train-102.png"]
    assert all(n.similarity > 0.999 for n in sd15.neighbours) and sd15.copies == 3
    assert np.array_equal(pixels(Image.open(sd15.neighbours[0].image)), pixels(Image.open(sd15_data / "train-100.png")))
    assert sd15.scores["cmmd"].value <= result.floor["cmmd"].high < sdxl.scores["cmmd"].low

    # Same seeds and prompt for every candidate, written in each PNG's infotext.
    for candidate in result.candidates:
        infos = [parse_infotext(read_infotext(n.image)) for n in candidate.neighbours]
        assert [info["Seed"] for info in infos] == ["100", "101", "102"]
        assert {info["Prompt"] for info in infos} == {"mountains"}
        assert Image.open(candidate.grid).size[0] > 3 * 2 * 128  # three (generated | nearest) pairs side by side

    table = result.table()
    assert [row["rank"] for row in table] == [1, 2, "-"] and table[-1]["candidate"].startswith("floor")
    assert table[-1]["closest data image"] == f"{result.data_closest:.3f}" and result.data_closest < 0.999
    saved = json.loads((result.folder / "results.json").read_text())
    assert [c["candidate"]["model"] for c in saved["candidates"]] == ["demo-sd15", "demo-sdxl"]
    assert saved["floor"]["cmmd"]["value"] == pytest.approx(result.floor["cmmd"].value)
    assert "KID (CLIP features)" in (result.folder / "report.md").read_text()
    assert Image.open(result.chart).width > 0


def test_the_same_request_gives_the_same_scores_and_images(manager, config, clip_dir, sd15_data):
    fields = dict(candidates=(Candidate("demo-sd15"),), data=sd15_data, feature_model=str(clip_dir), seed=7)
    first, second = run(manager, config, **fields), run(manager, config, **fields)
    assert first.folder != second.folder
    assert first.candidates[0].scores == second.candidates[0].scores and first.floor == second.floor
    for a, b in zip(first.candidates[0].neighbours, second.candidates[0].neighbours):
        assert a.image.read_bytes() == b.image.read_bytes()


def test_stop_keeps_finished_candidates_and_scores_a_partial_one(manager, config, clip_dir, sd15_data):
    cancel = threading.Event()

    def on_progress(progress):
        if "(2/3): image 3/3" in progress.message:  # the second candidate has drawn 2 of its 3 images
            cancel.set()

    request = EvaluationRequest(
        candidates=(Candidate("demo-sd15"),) * 3,
        data=sd15_data,
        prompt="mountains",
        count=3,
        seed=0,
        sampling=SMALL,
        feature_model=str(clip_dir),
    )
    result = evaluate(manager, request, outputs_dir=config.outputs_dir, on_progress=on_progress, cancel=cancel)
    assert result.interrupted and len(result.candidates) == 2
    first, second = sorted(result.candidates, key=lambda r: r.grid.parent.name)
    assert (len(first.neighbours), first.partial) == (3, False)
    assert (len(second.neighbours), second.partial) == (2, True)  # scored on the 2 images it finished
    assert not list(result.folder.glob("03-*"))
    assert len(json.loads((result.folder / "results.json").read_text())["candidates"]) == 2
    report = (result.folder / "report.md").read_text()
    assert "Stopped early" in report and "stopped early" in report  # the run, and the partial candidate's row


def test_stop_while_reading_the_data_ends_before_generating(manager, config, clip_dir, sd15_data):
    from studio.errors import CancelledError

    cancel = threading.Event()
    cancel.set()
    request = EvaluationRequest(
        candidates=(Candidate("demo-sd15"),),
        data=sd15_data,
        prompt="m",
        count=2,
        sampling=SMALL,
        feature_model=str(clip_dir),
    )
    runs_before = list(config.outputs_dir.glob("evaluations/*"))
    with pytest.raises(CancelledError, match="before anything was generated"):
        evaluate(manager, request, outputs_dir=config.outputs_dir, cancel=cancel)
    assert list(config.outputs_dir.glob("evaluations/*")) == runs_before


@pytest.mark.parametrize(
    "fields, error, message",
    [
        (dict(candidates=()), InvalidRequestError, "0 candidates given"),
        (dict(count=1), InvalidRequestError, "count=1 is out of range"),
        (dict(prompt="  "), InvalidRequestError, "prompt is empty"),
        (dict(seed=-1), InvalidRequestError, "use a fixed seed"),
        (dict(candidates=(Candidate("demo-sd15", (("style", 9.0),)),)), InvalidRequestError, "weight 9.0"),
        (dict(data="/nonexistent/folder"), DatasetError, "/nonexistent/folder does not exist"),
    ],
)
def test_bad_requests_are_refused_before_any_work(tmp_path, fields, error, message):
    base = dict(candidates=(Candidate("demo-sd15"),), data=tmp_path, prompt="x", count=4)
    with pytest.raises(error, match=message):
        EvaluationRequest(**{**base, **fields}).validate()


def test_too_few_data_images_for_a_floor_is_a_dataset_error(manager, config, clip_dir, tmp_path):
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
    runs_before = list(config.outputs_dir.glob("evaluations/*"))
    with pytest.raises(DatasetError, match="has 3 usable image"):
        run(manager, config, candidates=(Candidate("demo-sd15"),), data=tmp_path, feature_model=str(clip_dir))
    assert list(config.outputs_dir.glob("evaluations/*")) == runs_before  # nothing generated, nothing written


@pytest.mark.parametrize(
    "text, expected",
    [
        ("demo-sd15", Candidate("demo-sd15")),
        ("demo-sdxl + style:0.8", Candidate("demo-sdxl", (("style", 0.8),))),
        ("stabilityai/sdxl+a:1+ b : -0.5", Candidate("stabilityai/sdxl", (("a", 1.0), ("b", -0.5)))),
        ("demo-sd15 + style", Candidate("demo-sd15", (("style", 1.0),))),
    ],
)
def test_candidate_text(text, expected):
    assert parse_candidate(text) == expected


@pytest.mark.parametrize(
    "text, message", [(" + a:1", "names no model"), ("m + a:x", "is not a number"), ("m + :1", "empty LoRA name")]
)
def test_bad_candidate_text(text, message):
    with pytest.raises(InvalidRequestError, match=message):
        parse_candidate(text)


def export(manager, folder, *, run=None, **fields):
    request = ExportRequest(
        **{
            "candidate": Candidate("demo-sd15"),
            "prompts": ("snowy peaks", "a glacier valley"),
            "folder": folder,
            "count": 2,
            "seed": 10,
            "sampling": SMALL,
            **fields,
        }
    )
    return export_dataset(manager, request, **(run or {}))


def test_exported_data_set_loads_with_datasets_and_scans_for_training(manager, tmp_path):
    from datasets import load_dataset

    from studio.training.dataset import DatasetRequest, scan_dataset

    result = export(manager, tmp_path / "synthetic")
    rows = [json.loads(line) for line in result.metadata.read_text().splitlines()]
    assert [(r["text"], r["seed"]) for r in rows] == [
        ("snowy peaks", 10),
        ("snowy peaks", 11),
        ("a glacier valley", 12),
        ("a glacier valley", 13),
    ]
    assert {r["model"] for r in rows} == {"demo-sd15"} and all(r["loras"] == [] for r in rows)
    for row in rows:  # each image can be redrawn from its own infotext
        assert parse_infotext(read_infotext(result.folder / row["file_name"]))["Seed"] == str(row["seed"])

    data = load_dataset("imagefolder", data_dir=str(result.folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(data) == 4 and sorted(data["seed"]) == [10, 11, 12, 13]
    assert sorted(data["text"]) == sorted(r["text"] for r in rows)
    assert data[0]["image"].size == (64, 64)

    report = scan_dataset(DatasetRequest(folder=result.folder))
    assert len(report.samples) == 4 and not report.skipped
    assert report.caption_counts == {"metadata": 4, "txt": 0, "default": 0}
    assert {(s.path.name, s.caption) for s in report.samples} == {(r["file_name"], r["text"]) for r in rows}


def test_export_keeps_a_loadable_data_set_when_stopped(manager, tmp_path):
    cancel = threading.Event()

    def stop_on_second_prompt(progress):
        if progress.message.startswith("Prompt 2/"):
            cancel.set()

    result = export(manager, tmp_path / "partial", count=3, run=dict(on_progress=stop_on_second_prompt, cancel=cancel))
    assert result.interrupted and len(result.images) == 3
    lines = result.metadata.read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["snowy peaks"] * 3
    assert sorted(p.name for p in result.folder.glob("*.png")) == [json.loads(line)["file_name"] for line in lines]


def test_export_refuses_a_folder_in_use_and_names_that_escape(manager, tmp_path, config):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidRequestError, match="already exists and is not empty"):
        export(manager, tmp_path / "used")
    with pytest.raises(InvalidRequestError, match="no empty ones"):
        export(manager, tmp_path / "new", prompts=("ok", " "))
    assert export_folder(config.outputs_dir, "mine").parent.name == "datasets"
    for name in ("../escape", "/etc", "", "a/../.."):
        with pytest.raises(UnsafePathError, match=f"name '{re.escape(name)}' must be a plain folder name"):
            export_folder(config.outputs_dir, name)


def test_exported_data_trains_a_lora_that_evaluate_scores_at_several_strengths(manager, config, clip_dir, tmp_path):
    from studio.training.trainer import train

    exported = export(manager, tmp_path / "synthetic", prompts=("snowy peaks",), count=4, seed=10)
    config.loras_dir.mkdir(parents=True, exist_ok=True)
    events = []
    # Captions come from the exported metadata.jsonl: no default caption, trigger or validation prompt.
    request = quick_request(exported.folder, name="synthetic", caption=None, trigger=None, validation_prompt=None)
    adapter = train(request, config, on_event=events.append)
    assert adapter == config.loras_dir / "synthetic" and (adapter / "pytorch_lora_weights.safetensors").is_file()
    assert "4 usable of 4 images" in events[0].message and "4 from metadata.jsonl" in events[0].message

    # Strength 0 redraws the exported images exactly (same model, seeds and prompt); strength 1 moves away.
    candidates = tuple(Candidate("demo-sd15", (("synthetic", weight),)) for weight in (1.0, 0.0))
    result = run(
        manager,
        config,
        candidates=candidates,
        data=exported.folder,
        prompt="snowy peaks",
        seed=10,
        count=2,
        feature_model=str(clip_dir),
    )
    by_label = {r.label: r for r in result.candidates}
    off, on = by_label["demo-sd15 + synthetic:0"], by_label["demo-sd15 + synthetic:1"]
    assert [n.nearest.name for n in off.neighbours] == [p.name for p in exported.images[:2]]
    assert all(n.similarity > 0.999 for n in off.neighbours)
    assert not np.array_equal(pixels(Image.open(on.neighbours[0].image)), pixels(Image.open(off.neighbours[0].image)))
