"""Download a diffusers pipeline from the Hub: only the files a pipeline needs, with progress.

A repo like stable-diffusion-v1-5 also holds multi-GB single-file checkpoints, pickle `.bin`
copies and fp16 variants; downloading only one set of `.safetensors` per component saves gigabytes.

Every Hub download in Studio shares what is here: `snapshot_with_progress` (pipelines, evaluation's CLIP
model), the progress bar class (also the adapter import in studio/hub/adapters.py) and `hub_failure`, which says what
a huggingface_hub error means (also behind studio/hub/adapters.py's push and import errors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import filter_repo_objects
from tqdm.auto import tqdm

from studio.errors import ModelNotFoundError

ProgressFn = Callable[[float, str], None]
PROBE_TIMEOUT = 10.0  # seconds for the one request that tells whether the Hub answers at all
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


def progress_bar_class(on_progress: ProgressFn, repo_id: str, total_bytes: int, *, verb: str = "Downloading"):
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
                on_progress(done / total_bytes, f"{verb} {repo_id}: {_sizes(done, total_bytes)}")
            return result

    return _Progress


def _sizes(done: int, total: int) -> str:
    # A pipeline is gigabytes, a LoRA megabytes: "0.00 / 0.01 GB" would say nothing.
    scale, unit = (1e9, "GB") if total >= 1e9 else (1e6, "MB")
    return f"{done / scale:.2f} / {total / scale:.2f} {unit}"


def hub_failure(error: BaseException) -> tuple[str, BaseException] | None:
    """What a huggingface_hub or network failure means, looking at the error and the errors it was raised from.

    Returns (kind, the error that shows it), or None when it is none of these kinds:
    "offline-mode" (HF_HUB_OFFLINE=1 forbids asking the Hub), "not-found" (no such repo, or a private or gated
    one: the Hub answers alike), "not-cached" (the Hub cannot be asked and the cache lacks the files),
    "unreachable" (network), "auth" (401: the token is invalid), "forbidden" (403), "http" (another status).
    """
    for cause in error_chain(error):
        if isinstance(cause, OfflineModeIsEnabled):
            return "offline-mode", cause
        if isinstance(cause, RepositoryNotFoundError):
            return "not-found", cause
        if isinstance(cause, LocalEntryNotFoundError):
            return "not-cached", cause
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return {401: "auth", 403: "forbidden"}.get(cause.response.status_code, "http"), cause
        if isinstance(cause, (httpx2.TransportError, ConnectionError, TimeoutError)):
            return "unreachable", cause
    return None


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """The error, then what it was raised from, and so on (huggingface_hub wraps failures in other errors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


@dataclasses.dataclass(frozen=True)
class DownloadPlan:
    """Which files of a repo to fetch, at which revision, and their size (for a progress bar that only grows)."""

    allow_patterns: list[str]
    revision: str | None = None
    total_bytes: int = 0


def snapshot_with_progress(
    repo_id: str,
    *,
    plan: Callable[[HfApi], DownloadPlan],
    offline: DownloadPlan,
    what: str,
    instead: str,
    on_progress: ProgressFn | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download (or find in the Hub cache) the files `plan` picks from the repo's file list; return the folder.

    When the Hub cannot be asked (offline, no network), the `offline` plan reads the cache instead. Failures
    become ModelNotFoundError naming `what` and the repo, with `instead` as the way out that needs no Hub
    (e.g. "put the model in the models folder").
    """
    api = HfApi(endpoint=endpoint)
    try:
        online = hub_answers(api, repo_id)
        chosen = plan(api) if online else offline
    except (OSError, httpx2.TransportError) as error:  # HfHubHTTPError is an OSError; no network is neither
        if isinstance(error, RepositoryNotFoundError):
            raise _download_error(error, repo_id, what, instead) from error
        online, chosen = False, offline
    kwargs = {"endpoint": endpoint} if endpoint else {}
    if not online:
        kwargs["local_files_only"] = True  # the cache only: no more requests, so no more retries
    if on_progress is not None:
        kwargs["tqdm_class"] = progress_bar_class(on_progress, repo_id, chosen.total_bytes)
    try:
        folder = snapshot_download(repo_id, revision=chosen.revision, allow_patterns=chosen.allow_patterns, **kwargs)
    except (OSError, httpx2.TransportError) as error:
        raise _download_error(error, repo_id, what, instead) from error
    if on_progress is not None:
        on_progress(1.0, f"Downloaded {repo_id}")  # also when every file came from the cache
    return Path(folder)


def hub_answers(api: HfApi, repo_id: str) -> bool:
    """Whether the Hub can be asked about `repo_id`: False offline (HF_HUB_OFFLINE=1 or no network), after one
    request without retries, so a missing network costs a second, not the ~25 s of retries huggingface_hub's
    file listing makes. Raises RepositoryNotFoundError when the Hub answers that the repo does not exist."""
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        api.model_info(repo_id, timeout=PROBE_TIMEOUT)
    except RepositoryNotFoundError:
        raise
    except HfHubHTTPError:
        return True  # the Hub answered (gated, rate-limited...): the download says what it means
    except (OSError, httpx2.TransportError):
        return False
    return True


def check_hub_repo(repo_id: str, *, what: str, instead: str, filename: str, endpoint: str | None = None) -> None:
    """Fail in about a second, before any model is loaded, when a Hub repo can be neither found in the local cache
    (by one of its files, `filename`) nor asked for: offline, no network, or no such repo."""
    if isinstance(try_to_load_from_cache(repo_id, filename), str):
        return
    try:
        if hub_answers(HfApi(endpoint=endpoint), repo_id):
            return
    except RepositoryNotFoundError as error:
        raise _download_error(error, repo_id, what, instead) from error
    raise _download_error(LocalEntryNotFoundError(filename), repo_id, what, instead)


def _download_error(error: BaseException, repo_id: str, what: str, instead: str) -> ModelNotFoundError:
    kind, cause = hub_failure(error) or ("other", error)
    if kind == "not-found":
        return ModelNotFoundError(
            f"{what} {repo_id!r} does not exist or is private; check the id (log in with `hf auth login` for a "
            f"private repo), or {instead}."
        )
    if kind in ("not-cached", "offline-mode"):
        return ModelNotFoundError(
            f"{what} {repo_id!r} is not in the local Hub cache and the Hub cannot be reached; connect to the "
            f"internet once to download it, or {instead}."
        )
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return ModelNotFoundError(f"{what} {repo_id!r} could not be downloaded ({detail}); try again, or {instead}.")


def download_pipeline(
    repo_id: str, *, fp16: bool, on_progress: ProgressFn | None = None, endpoint: str | None = None
) -> Path:
    """Download (or find in the cache) the pipeline files of a Hub repo and return the local folder."""

    def plan(api: HfApi) -> DownloadPlan:
        sizes = {e.path: e.size for e in api.list_repo_tree(repo_id, recursive=True) if isinstance(e, RepoFile)}
        patterns = CONFIG_PATTERNS + choose_weight_files(list(sizes), fp16=fp16)
        wanted = filter_repo_objects(list(sizes), allow_patterns=patterns)
        return DownloadPlan(patterns, total_bytes=sum(sizes[name] for name in wanted))

    # Offline: the snapshot as cached. Asking for "*/*.safetensors" would fail on repos that also list
    # files we skipped on purpose (fp16 or non-EMA variants), since the cached file list names them.
    offline = DownloadPlan(["model_index.json"])
    folder = snapshot_with_progress(
        repo_id,
        plan=plan,
        offline=offline,
        what="Hub model",
        instead="put the model in the models folder",
        on_progress=on_progress,
        endpoint=endpoint,
    )
    if not (folder / "model_index.json").exists():
        raise ModelNotFoundError(f"Hub repo {repo_id!r} is not a diffusers pipeline (no model_index.json).")
    return folder
