"""Write files and folders all at once or not at all: build beside the target, then rename.

A crash, a full disk or a killed process never leaves a half-written image, checkpoint or adapter under its
final name (the model picker and the LoRA library would list it). Temporary names are hidden (`.name...`), so
scans of a folder never pick them up.

    with atomic_file(folder / "x.png") as tmp:
        image.save(tmp, format="PNG")

    built = staging_folder(target)      # write the new version in here
    replace_folder(built, target)       # then swap it in; some complete version is always on disk
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from studio.errors import DiskFullError, FolderNotWritableError

# A staging folder untouched this long was left by a killed export, not a running one (exports take seconds).
STALE_STAGING_SECONDS = 3600
log = logging.getLogger(__name__)
# `.<name>.old-<pid>`: the previous version of a folder during replace_folder (see there).
# `.<name>.<pid>-<random>.tmp`: a file being written (atomic_file); `.<name>.tmp-<pid>-<random>/`: a folder being
# built (staging_folder). Names from before the pid was added have no `<pid>-`.
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$")  # mkstemp: 8 random characters
_STAGING = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<pid>\d+)-)?[a-z0-9_]{8}$")
_OLD_VERSION = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")
# Threads of one process take turns, so a leftover named with our own pid is never a swap in progress.
_REPLACE_LOCK = threading.RLock()


# No room: the disk is full, the user's quota is used up, or a file-size limit (ulimit -f) was reached.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def disk_full_as_error(folder: Path) -> Iterator[None]:
    """Turn "No space left on device" (and quota / size limits) inside the block into one DiskFullError naming
    the folder, instead of a traceback. Callers remove what they half-wrote (atomic_file and staging folders do)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        # safetensors (Rust) reports I/O failures as its own error: "... I/O error: File too large (os error 27)".
        code = error.errno if isinstance(error, OSError) else _rust_os_error(str(error))
        if code not in _NO_ROOM:
            raise
        raise DiskFullError(
            f"No room left to write in {folder} ({os.strerror(code)}); free some disk space or pick "
            "another folder, then try again. Nothing half-written was kept."
        ) from error


def _rust_os_error(message: str) -> int | None:
    match = re.search(r"\(os error (\d+)\)", message)
    return int(match[1]) if match else None


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before long work when the disk holding `folder` has less than `needed` bytes free (os.statvfs)."""
    folder = Path(folder)
    probe = next((p for p in [folder, *folder.parents] if p.exists()), folder)
    try:
        stats = os.statvfs(probe)
    except (OSError, AttributeError):  # Windows has no statvfs: the write itself will tell
        return
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise DiskFullError(
            f"Only {free / 1024**2:,.0f} MB free on the disk holding {folder}; {what} needs about "
            f"{needed / 1024**2:,.0f} MB. Free some space or pick another folder."
        )


def check_writable(folder: Path, what: str, *, probe_bytes: int = 64 * 1024) -> None:
    """Refuse before long work (training) when `folder` cannot take a file: read-only, not a folder, or no room
    (a small probe file is written, then dropped: O_TMPFILE leaves no name behind)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with disk_full_as_error(folder), tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * probe_bytes)
            probe.flush()
    except DiskFullError:
        raise
    except OSError as error:
        raise FolderNotWritableError(
            f"Cannot write to {what} {folder} ({error.strerror or error}); make it writable or pick another folder."
        ) from error


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; when the block succeeds it replaces `path`, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name tells a later clean-up (`clean_leftovers`) whether the writer is still alive.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    try:
        with disk_full_as_error(path.parent):
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
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))
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


def replace_folder(
    built: Path, target: Path, *, overwrite: bool = True, after_step: Callable[[str], None] | None = None
) -> Path:
    """Put the complete folder `built` at `target`, replacing an older version without ever losing both.

    1. "aside":    the old `target` is renamed to the hidden `.<name>.old-<pid>` beside it;
    2. "in-place": `built` is renamed to `target`;
    3. "cleaned":  the old version is deleted.
    A process killed between 1 and 2 leaves the old version only under its hidden name: the next replace or scan
    (`restore_replaced`) renames it back. Killed between 2 and 3, the hidden copy is a leftover and is deleted then.
    An exception between 1 and 2 puts the old version back at once. `after_step(name)` runs after each step
    (tests stop the process there). With `overwrite=False` an existing `target` raises FileExistsError.
    """
    built, target = Path(built), Path(target)
    report = after_step or (lambda step: None)
    with _REPLACE_LOCK:
        restore_replaced(target)
        if not target.exists():
            os.rename(built, target)
            report("in-place")
            return target
        if not overwrite:
            raise FileExistsError(f"{target} already exists")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        try:
            report("aside")
            os.rename(built, target)
        except BaseException:
            if not target.exists():
                os.rename(old, target)
            raise
        try:
            report("in-place")
        finally:
            shutil.rmtree(old)
        report("cleaned")
    return target


def restore_replaced(target: Path) -> list[Path]:
    """Finish what a killed `replace_folder(..., target)` left; returns the hidden folders it handled.

    An old version with nothing at `target` is the only copy: it is renamed back. One beside a complete `target` is
    a leftover: it is deleted. Old versions of a process that is still running are left alone (mid-swap).
    """
    target = Path(target)
    handled = []
    with _REPLACE_LOCK:
        for old in sorted(target.parent.glob(f".{glob.escape(target.name)}.old-*")):
            match = _OLD_VERSION.match(old.name)
            if not match or match["name"] != target.name or not old.is_dir() or _running(int(match["pid"])):
                continue
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(old, target)
            handled.append(old)
    return handled


def restore_replaced_in(parent: Path) -> list[Path]:
    """`restore_replaced` for every folder in `parent` (a scan of loras/ calls it before listing).

    A version that cannot be put back (a read-only folder) is logged, not raised: the listing must still work, and
    the next `replace_folder` of that name raises the error where the user acts on it.
    """
    parent = Path(parent)
    handled = []
    for name in sorted({m["name"] for p in parent.iterdir() if (m := _OLD_VERSION.match(p.name))}):
        try:
            handled += restore_replaced(parent / name)
        except OSError as error:
            log.warning("Could not restore the previous version of %s: %s", parent / name, error)
    return handled


def clean_leftovers(folders, *, max_age_seconds: float = STALE_STAGING_SECONDS) -> list[Path]:
    """Tidy what killed processes left in Studio's folders (at start-up, and before CLI commands that write).

    - `.name.old-<pid>` folders: `restore_replaced` (the only copy is put back, a leftover beside its target goes);
    - temporary files and staging folders of a process that is gone (or, without a pid, untouched for
      `max_age_seconds`) are deleted when their target exists, since that is a complete copy. With no target they
      are the only copy of an unfinished write and are kept (logged), still hidden from every scan.
    Returns the paths deleted or restored. Errors (a read-only folder) are logged, never raised: start-up goes on.
    """
    handled: list[Path] = []
    for folder in folders:
        for parent, dirs, files in os.walk(folder):
            parent = Path(parent)
            try:
                if any(_OLD_VERSION.match(d) for d in dirs):
                    handled += restore_replaced_in(parent)
                for name in [*files, *dirs]:
                    match = (_TEMP_FILE if name in files else _STAGING).match(name)
                    if match and _abandoned(parent / name, match["pid"], max_age_seconds):
                        handled += _drop_if_copied(parent / name, parent / match["name"])
            except OSError as error:
                log.warning("Could not clean up %s: %s", parent, error)
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # never walk into hidden folders
    return handled


def studio_folders(config) -> list[Path]:
    """The folders of a StudioConfig (or CLI arguments) that Studio writes into and `clean_leftovers` tidies."""
    names = ("outputs_dir", "loras_dir", "models_dir", "embeddings_dir")
    return [Path(folder) for name in names if (folder := getattr(config, name, None)) is not None]


def _abandoned(path: Path, pid: str | None, max_age_seconds: float) -> bool:
    if pid is not None:
        return int(pid) != os.getpid() and not _running(int(pid))
    return time.time() - path.lstat().st_mtime > max_age_seconds


def _drop_if_copied(leftover: Path, target: Path) -> list[Path]:
    if not target.exists():
        log.warning(
            "Kept %s: an unfinished write of %s, and its only copy; delete it if you do not need it.",
            leftover,
            target.name,
        )
        return []
    if leftover.is_dir() and not leftover.is_symlink():
        shutil.rmtree(leftover)
    else:
        leftover.unlink()
    return [leftover]


def _running(pid: int) -> bool:
    """Whether another live process has this pid (a swap it started may still be going on)."""
    if pid == os.getpid():
        return False  # under _REPLACE_LOCK no swap of ours is in progress
    if os.name == "nt":
        # os.kill(pid, 0) would end the process on Windows. A swap takes microseconds: treat old versions as
        # abandoned, at the cost of a (very unlikely) clash with a concurrent swap of the same name.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
