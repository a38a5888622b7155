"""Command-line flags of launch.py and the safety rules for exposing the app on a network."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import os
from pathlib import Path

from studio.atomic import clean_leftovers, studio_folders
from studio.config import DEVICES, DTYPES, MEMORY_MODES, ROOT, StudioConfig
from studio.web_guard import MAX_UPLOAD, UPLOAD_CLEANUP, SameOriginWrites, private_upload_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Start the Studio web app.")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="public gradio.live link (requires --auth)")
    parser.add_argument(
        "--auth", default=None, metavar="USER:PASS", help="login; or set STUDIO_AUTH to keep it out of `ps`"
    )
    parser.add_argument("--insecure", action="store_true", help="allow --share or a non-loopback --host without --auth")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--loras-dir", type=Path, default=ROOT / "loras")
    parser.add_argument("--outputs-dir", type=Path, default=ROOT / "outputs")
    parser.add_argument(
        "--embeddings-dir", type=Path, default=ROOT / "embeddings", help="textual-inversion embeddings folder"
    )
    parser.add_argument("--demo", action="store_true", help="select the offline demo model (no download)")
    parser.add_argument("--model", default=None, help="model selected at start (default: demo-sd15)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--memory-mode", choices=MEMORY_MODES, default="auto")
    parser.add_argument("--vae-tiling", action="store_true")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow .ckpt/.bin pickle checkpoints (can run code)"
    )
    return parser


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("error: --auth must be USER:PASS with both parts non-empty.")
    return user, password


FAILED_LOGIN_DELAY_SECONDS = 1.0


def throttled_login(user: str, password: str, *, delay: float = FAILED_LOGIN_DELAY_SECONDS):
    """Gradio's `auth` callable: the right login answers at once; wrong ones take turns, `delay` seconds each.

    Wrong attempts share one lock, so guessing runs at one password per `delay` whatever the number of
    parallel connections (300 guesses take 5 minutes instead of under a second), while the owner logging in
    is never held up. A coroutine function, so the wait does not block gradio's event loop.
    """
    lock = asyncio.Lock()

    async def check(given_user: str, given_password: str) -> bool:
        user_ok = hmac.compare_digest(given_user.encode(), user.encode())
        password_ok = hmac.compare_digest(given_password.encode(), password.encode())
        if user_ok and password_ok:
            return True
        async with lock:
            await asyncio.sleep(delay)
        return False

    return check


def exposure_problem(*, host: str, share: bool, auth, insecure: bool) -> str | None:
    """Why this launch would expose the app without a login, or None when it is safe."""
    if auth is not None or insecure:
        return None
    if share:
        return "--share makes the app public on the internet; add --auth USER:PASS (or --insecure if you mean it)."
    if not is_loopback(host):
        return (
            f"--host {host} lets other machines use your GPU and files; add --auth USER:PASS "
            "(or --insecure if you mean it)."
        )
    return None


def _first_model(models_dir: Path) -> str | None:
    """The first checkpoint or diffusers folder in the models folder, as A1111 selects at start."""
    if not models_dir.is_dir():
        return None
    for path in sorted(models_dir.iterdir(), key=lambda p: p.name.lower()):
        if path.suffix.lower() == ".safetensors" or (path / "model_index.json").exists():
            return path.name
    return None


def config_from_args(args: argparse.Namespace) -> StudioConfig:
    if args.model:
        default_model = args.model
    elif args.demo:
        default_model = "demo-sd15"
    else:
        default_model = _first_model(args.models_dir) or "demo-sd15"
    return StudioConfig(
        models_dir=args.models_dir,
        loras_dir=args.loras_dir,
        outputs_dir=args.outputs_dir,
        embeddings_dir=args.embeddings_dir,
        device=args.device,
        dtype=args.dtype,
        memory_mode=args.memory_mode,
        vae_tiling=args.vae_tiling,
        allow_pickle=args.allow_pickle,
        default_model=default_model,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    auth = parse_auth(args.auth or os.environ.get("STUDIO_AUTH"))
    problem = exposure_problem(host=args.host, share=args.share, auth=auth, insecure=args.insecure)
    if problem:
        raise SystemExit(f"error: {problem}")
    config = config_from_args(args)
    for folder in (config.loras_dir, config.outputs_dir, config.models_dir):
        folder.mkdir(parents=True, exist_ok=True)
    clean_leftovers(studio_folders(config))  # half-written files and swaps a killed earlier run left

    # Gradio keeps uploads in its temp folder; unless the user chose one, use a private folder per port that a
    # restart empties (a killed run's uploads would otherwise stay on disk forever).
    if "GRADIO_TEMP_DIR" not in os.environ:
        os.environ["GRADIO_TEMP_DIR"] = str(private_upload_folder(args.port))

    # Imported here so `--help` and flag errors answer instantly.
    from starlette.middleware import Middleware

    from studio.engine import Studio
    from studio.ui.app import build_app, launch_options

    # The page is served first; torch and diffusers load in the background (the engine), not before.
    studio = Studio(config, lazy=True)
    app = build_app(studio)
    app.delete_cache = UPLOAD_CLEANUP  # read by launch(); a gr.Blocks setting the UI need not know about
    app.launch(
        prevent_thread_lock=True,  # returns once the server answers, so the engine starts after it
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=None if auth is None else throttled_login(*auth),
        footer_links=["api", "settings"],
        max_file_size=MAX_UPLOAD,
        app_kwargs={"middleware": [Middleware(SameOriginWrites)]},
        **launch_options(studio),
    )
    studio.start_engine()
    app.block_thread()
