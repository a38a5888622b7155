"""Download a diffusers pipeline from the Hub: only the files a pipeline needs, with progress.

A repo like stable-diffusion-v1-5 also holds multi-GB single-file checkpoints, pickle `.bin`
copies and fp16 variants; downloading only one set of `.safetensors` per component saves gigabytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from huggingface_hub import HfApi, snapshot_download
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


def _progress_bar_class(on_progress: ProgressFn, repo_id: str):
    class _Progress(tqdm):
        """Forward huggingface_hub's download progress (bytes) to the UI callback."""

        def update(self, n=1):
            result = super().update(n)
            if self.total:
                on_progress(min(self.n / self.total, 1.0), f"Downloading {repo_id}: {self.n / 1e9:.2f} / {self.total / 1e9:.2f} GB")
            return result

    return _Progress


def download_pipeline(repo_id: str, *, fp16: bool, on_progress: ProgressFn | None = None, endpoint: str | None = None) -> Path:
    """Download (or find in the cache) the pipeline files of a Hub repo and return the local folder."""
    kwargs = {"endpoint": endpoint} if endpoint else {}
    if on_progress is not None:
        kwargs["tqdm_class"] = _progress_bar_class(on_progress, repo_id)
    try:
        try:
            files = HfApi(endpoint=endpoint).list_repo_files(repo_id)
            patterns = CONFIG_PATTERNS + choose_weight_files(files, fp16=fp16)
        except (OSError, HfHubHTTPError) as e:
            if isinstance(e, RepositoryNotFoundError):
                raise
            patterns = CONFIG_PATTERNS + ["*/*.safetensors"]  # offline: whatever the cache holds
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
    return folder
