"""Shared fixtures: tiny real pipelines saved to disk, a StudioConfig with its own folders, the launched app and a
gradio_client `client` on it. Shared helper functions live in tests/helpers.py.

Everything runs offline on the CPU: no test may download anything.

The `slow` marker (pyproject.toml) is for process-heavy tests: `python -m pytest -m "not slow"` is the fast inner
loop. Tests that use the launched app or a browser are marked here automatically; tests that run the CLI or training
in a child process, or full-size models, are marked in their modules.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from studio.config import StudioConfig  # noqa: E402
from studio.models.kinds import ModelKind  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    """A tiny SD1.5-shaped diffusers folder (safetensors), saved once per test session."""
    from studio.models.tiny import save_tiny

    return save_tiny(ModelKind.SD15, tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    from studio.models.tiny import save_tiny

    return save_tiny(ModelKind.SDXL, tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture
def studio_config(tmp_path):
    """A config whose models/loras/outputs folders are empty temporary folders.

    fp32, whatever the CPU: in-process tests compare two computations of the same image (fused vs unfused, merged
    vs live) to float rounding. The automatic precision (bf16 on CPUs with native bf16) is what the launched app
    and the CLI tests run, and `test_models` checks the choice itself.
    """
    for name in ("models", "loras", "outputs"):
        (tmp_path / name).mkdir()
    return StudioConfig(
        models_dir=tmp_path / "models",
        loras_dir=tmp_path / "loras",
        outputs_dir=tmp_path / "outputs",
        device="cpu",
        dtype="float32",
    )


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIP-shaped feature model folder for evaluations."""
    from tests.builders import save_tiny_feature_model

    return save_tiny_feature_model(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture
def data_dir(tmp_path):
    """A data folder of 6 noise images (48 px) to evaluate against."""
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(6):
        Image.effect_noise((48, 48), 20 + 10 * i).convert("RGB").save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def studio_running_app(tmp_path_factory):
    """One real app (`launch.py --demo` in a child process) shared by every UI test of the session.

    Yields a `tests.app_server.RunningApp` (url, models_dir, loras_dir, outputs_dir, log, process).
    """
    from tests.app_server import running_app

    with running_app(tmp_path_factory.mktemp("studio-app")) as app:
        yield app


@pytest.fixture(scope="session")
def studio_app(studio_running_app):
    """The URL ("http://127.0.0.1:<port>/") of the shared running app, for gradio_client or a browser."""
    return studio_running_app.url


@pytest.fixture(scope="module")
def client(studio_app):
    """A gradio_client Client on the shared launched app, one per test module (one Gradio session)."""
    from tests.helpers import app_client

    return app_client(studio_app)


# Fixtures that start a process (the app, Chromium): a test that uses one, even through another fixture, is slow.
SLOW_FIXTURES = {"studio_running_app", "browser_context"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def full_size_sd15(tmp_path_factory):
    """The full-size SD1.5 architecture (860M-parameter UNet, CLIP-L, VAE; random weights) as a diffusers folder,
    built once for the training and the image-input tests."""
    import torch

    from studio.models.kinds import ModelKind
    from tests.builders import build_random_pipeline

    folder = tmp_path_factory.mktemp("models") / "sd15-full"
    build_random_pipeline(ModelKind.SD15, torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder
