"""A1111 model hashes: the sha256 of the weights file, cached by path, size and modification time."""

import hashlib
import json
import os
import shutil

from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.hashes import CACHE_NAME, HashCache
from studio.models.manager import ModelManager


def test_cache_answers_while_size_and_mtime_hold_and_rehashes_a_changed_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    cache = HashCache(tmp_path / CACHE_NAME)
    first = cache.sha256(weights)
    assert first == hashlib.sha256(b"weights v1").hexdigest()

    # Plant a marker in the cache: returned as long as the file looks unchanged (so the file was not read).
    entries = json.loads((tmp_path / CACHE_NAME).read_text())
    entries[str(weights.resolve())]["sha256"] = "cached-marker"
    (tmp_path / CACHE_NAME).write_text(json.dumps(entries))
    assert HashCache(tmp_path / CACHE_NAME).sha256(weights) == "cached-marker"

    weights.write_bytes(b"weights v2")  # a replaced checkpoint: new size or mtime
    os.utime(weights, ns=(1, 1))
    assert cache.sha256(weights) == hashlib.sha256(b"weights v2").hexdigest()


def test_unwritable_or_broken_cache_only_costs_time(tmp_path):
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"abc")
    (tmp_path / CACHE_NAME).write_text("{not json")
    assert HashCache(tmp_path / CACHE_NAME).sha256(weights) == hashlib.sha256(b"abc").hexdigest()
    missing = HashCache(tmp_path / "no-such-folder" / CACHE_NAME)
    assert missing.sha256(weights) == hashlib.sha256(b"abc").hexdigest()
    assert not (tmp_path / "no-such-folder").exists()  # no models folder is created just for the cache


def test_infotext_model_hash_is_the_unet_file_hash_and_is_cached(studio_config, tiny_sd15_dir):
    shutil.copytree(tiny_sd15_dir, studio_config.models_dir / "tiny")
    unet_file = sorted((studio_config.models_dir / "tiny" / "unet").glob("*.safetensors"))[0]
    expected = hashlib.sha256(unet_file.read_bytes()).hexdigest()[:10]

    request = GenerationRequest(model="tiny", prompt="mountains", steps=1, seed=1, width=64, height=64)
    result = generate(ModelManager(studio_config), request)

    assert f"Model hash: {expected}" in result.infotexts[0]
    cached = json.loads((studio_config.models_dir / CACHE_NAME).read_text())
    assert cached[str(unet_file.resolve())]["sha256"][:10] == expected


def _bytes_read() -> int:
    """Bytes this process has read through read() calls (Linux /proc/self/io)."""
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_hash_started_early_is_shared_with_the_later_caller(tmp_path):
    # The CLI starts hashing the checkpoint while torch imports; the manager asks later and must not read it again.
    weights = tmp_path / "big.safetensors"
    weights.write_bytes(os.urandom(48 * 1024 * 1024))
    cache = HashCache(tmp_path / CACHE_NAME)
    before = _bytes_read()
    cache.start(weights)
    digest = cache.sha256(weights)
    read = _bytes_read() - before
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert read < 1.5 * weights.stat().st_size  # one pass over the file, not two
