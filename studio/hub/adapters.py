"""Share adapters on the Hugging Face Hub (push) and import them by repo id (pull).

The token lives only in memory, for one call: it is passed to `HfApi` and never written to disk, logs, settings
or metadata (`PushRequest` hides it from its repr). `HF_ENDPOINT` (or `endpoint=`) points everything at a
self-hosted or test Hub.

A push accepts any adapter of the LoRA folder: one Studio wrote (adapter.json beside the weights) or one made
elsewhere, a single kohya `.safetensors` file or a diffusers file or folder, whose card is built from what its
header says (`studio.lora.library.header_manifest`), with a generated adapter.json.

Nothing private leaves the machine: adapter.json is published with names instead of local paths, and every
safetensors header and PNG text chunk is checked and, where it names a local path, sent as a reduced copy
(`studio.hub.public`); the tensor data and pixels go as they are.

A push never changes the local folder: the model card with the repo id is generated in memory and uploaded
with the adapter files in one commit. Files are uploaded through the LFS batch API ("basic" transfer), which
every Hub-compatible server implements, rather than Xet, which only huggingface.co does; huggingface_hub
takes that path for file objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

import studio
from studio.atomic import make_readable, replace_folder, restore_replaced, staging_folder
from studio.errors import CancelledError, HubError, InvalidRequestError, StudioError, UnsafePathError
from studio.hub.download import error_chain, hub_failure, progress_bar_class
from studio.hub.model_card import CardFile, build_model_card
from studio.hub.public import public_file
from studio.lora.folder import (
    MANIFEST,
    PICKLE_SUFFIXES,
    AdapterManifest,
    check_adapter_name,
    check_repo_id,
    manifest_if_readable,
)
from studio.models.hashes import sha256_file
from studio.validation import check_path_text

ProgressFn = Callable[[float, str], None]

_TAG = re.compile(r"^[\w][\w:.+-]{0,63}$")
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
# Written into an imported folder so importing the same repo again may replace it, but nothing else is replaced.
SOURCE_FILE = ".hub-source.json"
# What a pull brings into loras/<name>/: the weights in both formats, the card, the manifest and the samples.
# Nothing else: no pickles, no training checkpoints, no code.
DOWNLOAD_PATTERNS = ["*.safetensors", "README.md", MANIFEST, "samples/*.png", "samples/*.jpg", "samples/*.webp"]


@dataclasses.dataclass(frozen=True)
class PushRequest:
    name: str
    """Adapter folder in `loras_dir`, as listed by the LoRA library."""

    repo_id: str
    """Target repository, `owner/name`; created (public unless `private`) when it does not exist."""

    loras_dir: Path
    private: bool = False
    """Only used when the repository is created; an existing repo keeps its visibility."""

    tags: tuple[str, ...] = ()
    """Extra model card tags, e.g. ("remote-sensing",); the LoRA/base-model tags are always there."""

    license: str | None = None
    """Model card license; default: the base model's (creativeml-openrail-m for SD1.5, openrail++ for SDXL)."""

    message: str = ""
    """Commit message; default "Upload <name> with Studio"."""

    token: str | None = dataclasses.field(default=None, repr=False)
    """For this push only (the UI's password field); else HF_TOKEN, else the `hf auth login` token. Never stored."""

    endpoint: str | None = None
    """Hub URL; default HF_ENDPOINT, else https://huggingface.co."""

    def validate(self) -> None:
        find_shareable(self.loras_dir, self.name)
        check_repo_id(self.repo_id)
        for tag in self.tags:
            if not _TAG.match(tag):
                raise InvalidRequestError(f"Tag {tag!r} is not valid: use letters, digits, '-', '_', ':' or '.'.")
        if self.license is not None and not _LICENSE.match(self.license):
            raise InvalidRequestError(
                f"License {self.license!r} is not a Hub license id; use e.g. creativeml-openrail-m, openrail++, mit."
            )

    @property
    def commit_message(self) -> str:
        return self.message.strip() or f"Upload {self.name} with Studio {studio.__version__}"


@dataclasses.dataclass(frozen=True)
class Shareable:
    """An adapter of the LoRA folder as a push sees it."""

    name: str
    path: Path
    """The adapter folder, or the single `.safetensors` file."""

    manifest: AdapterManifest
    """Its adapter.json, or what its header says (an adapter made elsewhere)."""

    made_here: bool
    """Whether Studio wrote it (a readable adapter.json with the base kind)."""

    files: tuple[Path, ...]
    """Local files to upload: weights and sample images (README.md and adapter.json are generated)."""


def find_shareable(loras_dir: Path, name: str) -> Shareable:
    """The adapter `name` (folder, or file stem, as the LoRA library lists it), or an error that says why not."""
    from studio.lora.library import header_manifest, read_entry

    root = Path(loras_dir).resolve()
    if not name or not name.strip():
        raise InvalidRequestError("Pick an adapter to share.")
    check_path_text("Adapter name", name)
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise UnsafePathError(f"Adapter name {name!r} points outside the LoRA folder; pick an adapter from the list.")
    if not path.is_dir() and not (path.is_file() and path.suffix.lower() == ".safetensors"):
        single = (root / f"{name}.safetensors").resolve()
        if single.is_file() and single.is_relative_to(root):
            path = single
        elif any((root / f"{name}{suffix}").is_file() for suffix in PICKLE_SUFFIXES):
            raise InvalidRequestError(
                f"{name} is a pickle file, which can run code when loaded; only .safetensors adapters are shared."
            )
        else:
            raise InvalidRequestError(f"There is no adapter {name!r} in {root}; pick one from the list.")
    name = path.name if path.is_dir() else path.stem
    manifest = manifest_if_readable(path) if path.is_dir() else None
    if manifest is not None and manifest.base_kind is not None:
        files = tuple(files_to_upload(path))
        if not any(p.suffix == ".safetensors" for p in files):
            raise InvalidRequestError(f"{path} has no .safetensors LoRA file; there is nothing to share.")
        return Shareable(name, path, manifest, True, files)

    entry = read_entry(path)
    if entry.weights_file is None:
        raise InvalidRequestError(
            f"{path} has no adapter.json and no .safetensors LoRA file; there is nothing to share."
        )
    if entry.weights_file.suffix.lower() != ".safetensors":
        raise InvalidRequestError(
            f"{entry.weights_file.name} is a pickle file, which can run code; only .safetensors adapters are shared."
        )
    if entry.kind is None or entry.format == "unknown":
        raise InvalidRequestError(f"{name} cannot be shared: {entry.problem or 'it is not an SD1.5/SDXL LoRA.'}")
    if path.is_dir():
        files = tuple(p for p in files_to_upload(path) if p.name != MANIFEST and _lora_format(p) != "unknown")
    else:
        files = (path,)
    return Shareable(name, path, header_manifest(entry), False, files)


def adapter_folder(loras_dir: Path, name: str) -> Path:
    """The adapter folder or single file `loras_dir/name`, refusing names that escape loras_dir and non-adapters."""
    return find_shareable(loras_dir, name).path


def shareable_adapters(loras_dir: Path) -> list[str]:
    """Names of every adapter in loras_dir that a push accepts: Studio's own and LoRA files made elsewhere."""
    from studio.lora.library import scan_loras

    root = Path(loras_dir)
    if not root.is_dir():
        return []
    names = []
    for entry in scan_loras(root):
        try:
            find_shareable(root, entry.name)
        except StudioError:
            continue
        names.append(entry.name)
    return sorted(names)


def _lora_format(path: Path) -> str:
    """ "diffusers", "kohya", "lycoris:<type>" from a safetensors header; "unknown" for other files."""
    from studio.lora.formats import lora_format
    from studio.models.kinds import read_safetensors_header

    if path.suffix.lower() != ".safetensors":
        return "unknown"
    try:
        return lora_format(read_safetensors_header(path))
    except StudioError:
        return "unknown"


def resolve_token(explicit: str | None) -> str | None:
    """The token to use: the one typed for this push, else HF_TOKEN, else huggingface_hub's stored login."""
    if explicit and explicit.strip():
        return explicit.strip()
    return get_token()


def resolve_endpoint(explicit: str | None) -> str:
    return (explicit or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def files_to_upload(folder: Path) -> list[Path]:
    """The adapter files a push uploads: weights, manifest and sample images (README.md is regenerated)."""
    candidates = [*folder.glob("*.safetensors"), folder / MANIFEST]
    candidates += [p for p in sorted((folder / "samples").glob("*")) if p.suffix.lower() in (".png", ".jpg", ".webp")]
    root = folder.resolve()
    # A symlink in the folder must not upload a file from elsewhere on the disk.
    return sorted({p for p in candidates if p.is_file() and p.resolve().is_relative_to(root)})


@dataclasses.dataclass(frozen=True)
class Upload:
    """What one push sends: repo path -> a local file (the adapter's own, or a reduced copy) or generated bytes."""

    files: dict[str, Path | bytes]
    card: str


def prepare_upload(request: PushRequest, workdir: Path) -> Upload:
    """The files of a push of `request` without local paths (copies that needed reducing go in `workdir`), the card.

    The card lists the weights with the sha256 and A1111 hash of the bytes that are sent.
    """
    request.validate()
    shareable = find_shareable(request.loras_dir, request.name)
    base = shareable.path if shareable.path.is_dir() else shareable.path.parent
    files: dict[str, Path | bytes] = {}
    for path in shareable.files:
        if path.name == MANIFEST and path.parent == base:
            continue  # published as generated below, without local paths
        files[path.relative_to(base).as_posix()] = public_file(path, workdir)
    manifest = shareable.manifest.public()
    files[MANIFEST] = json.dumps(manifest.to_json(), indent=2).encode()
    card_files = [_card_file(repo_path, source) for repo_path, source in files.items()]
    card_files = [f for f in card_files if f is not None]
    order = {"diffusers": 0, "kohya": 1, "lycoris": 2, "manifest": 9}
    card_files.sort(key=lambda f: (order.get(f.format.split(":")[0], 5), f.name))
    card = build_model_card(
        shareable.path,
        repo_id=request.repo_id,
        license=request.license,
        tags=request.tags,
        manifest=None if shareable.made_here else manifest,  # a Studio adapter's card reads its adapter.json
        files=card_files,
    )
    return Upload({"README.md": str(card).encode(), **files}, str(card))


def _card_file(repo_path: str, source: Path | bytes) -> CardFile | None:
    """How the card lists a file of the repo: the weights by their format (read from the header), with hashes."""
    from studio.lora.library import addnet_hash

    if repo_path == MANIFEST:
        return CardFile(MANIFEST, "manifest")
    if "/" in repo_path or not repo_path.endswith(".safetensors") or isinstance(source, bytes):
        return None
    return CardFile(repo_path, _lora_format(source), sha256_file(source), addnet_hash(source))


def push_adapter(
    request: PushRequest, *, on_progress: ProgressFn | None = None, cancel: threading.Event | None = None
) -> str:
    """Create `request.repo_id` if needed and upload the adapter with a fresh model card; returns the repo URL."""
    request.validate()
    report = on_progress or (lambda fraction, message: None)
    endpoint = resolve_endpoint(request.endpoint)
    token = resolve_token(request.token)
    if not token:
        raise HubError(
            "No Hub token: paste a write token in the Share tab's token field, set HF_TOKEN, or run `hf auth login`."
        )
    api = HfApi(endpoint=endpoint, token=token, library_name="studio", library_version=studio.__version__)
    with tempfile.TemporaryDirectory(prefix="studio-push-") as workdir:
        upload = prepare_upload(request, Path(workdir))
        with hub_errors(endpoint, request.repo_id):
            report(0.0, f"Checking the token with {endpoint}")
            me = _whoami(api)
            if me is not None:
                check_namespace(me, request.repo_id)
            report(0.05, f"Creating {request.repo_id} (if needed)")
            api.create_repo(request.repo_id, private=request.private, exist_ok=True)
            url = f"{endpoint}/{request.repo_id}"  # the page on the Hub we talk to (HF_ENDPOINT), as models are linked
            with contextlib.ExitStack() as stack:
                sizes = sum(source.stat().st_size for source in upload.files.values() if isinstance(source, Path))
                progress = _UploadProgress(sizes, report, cancel)
                operations = []
                for path_in_repo, source in upload.files.items():
                    if isinstance(source, Path):
                        source = stack.enter_context(_CountingReader(source, progress))
                    operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=source))
                progress.start()  # reads so far were hashing; count only what is sent from here on
                api.create_commit(request.repo_id, operations, commit_message=request.commit_message)
    report(1.0, f"Pushed {request.name} to {url}")
    return url


def model_card_text(request: PushRequest) -> str:
    """The README.md a push of `request` uploads: the adapter's card with the repo id, license and tags filled in."""
    with tempfile.TemporaryDirectory(prefix="studio-card-") as workdir:
        return prepare_upload(request, Path(workdir)).card


def _whoami(api: HfApi) -> dict | None:
    """Who the token belongs to; None on a minimal self-hosted Hub without /api/whoami-v2 (its commits still check)."""
    try:
        return api.whoami()
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code in (404, 405, 501):
            return None
        raise


def check_namespace(me: dict, repo_id: str) -> None:
    """Refuse before uploading anything when the token cannot write to the repo's owner."""
    owner = repo_id.split("/")[0]
    # The Hub matches owner names without regard to case ("Alice/x" is alice's repo).
    namespaces = {str(me.get("name")).casefold()} | {str(org.get("name")).casefold() for org in me.get("orgs") or []}
    if owner.casefold() not in namespaces:
        raise HubError(
            f"The token belongs to {me.get('name')!r}, who cannot create or write repos under {owner!r}. "
            f"Use {me.get('name')}/{repo_id.split('/')[1]} or an organization you belong to."
        )
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubError("This Hub token is read-only; create a token with write access and use it to push.")


def download_adapter(
    *,
    repo_id: str,
    loras_dir: Path,
    token: str | None = None,
    endpoint: str | None = None,
    on_progress: ProgressFn | None = None,
) -> Path:
    """Download an adapter repo into `loras_dir/<repo name>/` (replacing an older copy only once complete)."""
    check_repo_id(repo_id)
    root = Path(loras_dir).resolve()
    name = check_adapter_name(re.sub(r"[^A-Za-z0-9_.-]", "_", repo_id.split("/")[1]))
    target = (root / name).resolve()
    if not target.is_relative_to(root) or target == root:
        raise UnsafePathError(f"Repo {repo_id!r} would be saved outside the LoRA folder; rename it.")
    restore_replaced(target)  # a copy a killed import left aside counts as there
    if target.exists() and imported_from(target) != repo_id:
        raise HubError(
            f"{target} already holds another adapter (not imported from {repo_id}); "
            "rename or delete it, then import again."
        )
    endpoint = resolve_endpoint(endpoint)
    root.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(target)
    try:
        with hub_errors(endpoint, repo_id):
            options = dict(allow_patterns=DOWNLOAD_PATTERNS, endpoint=endpoint, token=resolve_token(token))
            if on_progress is not None:
                planned = snapshot_download(repo_id, local_dir=staging, dry_run=True, **options)
                total = sum(f.file_size or 0 for f in planned)
                options["tqdm_class"] = progress_bar_class(on_progress, repo_id, total, verb="Importing")
            snapshot_download(repo_id, local_dir=staging, **options)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping for local_dir
        if not any(staging.rglob("*.safetensors")):
            raise HubError(f"Hub repo {repo_id!r} has no .safetensors file; it is not a LoRA Studio can import.")
        (staging / SOURCE_FILE).write_text(json.dumps({"repo_id": repo_id}), encoding="utf-8")
        make_readable(staging)
        replace_folder(staging, target)  # an older import is removed only once the new one is in place
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    if on_progress is not None:
        on_progress(1.0, f"Imported {repo_id} as {name}")
    return target


def imported_from(folder: Path) -> str | None:
    """The repo id an adapter folder was imported from, or None for adapters made here (or unreadable markers)."""
    try:
        return json.loads((Path(folder) / SOURCE_FILE).read_text(encoding="utf-8")).get("repo_id")
    except (OSError, ValueError, AttributeError):
        return None


@contextlib.contextmanager
def hub_errors(endpoint: str, repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub/network failures into one-line HubErrors that say what to do."""
    try:
        yield
    except (HubError, CancelledError):
        raise
    except Exception as error:  # huggingface_hub wraps upload failures in RuntimeError; look at the causes
        mapped = _map_error(error, endpoint, repo_id)
        if mapped is None:
            raise
        raise mapped from None


def _map_error(error: BaseException, endpoint: str, repo_id: str) -> Exception | None:
    for cause in error_chain(error):  # our own errors (Stop, a refused namespace) pass through as they are
        if isinstance(cause, (HubError, CancelledError)):
            return cause
    kind, cause = hub_failure(error) or (None, error)
    if kind == "offline-mode":
        return HubError("Hub access is switched off (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to use the Hub.")
    if kind == "not-found":
        return HubError(
            f"Hub repo {repo_id!r} does not exist or is private; check the id (and the token for private repos)."
        )
    if kind == "auth":
        return HubError(
            f"{endpoint} rejected the Hub token (401): it is invalid or expired. Create a write token at "
            f"{endpoint}/settings/tokens and paste it, or update HF_TOKEN / `hf auth login`."
        )
    if kind == "forbidden":
        return HubError(
            f"No write access to {repo_id!r} (403): it belongs to someone else or the token cannot write "
            "there. Push to your own namespace or use a token with write access."
        )
    if kind == "http":
        detail = cause.server_message or str(cause).splitlines()[0]
        return HubError(f"The Hub refused the request for {repo_id!r} ({cause.response.status_code}): {detail.strip()}")
    if kind in ("not-cached", "unreachable"):
        return HubError(f"Cannot reach {endpoint}: check the network connection (or HF_ENDPOINT) and try again.")
    return None


class _UploadProgress:
    """Bytes sent across all files -> on_progress(0.1..0.95); raises CancelledError when Stop is pressed."""

    def __init__(self, total: int, report: ProgressFn, cancel: threading.Event | None):
        self.total, self.report, self.cancel = max(total, 1), report, cancel
        self.sent, self.counting = 0, False
        self._lock = threading.Lock()

    def start(self) -> None:
        self.counting = True
        self.report(0.1, f"Uploading {self.total / 1e6:.1f} MB")

    def add(self, n: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("Push stopped; the Hub repo keeps its previous commit.")
        if not self.counting or n <= 0:
            return
        with self._lock:
            self.sent = min(self.sent + n, self.total)
            sent = self.sent
        self.report(0.1 + 0.85 * sent / self.total, f"Uploading {sent / 1e6:.1f} / {self.total / 1e6:.1f} MB")


class _CountingReader(io.BufferedReader):
    """A binary file that reports the bytes read from it (huggingface_hub streams it to the server)."""

    def __init__(self, path: Path, progress: _UploadProgress):
        super().__init__(io.FileIO(path, "rb"))
        self._progress = progress

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._progress.add(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data = super().read1(size)
        self._progress.add(len(data))
        return data

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self._progress.add(n or 0)
        return n
