"""The launched app driven by gradio_client from this (separate) process, as scripts and other tools use it.

Covers every public api_name of the Generate tab: /generate, /img2img, /inpaint, /stop, /png_info, /list_models,
/history, /list_embeddings.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from studio.generation.infotext import parse_infotext, read_infotext
from studio.models.kinds import ModelKind
from tests.helpers import landscape, pixels, wait_until

SMALL = dict(steps=2, cfg=7.0, width=64, height=64, scheduler="Euler", batch_size=1, batch_count=1, clip_skip=1)


def generate(client: Client, *, model="demo-sd15", prompt="snowy mountains", seed=42, **overrides):
    """One /generate call with small defaults; returns (status, image path, infotext, seed used)."""
    args = {**SMALL, **overrides}
    status, _preview, gallery, infotext, seed_used = client.predict(
        model=model, prompt=prompt, negative_prompt="", seed=seed, api_name="/generate", **args
    )
    return status, Path(gallery[0]["image"]) if gallery else None, infotext, seed_used


def saved_outputs(app) -> list[Path]:
    return sorted(app.outputs_dir.glob("txt2img/*/*.png"))


def test_same_seed_gives_identical_png_with_infotext(client, studio_running_app):
    before = set(saved_outputs(studio_running_app))
    status_a, image_a, info_a, seed_a = generate(client, seed=1234)
    status_b, image_b, info_b, seed_b = generate(client, seed=1234)

    assert status_a.startswith("Done.") and status_b.startswith("Done.")
    assert seed_a == seed_b == 1234
    assert np.array_equal(pixels(Image.open(image_a)), pixels(Image.open(image_b)))
    # The two files the app saved on disk are byte for byte the same image with the same infotext.
    new = sorted(set(saved_outputs(studio_running_app)) - before)
    assert len(new) == 2 and [p.name.split("-")[1] for p in new] == ["1234.png", "1234.png"]
    assert new[0].read_bytes() == new[1].read_bytes()
    assert new[0].stat().st_mode & 0o777 == 0o644  # readable like any saved file, not private to the app's user

    assert info_a == info_b == read_infotext(image_a)
    parsed = parse_infotext(info_a)
    assert parsed["Prompt"] == "snowy mountains"
    assert (parsed["Seed"], parsed["Steps"], parsed["Size"], parsed["Sampler"]) == ("1234", "2", "64x64", "Euler")
    assert parsed["Model"] == "demo-sd15"


def test_another_seed_gives_another_image(client):
    _, image_a, _, _ = generate(client, seed=1)
    _, image_b, _, _ = generate(client, seed=2)
    assert not np.array_equal(pixels(Image.open(image_a)), pixels(Image.open(image_b)))


def test_random_seed_is_reported_and_reproduces_the_image(client):
    _, image_random, info, used = generate(client, seed=-1)
    assert used >= 0 and f"Seed: {used}," in info
    _, image_again, _, _ = generate(client, seed=used)
    assert np.array_equal(pixels(Image.open(image_random)), pixels(Image.open(image_again)))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(width=65), "width=65 must be a multiple of 8"),
        (dict(height=100), "height=100 must be a multiple of 8"),
        (dict(model="missing-model.safetensors"), "'missing-model.safetensors' was not found"),
    ],
)
def test_bad_input_gives_a_clear_error_and_the_next_call_works(client, overrides, message):
    with pytest.raises(AppError, match=message):
        generate(client, **overrides)
    status, image, _, seed = generate(client, seed=7)
    assert status.startswith("Done.") and image.exists() and seed == 7


def test_unknown_scheduler_is_refused_with_its_name(client):
    with pytest.raises(AppError, match="Fancy Sampler"):
        generate(client, scheduler="Fancy Sampler")
    assert generate(client, seed=8)[0].startswith("Done.")


def test_corrupt_and_deleted_checkpoints_give_clear_errors(client, studio_running_app):
    corrupt = studio_running_app.models_dir / "broken.safetensors"
    corrupt.write_bytes(b"this is not a safetensors file")
    with pytest.raises(AppError, match="broken.safetensors"):
        generate(client, model="broken.safetensors")
    corrupt.unlink()
    with pytest.raises(AppError, match="'broken.safetensors' was not found"):
        generate(client, model="broken.safetensors")
    assert generate(client, seed=9)[0].startswith("Done.")


def test_a_diffusers_folder_added_after_start_is_listed_and_generates(client, studio_running_app):
    from studio.models.tiny import save_tiny

    save_tiny(ModelKind.SD15, studio_running_app.models_dir / "my-folder-model")
    listed = client.predict(api_name="/list_models")
    assert ["my-folder-model  [SD1.5]", "my-folder-model"] in [list(c) for c in listed["choices"]]
    status, image, info, _ = generate(client, model="my-folder-model", seed=3)
    assert status.startswith("Done.") and parse_infotext(info)["Model"] == "my-folder-model"
    assert Image.open(image).size == (64, 64)


def test_png_info_reads_back_the_parameters(client):
    _, image, info, _ = generate(client, seed=5, prompt="a glacier, at dawn")
    text = client.predict(handle_file(str(image)), api_name="/png_info")
    assert text == info
    assert parse_infotext(text)["Prompt"] == "a glacier, at dawn"


def test_png_info_of_a_plain_png_says_it_has_no_parameters(client, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8), "red").save(plain)
    assert "no generation parameters" in client.predict(handle_file(str(plain)), api_name="/png_info")


def test_history_lists_saved_images_newest_first(client, studio_running_app):
    generate(client, seed=111)
    generate(client, seed=222)
    history = client.predict(api_name="/history")
    names = [Path(item["image"]).name for item in history]
    assert names[0].endswith("-222.png") and names[1].endswith("-111.png")
    on_disk = sorted((p.name for p in saved_outputs(studio_running_app)), reverse=True)
    assert names == on_disk[: len(names)]


def test_two_concurrent_generations_queue_and_both_get_their_seed(client):
    alone = {seed: pixels(Image.open(generate(client, seed=seed, steps=4)[1])) for seed in (21, 22)}
    jobs = {
        seed: client.submit(
            model="demo-sd15",
            prompt="snowy mountains",
            negative_prompt="",
            seed=seed,
            api_name="/generate",
            **{**SMALL, "steps": 4},
        )
        for seed in (21, 22)
    }
    for seed, job in jobs.items():
        status, _preview, gallery, infotext, used = job.result(timeout=120)
        assert status.startswith("Done.") and used == seed and f"Seed: {seed}," in infotext
        # Same pixels as when run alone: the queued runs did not share a scheduler or a generator.
        assert np.array_equal(pixels(Image.open(gallery[0]["image"])), alone[seed])


def reported_a_step(job) -> bool:
    return any("step" in str(out[0]) for out in job.outputs())


def test_stop_ends_a_long_generation_within_moments(client):
    job = client.submit(
        model="demo-sd15",
        prompt="a long one",
        negative_prompt="",
        seed=1,
        api_name="/generate",
        **{**SMALL, "steps": 150, "width": 256, "height": 256},
    )
    wait_until(lambda: reported_a_step(job), 60, "the generation reported progress")
    stopped_at = time.monotonic()
    client.predict(api_name="/stop")
    status, *_ = job.result(timeout=60)
    assert status.startswith("Stopped."), status
    assert time.monotonic() - stopped_at < 10
    # The app keeps working after a stop.
    assert generate(client, seed=4)[0].startswith("Done.")


def test_stop_when_nothing_runs_is_harmless(client):
    client.predict(api_name="/stop")
    assert generate(client, seed=6)[0].startswith("Done.")


def test_cancelling_an_api_call_stops_its_generation(client, studio_running_app):
    job = client.submit(
        model="demo-sd15",
        prompt="cancelled",
        negative_prompt="",
        seed=4242,
        api_name="/generate",
        **{**SMALL, "steps": 150, "width": 256, "height": 256},
    )
    wait_until(lambda: reported_a_step(job), 60, "the generation reported progress")
    job.cancel()
    # The next call queues behind the cancelled one; once it is done, the cancelled run has ended too.
    assert generate(client, seed=4243)[0].startswith("Done.")
    assert not list(studio_running_app.outputs_dir.glob("txt2img/*/*-4242.png")), "the cancelled run kept going"


def test_a1111_prompt_syntax_through_the_api_round_trips_in_png_info(client):
    """Weights, BREAK and prompt editing are honoured by /generate and kept as typed in the infotext."""
    typed = "(snowy mountains:1.5), [fog] BREAK a [cat:dog:0.5] ridge"
    _, weighted, info, _ = generate(client, seed=11, prompt=typed, steps=4)
    _, plain, _, _ = generate(client, seed=11, prompt="snowy mountains, fog BREAK a cat ridge", steps=4)
    assert np.abs(pixels(Image.open(weighted)) - pixels(Image.open(plain))).mean() > 0  # the syntax is read
    text = client.predict(handle_file(str(weighted)), api_name="/png_info")
    assert text == info and parse_infotext(text)["Prompt"] == typed


def test_an_embedding_named_through_the_api_is_used_and_its_hash_round_trips(client, studio_running_app):
    """A textual inversion dropped into the app's embeddings folder, named in a /generate prompt."""
    import torch
    from safetensors.torch import save_file

    save_file(
        {"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
        studio_running_app.embeddings_dir / "ApiStyle.safetensors",
    )  # 32 wide: the tiny text encoder
    _, named, _info, _ = generate(client, seed=12, prompt="snowy mountains, ApiStyle")
    _, plain, _, _ = generate(client, seed=12, prompt="snowy mountains, ")
    assert np.abs(pixels(Image.open(named)) - pixels(Image.open(plain))).mean() > 0
    parsed = parse_infotext(client.predict(handle_file(str(named)), api_name="/png_info"))
    digest = hashlib.sha256((studio_running_app.embeddings_dir / "ApiStyle.safetensors").read_bytes()).hexdigest()
    listed = client.predict(api_name="/list_embeddings")  # the Generate tab's embeddings table
    assert ["ApiStyle", "SD1.5", 2, digest[:12], ""] in listed["data"]
    assert parsed["Prompt"] == "snowy mountains, ApiStyle" and parsed["TI hashes"] == f"ApiStyle: {digest[:12]}"


# --- the endpoints' parameters, image to image and inpaint ----------------------------------------------------


def parameters(client: Client, endpoint: str) -> dict:
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"][endpoint]
    return {p["parameter_name"]: p for p in info["parameters"]}


def test_generate_needs_only_a_prompt_and_its_whole_numbers_are_integers(client):
    required = {
        endpoint: [name for name, p in parameters(client, endpoint).items() if not p["parameter_has_default"]]
        for endpoint in ("/generate", "/img2img", "/inpaint")
    }
    assert required == {
        "/generate": ["prompt"],
        "/img2img": ["image", "prompt"],
        "/inpaint": ["image", "mask", "prompt"],
    }
    generate_parameters = parameters(client, "/generate")
    for name in ("steps", "seed", "width", "height", "batch_size", "batch_count", "clip_skip", "hires_steps"):
        assert generate_parameters[name]["python_type"]["type"] == "int", name
        assert type(generate_parameters[name]["parameter_default"]) is int, name
    assert generate_parameters["model"]["python_type"]["type"] == "str"  # any name, not only the start-up list
    # Only the prompt (and a small size, so the test is quick): everything else takes its default.
    status, _preview, gallery, info, seed = client.predict(
        prompt="just a prompt", steps=2, width=64, height=64, api_name="/generate"
    )
    parsed = parse_infotext(info)
    assert status.startswith("Done.") and type(seed) is int and Path(gallery[0]["image"]).exists()
    assert (parsed["Sampler"], parsed["Schedule type"], parsed["CFG scale"]) == ("DPM++ 2M", "Karras", "7")
    assert parsed.get("Negative prompt", "") == "" and parsed["Model"] == "demo-sd15"


def test_a_hub_id_is_taken_as_a_model_name(client):
    # Offline: the Hub id is looked up (not refused as an unknown choice), and the error says what to do.
    with pytest.raises(AppError, match="'someone/some-model' is not in the local Hub cache"):
        client.predict(prompt="x", model="someone/some-model", steps=2, width=64, height=64, api_name="/generate")


def img2img(client: Client, source: Path, **overrides):
    args = {**SMALL, "steps": 10, "seed": 5, **overrides}
    status, _preview, gallery, info, _seed = client.predict(
        handle_file(str(source)), prompt="snowy mountains", api_name="/img2img", **args
    )
    assert status.startswith("Done."), status
    return pixels(Image.open(gallery[0]["image"])), parse_infotext(info)


def test_img2img_follows_the_input_image_by_denoising_strength(client, tmp_path):
    sources = [tmp_path / "a.png", tmp_path / "b.png"]
    for seed, source in zip((3, 8), sources):
        landscape(96, 64, seed=seed).save(source)  # wider than asked: "crop and resize" keeps the middle
    light = [img2img(client, source, strength=0.3, resize_mode="crop and resize") for source in sources]
    heavy = [img2img(client, source, strength=1.0, resize_mode="crop and resize")[0] for source in sources]
    assert light[0][0].shape == (64, 64, 3)
    # The tiny model's VAE is random, so no output looks like its input; but at a low strength two inputs give two
    # different images, and at full strength (the input noised away) nearly the same one.
    assert np.abs(light[0][0] - light[1][0]).mean() > 2 * np.abs(heavy[0] - heavy[1]).mean()
    assert light[0][1]["Denoising strength"] == "0.3"
    again, _ = img2img(client, sources[0], strength=0.3, resize_mode="crop and resize")
    assert np.array_equal(again, light[0][0])  # same seed, same image


def test_inpaint_repaints_the_white_of_the_mask_and_keeps_the_rest(client, tmp_path):
    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    landscape(64, 64, seed=4).save(source)
    white_left = Image.new("L", (64, 64), 0)
    white_left.paste(255, (0, 0, 32, 64))
    white_left.save(mask)
    status, _preview, gallery, info, _seed = client.predict(
        handle_file(str(source)),
        handle_file(str(mask)),
        prompt="a lake",
        masked_content="latent noise",
        mask_blur=0,
        strength=1.0,
        api_name="/inpaint",
        **{**SMALL, "steps": 4, "seed": 6},
    )
    assert status.startswith("Done."), status
    before, after = pixels(Image.open(source)), pixels(Image.open(gallery[0]["image"]))
    change = np.abs(after - before).mean(axis=(0, 2))  # per column
    assert change[:28].mean() > 5 * max(change[36:].mean(), 0.5), change.round(1)
    assert parse_infotext(info)["Masked content"] == "latent noise"


def test_hires_fix_draws_a_second_pass_at_the_larger_size(client):
    job = client.submit(
        prompt="snowy mountains",
        hires_scale=2.0,
        hires_upscaler="Latent",
        hires_steps=2,
        hires_denoise=0.5,
        api_name="/generate",
        **{**SMALL, "seed": 31},
    )
    status, _preview, gallery, info, _seed = job.result(timeout=120)
    assert status.startswith("Done."), status
    assert Image.open(gallery[0]["image"]).size == (128, 128)
    parsed = parse_infotext(info)
    assert (parsed["Size"], parsed["Hires upscale"], parsed["Hires upscaler"]) == (
        "64x64",
        "2",
        "Latent",
    )  # A1111: Size is the first pass
    assert any("hires step" in str(out[0]) for out in job.outputs())  # the progress says which pass runs
