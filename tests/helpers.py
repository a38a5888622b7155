"""Helpers shared by tests. Test modules never import each other: what two of them need lives here (or, as a
fixture, in conftest.py; the launched app is tests/app_server.py, the browser recipe tests/browser.py).

- pixels, mean_abs_diff: compare images
- wait_until: wait for a condition with a timeout (never a fixed sleep)
- app_client: a gradio_client session on a launched app (the `client` fixture in conftest.py is one on the shared app)
- run_cli, cli_command, cli_env, folders: `python -m studio ...` in a child process, as a user runs it
- live_adapter, add_lora, render: tiny random LoRAs (peft layers on the tiny pipelines) and their files
- png_header_only, landscape, make_photo_folder: image files and a training folder as users have them
- make_config, quick_request, run_training, draw, TRAIN_FORM: short training runs, in-process and through the UI

Heavy imports (torch, peft, studio.training) happen inside the functions that need them.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import ExifTags, Image

from studio.models.kinds import ModelKind

ROOT = Path(__file__).resolve().parents[1]


# --- images ------------------------------------------------------------------------------------------------


def pixels(image) -> np.ndarray:
    """RGB pixels as int16, so differences of two images do not wrap around."""
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def mean_abs_diff(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


# --- waiting -----------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout: float, what: str, *, interval: float = 0.01):
    """Poll `predicate` until it returns something truthy (returned); fail saying `what` did not happen in time.

    `predicate` may raise (an AssertionError saying a child died, say): that ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting until {what}")
        time.sleep(interval)


# --- the launched app --------------------------------------------------------------------------------------


def app_client(url: str, **kwargs):
    """A gradio_client Client (a new Gradio session) on a launched app; the `client` fixture is one on the shared
    app. Extra sessions, or a client on a test's own app, come from here."""
    from gradio_client import Client

    return Client(url, verbose=False, **kwargs)


# --- the CLI in a child process ----------------------------------------------------------------------------


def cli_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a CLI child: this one, offline, no telemetry, no developer token; `extra` on top
    (a value of None removes the variable)."""
    from tests.app_server import app_env

    env = app_env({"PYTHONPATH": str(ROOT)})
    env.pop("HF_TOKEN", None)  # a developer's own Hub login must not change what tests see
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "studio", *map(str, args)]


def run_cli(*args, cwd: Path = ROOT, env: dict[str, str | None] | None = None, timeout: float = 300):
    """Run `python -m studio <args>` to the end; the CompletedProcess with text stdout and stderr.

    In the tests' default environment the child is forked from a warm process that has done the imports
    (tests/warm_cli.py); with `env` it is a cold `python -m studio`."""
    from tests.warm_cli import warm_cli

    warm = warm_cli(cli_env()) if env is None else None  # a command with its own environment never starts it
    if warm is not None:
        return warm.run([str(a) for a in args], cwd, timeout)
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        env=cli_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def run_cli_on_two_processes(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m studio <args>` on 2 processes, as `accelerate launch` starts them on CPUs: torchrun and gloo."""
    import contextlib
    import os
    import signal

    from tests.app_server import free_port

    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
        + ["--master_port", str(free_port()), *cli_command(*args)[1:]],  # `-m studio ...` without the interpreter
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
        env=cli_env({"OMP_NUM_THREADS": "1"}),
    )
    try:
        stdout, stderr = launcher.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)  # the workers too, should the launcher hang or time out
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr)


def folders(root: Path) -> list:
    """The CLI flags for models/, loras/ and outputs/ under `root`."""
    return ["--models-dir", root / "models", "--loras-dir", root / "loras", "--outputs-dir", root / "outputs"]


# --- tiny LoRAs --------------------------------------------------------------------------------------------

RANK, ALPHA = 4, 8.0
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


def text_encoders(kind: ModelKind) -> list[str]:
    return ["text_encoder", "text_encoder_2"] if kind is ModelKind.SDXL else ["text_encoder"]


def render(pipe) -> np.ndarray:
    import torch

    return pipe(
        "satellite image of mountains",
        num_inference_steps=2,
        width=32,
        height=32,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    ).images[0]


def live_adapter(kind: ModelKind, seed: int = 1, rank: int = RANK, alpha: float = ALPHA):
    """A tiny pipeline with a random (non-zero) peft LoRA on the UNet and the text encoders, and its `LoraWeights`.

    Also the factory of LoRA files for the other LoRA tests (`weights` of the returned pair).
    """
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from studio.lora.files import LoraWeights
    from studio.models.tiny import build_tiny

    pipe = build_tiny(kind)
    pipe.set_progress_bar_config(disable=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=UNET_TARGETS, init_lora_weights=False)
        pipe.unet.add_adapter(config)
        for name in text_encoders(kind):
            config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TEXT_TARGETS, init_lora_weights=False)
            # transformers' own add_adapter wants a newer peft; inject the adapter with peft directly.
            inject_adapter_in_model(config, getattr(pipe, name))
    layers = {name: get_peft_model_state_dict(getattr(pipe, name)) for name in ["unet", *text_encoders(kind)]}
    weights = LoraWeights(kind=kind, layers=layers, alphas={name: alpha for name in layers})
    return pipe, weights


def add_lora(loras_dir: Path, name: str, kind: ModelKind = ModelKind.SD15, seed: int = 1, kohya: bool = False):
    """Write a random tiny LoRA into `loras_dir`: a diffusers folder `<name>/`, or a kohya `<name>.safetensors`."""
    from studio.lora.files import save_diffusers_lora, save_kohya_lora

    _pipe, weights = live_adapter(kind, seed=seed)
    if kohya:
        save_kohya_lora(weights, loras_dir / f"{name}.safetensors", metadata={})
    else:
        save_diffusers_lora(weights, loras_dir / name)
    return weights


# --- image files and training folders ----------------------------------------------------------------------


def png_header_only(path: Path, width: int, height: int) -> None:
    """A ~60-byte PNG that declares width x height: what a decompression bomb looks like to a header parser."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(data)


def landscape(width: int, height: int, seed: int) -> Image.Image:
    """Sky gradient, a mountain ridge with snow, noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    ridge = 0.45 + 0.15 * np.sin(x * (6 + seed) + seed) + 0.05 * np.sin(x * 31)
    ground = y > ridge
    image = np.empty((height, width, 3))
    image[..., 0] = np.where(ground, 90 + 60 * y, 120 + 100 * y)
    image[..., 1] = np.where(ground, 80 + 50 * y, 160 + 60 * y)
    image[..., 2] = np.where(ground, 70 + 30 * y, 230 - 20 * y)
    snow = ground & (y < ridge + 0.08)
    image[snow] = 235
    image += rng.normal(0, 8, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def make_photo_folder(folder: Path) -> Path:
    """8 usable photos (jpg/png/webp, nested, EXIF-rotated, grayscale, wide) and 4 files that must be skipped."""
    (folder / "north").mkdir(parents=True)
    captions = {}
    for i, (name, size) in enumerate(
        [
            ("peak-0.jpg", (96, 96)),
            ("peak-1.png", (96, 96)),
            ("peak-2.webp", (128, 96)),
            ("north/ridge-3.jpg", (96, 128)),
            ("north/ridge-4.png", (160, 80)),
        ]
    ):
        landscape(*size, seed=i).save(folder / name, quality=92)
        captions[name] = f"satellite image of mountains, ridge {i}"
    # EXIF orientation 6: stored 128x96, shown (and trained) 96x128.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    landscape(128, 96, seed=5).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=92)
    captions["rotated.jpg"] = "satellite image of mountains, rotated"
    landscape(96, 96, seed=6).convert("L").save(folder / "gray.png")
    (folder / "gray.txt").write_text("grayscale satellite image of mountains\n", encoding="utf-8")
    landscape(96, 96, seed=7).save(folder / "north" / "uncaptioned.jpg")  # gets the default caption
    # What must be skipped: a truncated JPEG, a 0-byte PNG, a text file named .webp, a metadata line in error.
    good = folder / "peak-0.jpg"
    (folder / "corrupt.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.webp").write_text("not an image", encoding="utf-8")
    lines = [json.dumps({"file_name": name, "text": text}) for name, text in captions.items()]
    lines.insert(2, '{"file_name": "peak-1.png", "text": ')  # broken line
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# --- short training runs -----------------------------------------------------------------------------------


def make_config(root: Path):
    """A CPU StudioConfig with models/, loras/ and outputs/ under `root` (created)."""
    from studio.config import StudioConfig

    for name in ("models", "loras", "outputs"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return StudioConfig(
        models_dir=root / "models", loras_dir=root / "loras", outputs_dir=root / "outputs", device="cpu"
    )


def quick_request(photos: Path, **changes):
    """A TrainingRequest of a few steps at 64 px with a high learning rate: the adapter visibly changes the image."""
    from studio.training.request import TrainingRequest

    values = dict(
        data=photos,
        model="demo-sd15",
        name="alps",
        caption="mountains",
        trigger="mtn",
        steps=4,
        rank=4,
        alpha=2.0,
        learning_rate=5e-2,
        resolution=64,
        batch_size=2,
        validation_steps=2,
        checkpoint_every=0,
        validation_prompt="mtn, satellite image of mountains",
        # fp32, whatever the CPU: the tests redraw samples in fp32 and compare to one level. The automatic choice
        # (bf16 on CPUs with native bf16) is unit-tested in test_training_presets and run by the app and CLI tests.
        mixed_precision="no",
    )
    return TrainingRequest(**{**values, **changes})


def run_training(request, config, stop_after_steps: int | None = None):
    """Train in-process; with `stop_after_steps`, press Stop once that many steps were reported (0: at once).

    Returns (the adapter folder, the events)."""
    from studio.training.trainer import train

    events = []

    def should_stop():
        return stop_after_steps is not None and sum(e.kind == "step" for e in events) >= stop_after_steps

    folder = train(request, config, on_event=events.append, should_stop=should_stop)
    return folder, events


def draw(pipe, sample_png: Path) -> Image.Image:
    """Redraw a validation image from the settings in its infotext, on `pipe`."""
    import torch

    from studio.generation.infotext import parse_infotext, read_infotext
    from studio.generation.schedulers import make_scheduler

    info = parse_infotext(read_infotext(sample_png))
    size = int(info["Size"].split("x")[0])
    pipe.scheduler = make_scheduler("Euler", dict(pipe.scheduler.config))
    generator = torch.Generator("cpu").manual_seed(int(info["Seed"]))
    return pipe(
        info["Prompt"],
        num_inference_steps=int(info["Steps"]),
        guidance_scale=float(info["CFG scale"]),
        height=size,
        width=size,
        generator=generator,
    ).images[0]


# The Train tab's form (the /train and /check_training_data API arguments besides data and name): a short run.
TRAIN_FORM = dict(
    model="demo-sd15",
    caption="mountains",
    caption_column="text",
    trigger="mtn",
    steps=3,
    rank=4,
    alpha=2,
    learning_rate=1e-3,
    resolution=64,
    batch_size=2,
    epochs=0,
    gradient_accumulation=1,
    lr_scheduler="constant_with_warmup",
    warmup_steps=0,
    train_text_encoder=False,
    gradient_checkpointing=False,
    mixed_precision="auto",
    optimizer="auto",
    buckets=True,
    random_flip=True,
    seed=42,
    min_snr_gamma=0,
    noise_offset=0,
    validation_prompt="",
    validation_every=2,
    checkpoint_every=0,
)


# --- adapters as the trainer writes them --------------------------------------------------------------------


def write_trained_adapter(tmp_path: Path, base: str = "stable-diffusion-v1-5/stable-diffusion-v1-5") -> Path:
    """`tmp_path/loras/alps` as the trainer writes it (with a local README a push must leave alone); returns loras/."""
    import torch
    from safetensors.torch import save_file

    from studio.generation.infotext import png_info

    folder = tmp_path / "loras" / "alps"
    (folder / "samples").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    save_file(
        {"unet.down.lora_A.weight": torch.randn(4, 64, generator=generator)},
        folder / "pytorch_lora_weights.safetensors",
        metadata={"format": "pt"},
    )
    save_file({"lora_unet_down.alpha": torch.tensor(4.0)}, folder / "alps.safetensors")
    infotext = "aid_mountain, snowy ridge\nNegative prompt: blurry\nSteps: 2, Seed: 42, Size: 8x8"
    Image.new("RGB", (8, 8), "white").save(folder / "samples" / "s0.png", pnginfo=png_info(infotext))
    manifest = {
        "name": "alps",
        "base_model": base,
        "base_kind": "sd15",
        "trigger_words": ["aid_mountain"],
        "rank": 4,
        "alpha": 4,
        "text_encoder": False,
        "blend": None,
        "settings": {"steps": 500, "learning_rate": 0.0001, "data": "/home/alice/datasets/aid-mountains"},
        "samples": [
            {
                "file": "samples/s0.png",
                "prompt": "aid_mountain, snowy ridge",
                "negative_prompt": "blurry",
                "seed": 42,
                "step": 500,
            }
        ],
        "created": "2026-11-25T03:00:00Z",
        "studio_version": "0.1.0",
    }
    (folder / "adapter.json").write_text(json.dumps(manifest))
    (folder / "README.md").write_text("local card\n")
    (folder / "checkpoint-100").mkdir()  # training leftovers are never uploaded
    (folder / "checkpoint-100" / "optimizer.safetensors").write_bytes(b"x" * 10)
    return tmp_path / "loras"


def a1111_layers(component, name, module) -> bool:
    import torch

    if component == "unet":
        return isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and (
            ".transformer_blocks." in name or name.endswith(("proj_in", "proj_out", "conv1", "conv2", "time_emb_proj"))
        )
    return isinstance(module, torch.nn.Linear) and ".layers." in name


def a1111_file(kind, path, *, te1_prefix=None, select=a1111_layers, extra=(), rank: int = 4):
    """Layer names as kohya sd-scripts / A1111 / ComfyUI write them, from the tiny pipeline's own module names."""
    import torch
    from safetensors.torch import save_file

    from studio.models.tiny import build_tiny

    pipe = build_tiny(kind)
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_" if kind is ModelKind.SD15 else "lora_te1_"}
    if kind is ModelKind.SDXL:
        prefixes["text_encoder_2"] = "lora_te2_"
    if te1_prefix:
        prefixes["text_encoder"] = te1_prefix
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for component, prefix in prefixes.items():
        for name, module in getattr(pipe, component).named_modules():
            if not (select(component, name, module) or (component, name) in extra):
                continue
            # transformers 5's CLIPTextModel has no `text_model.` level; the files have it.
            path_in_file = name if name.startswith("text_model.") or component == "unet" else f"text_model.{name}"
            key = prefix + path_in_file.replace(".", "_")
            weight = module.weight
            kernel = weight.shape[2:]
            down = torch.randn(rank, weight.shape[1], *kernel, generator=generator) * 0.3
            up = torch.randn(weight.shape[0], rank, *[1] * len(kernel), generator=generator) * 0.3
            tensors[f"{key}.lora_down.weight"] = down.half()
            tensors[f"{key}.lora_up.weight"] = up.half()
            tensors[f"{key}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
    save_file(tensors, str(path), metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2)})
    return path
