"""`python tests/studio_paused_in_export.py <studio CLI arguments>`: `python -m studio ...` that stops halfway
through writing an adapter, so a test can kill it at that exact point (test-only; Studio itself has no such hook).

Every weights file of an adapter export goes through safetensors' `save_file`. The first file written below
$STUDIO_TEST_PAUSE_IN (a loras folder) is written normally; when the second one is about to be written, the first
is complete on disk and the adapter is not: the process then creates $STUDIO_TEST_PAUSED and waits to be killed.
Files elsewhere (latent cache, checkpoints under outputs/) are written normally.
"""

import os
import runpy
import signal
from pathlib import Path

import safetensors.torch

PAUSE_IN = Path(os.environ["STUDIO_TEST_PAUSE_IN"]).resolve()
PAUSED = Path(os.environ["STUDIO_TEST_PAUSED"])
_save_file = safetensors.torch.save_file
_written_below_pause_in = []


def save_file(tensors, filename, metadata=None):
    if PAUSE_IN in Path(filename).resolve().parents:
        if _written_below_pause_in:
            PAUSED.write_text(f"paused before writing {filename}\n")
            while True:
                signal.pause()  # until the test's SIGKILL
        _written_below_pause_in.append(filename)
    return _save_file(tensors, filename, metadata=metadata)


# Before Studio is imported: its modules bind `save_file` when they import it.
safetensors.torch.save_file = save_file
runpy.run_module("studio", run_name="__main__", alter_sys=True)
