"""An adapter folder, `loras/<name>/`: the rules its writers and readers share, defined once.

    pytorch_lora_weights.safetensors   diffusers (`DIFFUSERS_WEIGHTS`)
    <name>.safetensors                 kohya/A1111/ComfyUI, with `kohya_metadata` (ss_* and modelspec.*)
    adapter.json                       the manifest, `AdapterManifest`
    README.md                          model card (studio.hub.model_card)
    samples/*.png                      validation images with A1111 infotext (trained adapters)

Writers (training/export.py, lora/merge.py) build the folder in `studio.atomic.staging_folder(target)`, fill it with
`save_adapter_files` and swap it in with `studio.atomic.replace_folder`; so does a Hub import (hub/adapters.py).
Readers: the LoRA library (`manifest_if_readable`), the model card and a push (`read_manifest`, `public()`).

Nothing written here names a local folder: `save_adapter_files` writes the manifest and the kohya metadata with
local paths reduced to names (`public_name`, `public_text`, `public_metadata`); a push applies the same rules again
to whatever the folder holds (studio.hub.public), since files made elsewhere or by an older Studio may not.

Importing this module is cheap (no torch, no huggingface_hub): the model list and the CLI's argument checks use
its names and rules before any heavy import. The functions that need more import it when called.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from studio.errors import InvalidRequestError, LoraError, UnsafePathError
from studio.models.kinds import ModelKind

MANIFEST = "adapter.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
# kohya's `ss_base_model_version` values (what A1111 and Civitai show as the base).
KOHYA_BASE_VERSION = {ModelKind.SD15: "sd_v1", ModelKind.SDXL: "sdxl_base_v1-0"}
# Files that unpickle when loaded, so they can run code: never loaded unless the user opts in, never downloaded.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
MODEL_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# A folder name on every OS and never a path: letters, digits, '_', '-', '.' (not first), at most 100 characters.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_adapter_name(name: str) -> str:
    """`name` when it can name an adapter folder in `loras/`, else UnsafePathError saying what is allowed."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name) or ".." in name:
        raise UnsafePathError(
            f"Adapter name {name!r} is not allowed: use 1-100 letters, digits, '-', '_' or '.' (not first), "
            "e.g. alps-v1."
        )
    return name


# --- the manifest ----------------------------------------------------------------------------------


@dataclasses.dataclass
class AdapterManifest:
    """`adapter.json`: what an adapter is, for the LoRA tab, the model card and the Hub.

    On disk it is a flat JSON object with these field names (`base_kind` as "sd15"/"sdxl"); files written by
    any earlier Studio read back, missing fields take the defaults and unknown keys are kept in `extra`.
    """

    name: str = ""
    """Folder name in `loras/` and stem of the kohya file; readers use the folder's name when it is empty."""

    base_model: str = ""
    """The base as the user picked it: a demo name, a Hub id, a local file or folder (published as its name)."""

    base_kind: ModelKind | None = None
    """SD1.5 or SDXL. Required by the model card and a push; the library reads the kind from the weights without."""

    trigger_words: list[str] = dataclasses.field(default_factory=list)
    """Words that call up the style (the training trigger; the union of a blend's parts)."""

    rank: int | None = None
    """LoRA rank of the layers (the most common one for a blend)."""

    alpha: float | None = None
    """lora_alpha: each layer adds B @ A * alpha / rank."""

    text_encoder: bool = False
    """Whether the adapter has text-encoder layers too."""

    settings: dict[str, Any] | None = None
    """Training settings (the request, `data` as a folder name, mixed_precision, num_images); None for a blend."""

    blend: list[dict[str, Any]] | None = None
    """A saved blend's parts, `{"name", "weight"[, "text_encoder_weight"]}` each; None for a trained adapter."""

    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Validation images, `{"file": "samples/x.png", "prompt", "negative_prompt", "seed", "step"}` each."""

    created: str = ""
    """When the folder was written, ISO 8601 UTC."""

    studio_version: str = ""
    """The Studio version that wrote it."""

    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keys this Studio does not know (a newer version's, a user's): written back as they were."""

    @classmethod
    def from_json(cls, data: dict) -> AdapterManifest:
        """The manifest of a parsed `adapter.json`; a value of the wrong type reads as the field's default."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            kind = ModelKind(data.get("base_kind"))
        except ValueError:
            kind = None
        words = data.get("trigger_words") or []
        words = [words] if isinstance(words, str) else words if isinstance(words, list) else []
        return cls(
            name=str(data.get("name") or ""),
            base_model=str(data.get("base_model") or ""),
            base_kind=kind,
            trigger_words=[str(w) for w in words if str(w).strip()],
            rank=data.get("rank"),
            alpha=data.get("alpha"),
            text_encoder=bool(data.get("text_encoder")),
            settings=data["settings"] if isinstance(data.get("settings"), dict) else None,
            blend=[b for b in data["blend"] if isinstance(b, dict)] if isinstance(data.get("blend"), list) else None,
            samples=list(data["samples"]) if isinstance(data.get("samples"), list) else [],
            created=str(data.get("created") or ""),
            studio_version=str(data.get("studio_version") or ""),
            extra={key: value for key, value in data.items() if key not in known},
        )

    def to_json(self) -> dict:
        """The `adapter.json` object: every field in order (`base_kind` as its value), then the unknown keys."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["base_kind"] = self.base_kind.value if self.base_kind else None
        return {**data, **self.extra}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST
        path.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        return path

    def public(self) -> AdapterManifest:
        """The manifest as it may be published: local paths (training data, a base model file) reduced to names.

        `/home/alice/datasets/aid-mountains` says who and where; `aid-mountains` is all a reader of the card needs.
        """
        return dataclasses.replace(
            self,
            base_model=public_name(self.base_model),
            settings=public_value(self.settings),
            blend=public_value(self.blend),
            samples=public_value(self.samples),
            trigger_words=public_value(self.trigger_words),
            extra=public_value(self.extra),
        )


# --- what may leave the machine: names, never local paths -------------------------------------------

# An absolute local path inside a text: `/...`, `~/...`, `C:\...`, `\\server\...`, not part of a URL or a fraction.
_EMBEDDED_PATH = re.compile(r"(?<![\w.~:/\\-])(?:~?/|[A-Za-z]:[\\/]|\\\\)[^\s\"'<>|,;/\\]+[^\s\"'<>|,;]*")
# kohya keys whose whole value names a model file or folder (sd-scripts itself writes the basename of a local one).
NAME_KEYS = ("ss_sd_model_name", "ss_vae_name", "ss_new_sd_model_hash_name")


def _last_name(path: str) -> str:
    parts = [part for part in re.split(r"[\\/]", path) if part and part != "~"]
    return parts[-1] if parts else ""


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "~", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", value))


def public_text(text: str) -> str:
    """`text` with every local path in it reduced to its last name: a whole-value path even with spaces in it."""
    if _looks_local(text.strip()):
        return _last_name(text.strip())
    return _EMBEDDED_PATH.sub(lambda m: _last_name(m.group()), text)


def public_name(value: str) -> str:
    """A model reference as it may be published: demo names and Hub ids as they are, a local path as its name.

    `/home/alice/models/v1-5.safetensors` and `models/base` (a folder here, not a Hub repo) -> `v1-5.safetensors`,
    `base`; `stabilityai/stable-diffusion-xl-base-1.0` stays what it is.
    """
    value = str(value or "").strip()
    if not value or _looks_local(value) or not is_hub_id(value):
        return _last_name(value) if value else value
    try:
        local = Path(value).expanduser().exists()
    except OSError:
        local = False
    return _last_name(value) if local else value


def public_value(value):
    """`value` (JSON-like: dicts, lists, strings) with local paths reduced to names, in keys and values alike."""
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, dict):
        return {public_text(k) if isinstance(k, str) else k: public_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_value(v) for v in value]
    return value


def public_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Safetensors `__metadata__` as it may be published: every value without local paths, JSON values parsed.

    Values that need no change keep their exact text, so a clean header is written back byte for byte.
    """
    public = {}
    for key, value in metadata.items():
        value = str(value)
        if key in NAME_KEYS:
            public[key] = public_name(value)
            continue
        if value.lstrip()[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if parsed is not None:
                reduced = public_value(parsed)
                public[key] = value if reduced == parsed else json.dumps(reduced, ensure_ascii=False)
                continue
        public[key] = public_text(value)
    return public


def read_manifest(folder: Path) -> AdapterManifest:
    """`folder/adapter.json`, with a clear LoraError when it is missing, broken or has no SD1.5/SDXL base kind."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoraError(f"{folder} has no {MANIFEST}; only adapters trained or blended by Studio have one.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoraError(f"{path} is not valid JSON ({e}). Re-save the adapter or fix the file.") from None
    manifest = AdapterManifest.from_json(data) if isinstance(data, dict) else None
    if manifest is None or manifest.base_kind is None:
        raise LoraError(f'{path} must be an object with "base_kind" set to "sd15" or "sdxl".')
    return manifest


def manifest_if_readable(folder: Path) -> AdapterManifest | None:
    """`folder/adapter.json` if there is a readable one, else None: the weights still say what the library needs."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return AdapterManifest.from_json(data) if isinstance(data, dict) else None


# --- kohya metadata --------------------------------------------------------------------------------


def kohya_metadata(manifest: AdapterManifest, *, comment: str, training: dict | None = None) -> dict[str, str]:
    """The `ss_*` keys kohya's sd-scripts write (A1111's and Civitai's LoRA info read them) and `modelspec.*`.

    What every Studio adapter has comes from its manifest; a trained one adds its training values (`training`,
    e.g. `ss_learning_rate`). Values are strings, as safetensors metadata must be; None values are left out.
    """
    from studio.lora.files import MODELSPEC_ARCHITECTURE

    kind = manifest.base_kind
    values = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": manifest.rank,
        "ss_network_alpha": manifest.alpha,
        "ss_base_model_version": KOHYA_BASE_VERSION[kind],
        "ss_sd_model_name": public_name(manifest.base_model) or None,
        "ss_output_name": manifest.name,
        "ss_network_train_unet_only": not manifest.text_encoder,
        "ss_training_comment": comment,
        **(training or {}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[kind],
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": manifest.name,
        "modelspec.date": manifest.created or None,
        "modelspec.trigger_phrase": ", ".join(manifest.trigger_words) or None,
    }
    return {key: str(value) for key, value in values.items() if value is not None}


def save_adapter_files(folder: Path, weights, manifest: AdapterManifest, *, metadata: dict[str, str]) -> None:
    """Write the weights (diffusers and kohya `<name>.safetensors` with `metadata`), adapter.json and README.md."""
    from studio.hub.model_card import build_model_card  # the card module reads manifests from here
    from studio.lora.files import save_diffusers_lora, save_kohya_lora

    folder = Path(folder)
    # Reduced here, where every writer passes: no local path is written into a file that may be shared.
    manifest, metadata = manifest.public(), public_metadata(metadata)
    save_diffusers_lora(weights, folder)
    save_kohya_lora(weights, folder / f"{manifest.name}.safetensors", metadata=metadata)
    manifest.save(folder)
    build_model_card(folder).save(folder / "README.md")


# --- Hub repo ids ----------------------------------------------------------------------------------


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub model repo, `owner/name` (the Hub's rules); local files and paths do not."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or name.count("/") != 1 or name.lower().endswith(MODEL_FILE_SUFFIXES):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a Hub repo id of the `owner/name` form that a push and an import need, else an error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        valid = isinstance(repo_id, str)  # validate_repo_id lets None through
    except HFValidationError:
        valid = False
    if valid and "/" not in repo_id:
        raise InvalidRequestError(f"Repo id {repo_id!r} has no owner: use OWNER/NAME, e.g. my-name/{repo_id}.")
    if not valid:
        raise InvalidRequestError(
            f"Repo id {repo_id!r} is not valid: use OWNER/NAME with letters, digits, '-', '_' or '.' "
            "(not first or last; no '--' or '..'; at most 96 characters), e.g. my-name/alps-lora."
        )
    return repo_id
