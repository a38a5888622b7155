"""Write files and folders all at once or not at all: build beside the target, then rename.

A crash, a full disk or a killed process never leaves a half-written image, checkpoint or adapter under its
final name (the model picker and the LoRA library would list it). Temporary names are hidden (`.name...`), so
scans of a folder never pick them up.

    with atomic_file(folder / "x.png") as tmp:
        image.save(tmp, format="PNG")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

# A staging folder untouched this long was left by a killed export, not a running one (exports take seconds).
STALE_STAGING_SECONDS = 3600


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; when the block succeeds it replaces `path`, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; saved files are user data, readable like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def staging_folder(target: Path) -> Path:
    """An empty folder named like `target`, inside a hidden staging folder beside it, to build `target` in.

    Rename it to `target` when complete and remove its parent (`.<name>.tmp-*`). Staging folders a killed
    process left behind for the same name are removed first.
    """
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    folder = staging / target.name
    folder.mkdir()
    return folder


def remove_stale_staging(target: Path, *, max_age_seconds: float = STALE_STAGING_SECONDS) -> list[Path]:
    """Delete hidden staging folders of `target` untouched for `max_age_seconds` (left by a killed process)."""
    removed = []
    for staging in target.parent.glob(f".{target.name}.tmp-*"):
        if staging.is_dir() and time.time() - staging.stat().st_mtime > max_age_seconds:
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def make_readable(folder: Path) -> None:
    """Temporary files and folders are created private (0600/0700); finished ones are ordinary user data."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
