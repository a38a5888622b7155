"""Download a diffusers pipeline from the Hub: only the files a pipeline needs, with progress.

A repo like stable-diffusion-v1-5 also holds multi-GB single-file checkpoints, pickle `.bin`
copies and fp16 variants; downloading only one set of `.safetensors` per component saves gigabytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from tqdm.auto import tqdm

from studio.errors import ModelNotFoundError

ProgressFn = Callable[[float, str], None]
CONFIG_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model"]


def choose_weight_files(files: list[str], *, fp16: bool) -> list[str]:
    """One `.safetensors` set per component folder: the fp16 variant when wanted and present."""
    by_folder: dict[str, list[str]] = {}
    for name in files:
        if name.count("/") == 1 and name.endswith(".safetensors"):
            by_folder.setdefault(name.split("/")[0], []).append(name)
    chosen = []
    for names in by_folder.values():
        half = [n for n in names if ".fp16." in n]
        full = [n for n in names if ".fp16." not in n and ".non_ema." not in n]
        chosen += half if (fp16 and half) or not full else full
    return sorted(chosen)


def progress_bar_class(on_progress: ProgressFn, repo_id: str, total_bytes: int):
    class _Progress(tqdm):
        """Forward huggingface_hub's download progress to the UI callback as one fraction that only grows.

        snapshot_download drives three bars with this class: files fetched, bytes received and bytes written
        ("Reconstructing..."). Only the bytes written are followed, against the size of the files we asked for
        (known before the download starts): the bars' own totals grow as files start, so their ratio jumps back.
        """

        def update(self, n=1):
            result = super().update(n)
            if total_bytes and self.unit == "B" and str(self.desc).startswith("Reconstruct"):
                done = min(self.n, total_bytes)
                on_progress(done / total_bytes, f"Downloading {repo_id}: {done / 1e9:.2f} / {total_bytes / 1e9:.2f} GB")
            return result

    return _Progress


def download_pipeline(
    repo_id: str, *, fp16: bool, on_progress: ProgressFn | None = None, endpoint: str | None = None
) -> Path:
    """Download (or find in the cache) the pipeline files of a Hub repo and return the local folder."""
    kwargs = {"endpoint": endpoint} if endpoint else {}
    try:
        try:
            sizes = {
                entry.path: entry.size
                for entry in HfApi(endpoint=endpoint).list_repo_tree(repo_id, recursive=True)
                if isinstance(entry, RepoFile)
            }
            patterns = CONFIG_PATTERNS + choose_weight_files(list(sizes), fp16=fp16)
            total_bytes = sum(sizes[name] for name in filter_repo_objects(list(sizes), allow_patterns=patterns))
        except (OSError, HfHubHTTPError) as e:
            if isinstance(e, RepositoryNotFoundError):
                raise
            # Offline: the snapshot as cached. Asking for "*/*.safetensors" would fail on repos that also list
            # files we skipped on purpose (fp16 or non-EMA variants), since the cached file list names them.
            patterns = ["model_index.json"]
            total_bytes = 0
        if on_progress is not None:
            kwargs["tqdm_class"] = progress_bar_class(on_progress, repo_id, total_bytes)
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, **kwargs))
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"Hub repo {repo_id!r} does not exist or is private. Check the id, or log in with `hf auth login`."
        ) from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{repo_id} is not in the local Hub cache and the Hub cannot be reached. Connect to the internet "
            "once to download it, or put the model in the models folder."
        ) from None
    except (OSError, HfHubHTTPError) as e:
        raise ModelNotFoundError(f"Could not download {repo_id}: {e}") from e
    if not (folder / "model_index.json").exists():
        raise ModelNotFoundError(f"Hub repo {repo_id!r} is not a diffusers pipeline (no model_index.json).")
    if on_progress is not None:
        on_progress(1.0, f"Downloaded {repo_id}")  # also when every file came from the cache
    return folder
