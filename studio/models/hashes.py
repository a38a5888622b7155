"""File hashes for A1111's "Model hash", cached the way A1111 caches them: by path, size and modification time.

Hashing a checkpoint reads the whole file (2-7 GB), which took a second or more of every CLI run. The cache is a
small JSON file (`.model-hashes.json` in the models folder); an entry counts only while the file's size and
modification time are unchanged, so a replaced checkpoint is hashed again. A cache that cannot be read or written
(a read-only folder) only costs the hashing time, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import Future
from pathlib import Path

from studio.atomic import write_bytes

log = logging.getLogger(__name__)
CACHE_NAME = ".model-hashes.json"


class HashCache:
    """sha256 of files, remembered in `cache_file` across runs; safe to use from several threads."""

    def __init__(self, cache_file: Path):
        self.cache_file = Path(cache_file)
        self._lock = threading.Lock()
        self._running: dict[str, Future] = {}
        """Hashes being computed: a second caller waits for the first instead of reading the file again."""

    def sha256(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key, stamp = str(path), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        with self._lock:
            entry = self._read().get(key)
            if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and "sha256" in entry:
                return entry["sha256"]
            running = self._running.get(key)
            if running is None:
                self._running[key] = Future()
        if running is not None:
            return running.result()
        try:
            digest = sha256_file(path)
        except BaseException as error:
            with self._lock:
                self._running.pop(key).set_exception(error)
            raise
        with self._lock:
            entries = self._read()
            entries[key] = {**stamp, "sha256": digest}
            self._write(entries)
            self._running.pop(key).set_result(digest)
        return digest

    def start(self, path: Path | None) -> None:
        """Hash `path` in a background thread (the CLI starts it while torch imports); errors surface later."""
        if path is not None:
            threading.Thread(target=self._quietly, args=(path,), name="model-hash", daemon=True).start()

    def _quietly(self, path: Path) -> None:
        try:
            self.sha256(path)
        except OSError:
            pass  # the loader reports a missing or unreadable file with a better message

    def _read(self) -> dict:
        try:
            entries = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def _write(self, entries: dict) -> None:
        if not self.cache_file.parent.is_dir():
            return  # never create a models folder just to remember a hash
        try:
            write_bytes(self.cache_file, json.dumps(entries, indent=1, sort_keys=True).encode())
        except OSError as error:
            log.info(
                "Model hash cache %s not written (%s); hashes are computed again next time.", self.cache_file, error
            )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def weights_file(origin: str, location: str) -> Path | None:
    """The file A1111's "Model hash" is taken from: the checkpoint itself, or a diffusers folder's UNet weights."""
    if origin in ("single-file", "pickle"):
        return Path(location)
    if origin == "folder":
        unet_files = sorted(Path(location).glob("unet/*.safetensors"))
        return unet_files[0] if unet_files else None
    return None  # Hub ids are hashed from their snapshot once downloaded; demo models live only in memory
