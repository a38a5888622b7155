"""`python -m studio <args>` in a fresh child process forked from one warm process.

Most of a small CLI test's time is the child importing torch, diffusers, transformers and peft (3-5 s on 2 cores),
paid again by every command. The warm process pays it once per test session, then forks a child per command:
the child gets the command's folder, arguments, stdin, stdout and stderr as `python -m studio` would, runs the
same `studio.cli.main`, and its exit code is the command's. Nothing is mocked; the child only skips the imports.

Used by `tests.helpers.run_cli` when a command runs in the tests' default environment. A command with its own
environment variables runs cold, because huggingface_hub and others read variables such as HF_HOME when they are
imported. Tests of what a command imports (tests/test_cli_fast_errors.py) always run cold.

The parent never runs a tensor operation, so no OpenMP thread pool exists when it forks (a pool does not survive
a fork); each child starts its own.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.app_server import ROOT

# What the CLI's commands import lazily: imported once in the warm process.
_WARM_IMPORTS = """
import torch, transformers, peft, accelerate, safetensors.torch
from diffusers import (
    AutoencoderKL, DDPMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
    StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline, UNet2DConditionModel,
)
import studio.cli, studio.generation.run, studio.generation.hires, studio.models.manager, studio.training.trainer
import studio.evaluation.runner, studio.evaluation.synthetic, studio.lora.plot, studio.hub.adapters
"""


def _serve() -> None:
    """The warm process: import, then fork one child per request read from stdin (one JSON line each)."""
    exec(_WARM_IMPORTS, {})
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # children's output goes to their own files, never here
    print(json.dumps({"ready": True}), file=replies)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(request)  # never returns
        print(json.dumps({"pid": pid}), file=replies)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=replies)


def _run_child(request: dict) -> None:
    code = 1
    try:
        os.setsid()  # its own process group, as a fresh process launched by a shell
        os.chdir(request["cwd"])
        streams = ((os.devnull, os.O_RDONLY), (request["stdout"], os.O_WRONLY), (request["stderr"], os.O_WRONLY))
        for fd, (path, mode) in enumerate(streams):  # stdin, stdout, stderr
            os.dup2(os.open(path, mode), fd)
        sys.stdin = open(0, closefd=False)
        sys.argv = [str(ROOT / "studio" / "__main__.py"), *request["args"]]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from studio.cli import main

        code = main(request["args"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class WarmCli:
    """The warm process, started on first use and stopped when the test session ends."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from tests.warm_cli import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        ready = json.loads(self._process.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise RuntimeError("the warm CLI process did not start; see its stderr above")
        atexit.register(self.close)

    def run(self, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        with self._lock, tempfile.TemporaryDirectory(prefix="warm-cli-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch(), err.touch()
            request = {"args": args, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            pid = json.loads(self._process.stdout.readline())["pid"]
            timed_out = threading.Event()

            def kill():
                timed_out.set()
                os.killpg(pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                returncode = json.loads(self._process.stdout.readline())["returncode"]
            finally:
                timer.cancel()
            command = [sys.executable, "-m", "studio", *args]
            if timed_out.is_set():
                raise subprocess.TimeoutExpired(command, timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess(command, returncode, out.read_text(), err.read_text())

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait(timeout=30)


_warm: WarmCli | None = None


def warm_cli(env: dict[str, str]) -> WarmCli | None:
    """The session's warm process when `env` is the environment it runs in, else None (run the command cold)."""
    global _warm
    if os.environ.get("STUDIO_TESTS_COLD_CLI") == "1":
        return None
    env = {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}  # pytest changes it at every test
    if _warm is None:
        _warm = WarmCli(env)
    return _warm if env == _warm.env else None
