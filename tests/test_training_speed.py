"""What a run costs besides its steps: the time per phase, flips encoded only when drawn, cheap or no samples.

In-process runs on the tiny SD1.5 model (one or two steps at 64 px); the CLI runs in this process too.
"""

import dataclasses
import json
import os
import signal
import time

import pytest
import torch

from studio.cli import main as cli_main
from studio.models.manager import ModelManager
from studio.training import cache as caching
from studio.training.buckets import make_buckets, nearest_bucket
from studio.training.order import DataOrder
from studio.training.phases import PHASES, PhaseClock
from studio.training.request import check_dataset
from tests.helpers import folders, make_config, make_photo_folder, quick_request, run_training


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("data") / "photos")


def test_phases_add_up_and_flips_are_encoded_when_first_drawn_as_up_front(photos, tmp_path):
    config = make_config(tmp_path)
    request = quick_request(photos, batch_size=2, validation_size=64)
    samples = check_dataset(request).samples
    buckets = [nearest_bucket(s.width, s.height, make_buckets(request.resolution)) for s in samples]
    order = DataOrder(buckets, batch_size=2, seed=request.seed, random_flip=True)
    request = dataclasses.replace(request, steps=order.per_epoch + 1)  # one step into the second epoch
    started = time.perf_counter()
    folder, events = run_training(request, config)
    total = time.perf_counter() - started

    (phases,) = [e for e in events if e.kind == "phases"]
    assert [e.kind for e in events[-2:]] == ["phases", "done"]
    assert list(phases.phases) == list(PHASES) and all(v >= 0 for v in phases.phases.values())
    assert phases.phases["steps"] > 0 and phases.phases["samples"] > 0 and phases.phases["export"] > 0
    assert sum(phases.phases.values()) == pytest.approx(total, abs=0.5)
    assert "steps" in phases.message and "total" in phases.message

    # Up front, each image in the orientation the first epoch draws; then only what the second epoch's
    # first batch draws that was not there yet.
    first = {(i, flipped) for batch in order.epoch(0) for i, flipped in batch}
    later = set(order.micro_batch(order.per_epoch)) - first
    assert len(first) == len(samples) and later  # the step drew a new orientation: the check means something
    (path,) = (config.outputs_dir / "training" / ".cache").glob("*/latents.safetensors")
    lazy = caching.Cache(path)
    encoded = [(samples[i], buckets[i], flipped) for i, flipped in sorted(first | later)]
    assert {k.rsplit(".", 1)[0] for k in lazy.tensors} == {caching.latent_key(*item) for item in encoded}

    # Encoded when drawn or all at once up front (as on a GPU), every latent is the same, bit for bit.
    vae = ModelManager(dataclasses.replace(config, dtype="float32")).load("demo-sd15").pipe.vae  # as the fp32 run
    eager = caching.Cache(None)
    caching.cache_latents(eager, vae.to(torch.float32), encoded, device=torch.device("cpu"))
    for item in encoded:
        key = caching.latent_key(*item)
        for a, b in zip(lazy.get(key), eager.get(key)):
            assert torch.equal(a, b), key


def test_cli_prints_the_phases_and_no_samples_draws_none(photos, tmp_path, capsys):
    handler = signal.getsignal(signal.SIGINT)  # the CLI installs its own Ctrl+C handler
    try:
        code = cli_main(
            ["train", "--data", str(photos), "--model", "demo-sd15", "--name", "quiet", "--caption", "mountains"]
            + ["--steps", "1", "--rank", "4", "--resolution", "64", "--mixed-precision", "no", "--no-samples"]
            + [str(part) for part in folders(tmp_path)]
        )
    finally:
        signal.signal(signal.SIGINT, handler)
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = tmp_path / "loras" / "quiet"
    assert out.strip().endswith(str(folder.resolve()))
    assert "Preset sd15-cpu" in err  # no GPU here: the CPU preset, not the 8 GB card's
    assert "Time per phase" in err and all(name in err for name in PHASES)
    manifest = json.loads((folder / "adapter.json").read_text())
    assert manifest["samples"] == [] and manifest["settings"]["gradient_checkpointing"] is False
    assert not list((folder / "samples").glob("*.png"))
    assert not (tmp_path / "outputs" / "training" / "quiet" / "samples").exists()


def test_phase_clock_charges_nested_time_to_the_inner_phase():
    clock = PhaseClock()
    with clock.phase("steps"):
        time.sleep(0.02)
        with clock.phase("caching"):
            time.sleep(0.05)
    seconds = clock.report()
    assert seconds["caching"] >= 0.05 and 0.02 <= seconds["steps"] < 0.05
    assert sum(seconds.values()) == pytest.approx(time.perf_counter() - clock.started, abs=0.01)


def test_samples_are_half_the_training_size_by_default(tmp_path):
    assert quick_request(tmp_path, resolution=512).sample_size() == 256
    assert quick_request(tmp_path, resolution=1024).sample_size() == 512
    assert quick_request(tmp_path, resolution=64).sample_size() == 64  # never below 64
    assert quick_request(tmp_path, resolution=512, validation_size=512).sample_size() == 512
    with pytest.raises(Exception, match="validation_size=100 must be a multiple of 64"):
        quick_request(tmp_path, validation_size=100).validate()
    # Sampling settings may change between a run and its resume.
    assert quick_request(tmp_path, samples=False).fingerprint() == quick_request(tmp_path).fingerprint()


def test_a_second_run_on_the_same_photos_encodes_nothing_and_an_edited_photo_again(tmp_path):
    from safetensors.torch import load_file

    config = make_config(tmp_path)
    photos = make_photo_folder(tmp_path / "photos")
    request = quick_request(photos, steps=2, samples=False, random_flip=False)

    def encoded(events) -> int:  # "Caching latents done/total": the last count says how many were encoded
        counts = [e.message.split()[-1] for e in events if (e.message or "").startswith("Caching latents")]
        return int(counts[-1].split("/")[1]) if counts else 0

    first, first_events = run_training(request, config)
    second, second_events = run_training(dataclasses.replace(request, name="alps-rank-again"), config)
    assert encoded(first_events) == len(check_dataset(request).samples) and encoded(second_events) == 0
    weights = [load_file(folder / "pytorch_lora_weights.safetensors") for folder in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the cache gives the same latents

    edited = next(p for p in photos.rglob("*.png"))
    mtime = edited.stat().st_mtime_ns + 10**9
    os.utime(edited, ns=(mtime, mtime))  # saved again by an editor: a new modification time
    _, third_events = run_training(dataclasses.replace(request, name="alps-edited"), config)
    assert encoded(third_events) == 1
