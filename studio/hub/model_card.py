"""The README.md model card of an adapter, built from its `adapter.json` and `samples/`.

The same card is written locally by the trainer and the blend merger, and regenerated with the repo id
when the adapter is pushed to the Hub. An adapter made elsewhere (a kohya file, a diffusers folder) has no
`adapter.json`: a push passes the manifest its header gives (`studio.lora.library.header_manifest`) and the
files it uploads with their hashes. Front matter follows the Hub's conventions for LoRA repos (the ones
diffusers' training scripts write): `base_model`, `license`, `tags`, `instance_prompt` and a `widget` list
of `{"text": prompt, "output": {"url": "samples/x.png"}}` that the Hub renders as the gallery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from huggingface_hub import ModelCard, ModelCardData

import studio
from studio.lora.folder import DIFFUSERS_WEIGHTS, MANIFEST, AdapterManifest, is_hub_id, public_text, read_manifest

DEFAULT_LICENSES = {"sd15": "creativeml-openrail-m", "sdxl": "openrail++"}
BASE_TAGS = {"sd15": "stable-diffusion", "sdxl": "stable-diffusion-xl"}
# Shown in usage snippets when the base is not on the Hub; never put in the front matter as if it were the base.
REFERENCE_BASES = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
KIND_LABELS = {"sd15": "Stable Diffusion 1.5", "sdxl": "Stable Diffusion XL"}
DEMO_MODELS = ("demo-sd15", "demo-sdxl")


@dataclass(frozen=True)
class Sample:
    file: str  # relative posix path inside the adapter folder, e.g. "samples/step-500-0.png"
    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    step: int | None = None


@dataclass(frozen=True)
class CardFile:
    """A file of the adapter repo as the card lists it."""

    name: str  # path in the repo, e.g. "alps.safetensors"
    format: str  # "diffusers", "kohya", "lycoris:<type>" or "manifest"
    sha256: str | None = None
    addnet_hash: str | None = None  # A1111's short hash of the tensor data ("Lora hashes" in infotexts)


def local_files(adapter_dir: Path, name: str) -> list[CardFile]:
    """The files of a Studio adapter folder that exist (diffusers, kohya, manifest), hashed as they are."""
    from studio.lora.library import addnet_hash
    from studio.models.hashes import sha256_file

    adapter_dir = Path(adapter_dir)
    files = []
    for file, fmt in ((DIFFUSERS_WEIGHTS, "diffusers"), (f"{name}.safetensors", "kohya"), (MANIFEST, "manifest")):
        path = adapter_dir / file
        if path.is_file():
            hashes = (sha256_file(path), addnet_hash(path)) if fmt != "manifest" else (None, None)
            files.append(CardFile(file, fmt, *hashes))
    return files


def collect_samples(adapter_dir: Path, manifest: AdapterManifest) -> list[Sample]:
    """Samples listed in the manifest that exist, then any other PNG in samples/ (prompt from its infotext)."""
    adapter_dir = Path(adapter_dir).resolve()
    samples, seen = [], set()
    for entry in manifest.samples:
        if not isinstance(entry, dict) or not _inside(adapter_dir, str(entry.get("file", ""))):
            continue  # a hand-edited manifest must not point the card (or an upload) outside the folder
        file = PurePosixPath(entry["file"]).as_posix()
        if file in seen:
            continue
        seen.add(file)
        samples.append(
            Sample(
                file,
                str(entry.get("prompt") or ""),
                str(entry.get("negative_prompt") or ""),
                entry.get("seed"),
                entry.get("step"),
            )
        )
    for path in sorted((adapter_dir / "samples").glob("*.png")):
        file = path.relative_to(adapter_dir).as_posix()
        if file not in seen:
            samples.append(_sample_from_png(path, file))
    return samples


def _inside(folder: Path, relative: str) -> bool:
    if not relative or relative.startswith("/") or "\\" in relative:
        return False
    path = (folder / relative).resolve()
    return path.is_relative_to(folder) and path.is_file()


def _sample_from_png(path: Path, file: str) -> Sample:
    from studio.generation.infotext import parse_infotext, read_infotext

    try:
        text = read_infotext(path)
    except OSError:
        text = None
    info = parse_infotext(text) if text else {}
    seed = info.get("Seed")
    seed = int(seed) if str(seed).isdigit() else None
    return Sample(file, public_text(info.get("Prompt", "")), public_text(info.get("Negative prompt", "")), seed)


def card_tags(kind: str, user_tags: Sequence[str]) -> list[str]:
    """The standard LoRA tags, then the user's (stripped, without duplicates, in the order given)."""
    tags = ["lora", "text-to-image", "diffusers", BASE_TAGS[kind]]
    for tag in user_tags:
        tag = str(tag).strip()
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def build_model_card(
    adapter_dir: Path,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    tags: Sequence[str] = (),
    manifest: AdapterManifest | None = None,
    files: Sequence[CardFile] | None = None,
) -> ModelCard:
    """The model card of `adapter_dir` (reads adapter.json and samples/); `repo_id` fills the usage snippets.

    `manifest` replaces adapter.json (an adapter made elsewhere, described by its header); `files` the files the
    Files section lists with their hashes (default: the Studio files in the folder, hashed as they are).
    """
    adapter_dir = Path(adapter_dir)
    # Studio's adapter.json; else what a file made elsewhere says about itself (also once pushed and imported).
    manifest = (manifest or read_manifest(adapter_dir)).public()
    made_here = not manifest.extra.get("made_elsewhere")
    kind = manifest.base_kind.value
    name = manifest.name or (adapter_dir.name if adapter_dir.is_dir() else adapter_dir.stem)
    files = list(local_files(adapter_dir, name) if files is None else files)
    base = manifest.base_model
    samples = collect_samples(adapter_dir, manifest) if adapter_dir.is_dir() else []
    trigger_words = manifest.trigger_words

    data = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        license=license or DEFAULT_LICENSES[kind],
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=card_tags(kind, tags),
        instance_prompt=", ".join(trigger_words) or None,
        widget=[_widget(sample) for sample in samples] or None,
    )
    body = "\n".join(
        part
        for part in (
            _intro(name, kind, base, manifest, made_here),
            _trigger_section(trigger_words),
            _samples_section(samples),
            _usage_section(name, kind, base, trigger_words, repo_id, adapter_dir, files),
            _training_section(manifest),
            _files_section(files, made_here=made_here),
        )
        if part
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _widget(sample: Sample) -> dict:
    entry = {"text": sample.prompt, "output": {"url": sample.file}}
    if sample.negative_prompt:
        entry["parameters"] = {"negative_prompt": sample.negative_prompt}
    return entry


def _base_description(kind: str, base: str) -> str:
    if base in DEMO_MODELS:
        return f"Studio's built-in tiny `{base}` model (random weights, for testing only; not on the Hub)"
    if is_hub_id(base):
        return f"[{base}](https://huggingface.co/{base}) ({KIND_LABELS[kind]})"
    if base:
        return f"a local {KIND_LABELS[kind]} model, `{_cell(base)}` (not a Hub repository)"
    return f"a {KIND_LABELS[kind]} model"


def _intro(name: str, kind: str, base: str, manifest: AdapterManifest, made_here: bool) -> str:
    rank, alpha = manifest.rank, manifest.alpha
    shape = f" with rank {rank} and alpha {alpha}" if rank is not None else ""
    te = " The text encoder was trained too." if manifest.text_encoder else ""
    lines = [f"# {name}", "", f"A LoRA adapter{shape} for {_base_description(kind, base)}.{te}"]
    blend = manifest.blend
    if blend:
        parts = ", ".join(f"`{_cell(item.get('name', '?'))}` × {item.get('weight', 1):g}" for item in blend)
        lines += ["", f"It is a blend of {parts}, merged into one adapter."]
    created = manifest.created
    made = f" on {created}" if created else ""
    version = manifest.studio_version
    if made_here:
        lines += ["", f"Made with Studio{f' {version}' if version else ''}{made}.", ""]
    else:  # described by its file's header: trained elsewhere (kohya's sd-scripts, another UI)
        lines += ["", f"Made outside Studio{made}; shared with Studio {studio.__version__}.", ""]
    return "\n".join(lines)


def _trigger_section(trigger_words: list[str]) -> str:
    if not trigger_words:
        return "## Trigger words\n\nNo trigger words: the adapter applies to any prompt.\n"
    words = ", ".join(f"`{_cell(w)}`" for w in trigger_words)
    return f"## Trigger words\n\nUse {words} in the prompt to trigger the style.\n"


def _samples_section(samples: list[Sample]) -> str:
    if not samples:
        return ""
    lines = [
        "## Samples",
        "",
        "<Gallery />",
        "",
        "| Image | Prompt | Negative prompt | Seed | Step |",
        "|---|---|---|---|---|",
    ]
    for s in samples:
        lines.append(
            f"| ![{_cell(s.prompt)[:40]}]({s.file}) | {_cell(s.prompt)} | {_cell(s.negative_prompt)} | "
            f"{'' if s.seed is None else s.seed} | {'' if s.step is None else s.step} |"
        )
    return "\n".join(lines) + "\n"


def _usage_section(
    name: str,
    kind: str,
    base: str,
    trigger_words: list[str],
    repo_id: str | None,
    adapter_dir: Path,
    files: Sequence[CardFile],
) -> str:
    pipeline_id = base if is_hub_id(base) else REFERENCE_BASES[kind]
    base_note = "" if is_hub_id(base) else f"  # any {KIND_LABELS[kind]} model"
    local = f"loras/{adapter_dir.name}" if adapter_dir.is_dir() else "loras"
    source = f'"{repo_id}"' if repo_id else f'"{local}"'
    prompt = ", ".join(trigger_words + ["your prompt"])
    by_format = {}
    for file in files:
        by_format.setdefault(file.format.split(":")[0], file.name)
    if not by_format.keys() - {"manifest"}:  # no weights listed: the files a Studio adapter folder has
        by_format.update(diffusers=DIFFUSERS_WEIGHTS, kohya=f"{name}.safetensors")
    # diffusers reads its own format and kohya files; LyCORIS types it cannot load.
    weights = by_format.get("diffusers") or by_format.get("kohya")
    kohya = by_format.get("kohya") or by_format.get("lycoris")
    sections = ["## Use it", ""]
    if weights:
        sections.append(f"""### diffusers

```python
import torch
from diffusers import AutoPipelineForText2Image

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
pipe = AutoPipelineForText2Image.from_pretrained("{pipeline_id}", dtype=dtype).to(device){base_note}
pipe.load_lora_weights({source}, weight_name="{weights}")
image = pipe("{_py(prompt)}", num_inference_steps=30).images[0]
image.save("lora.png")
```
""")
    if kohya:
        stem = PurePosixPath(kohya).stem
        sections.append(f"""### AUTOMATIC1111 / Forge

Download `{kohya}` into `models/Lora/` and add `<lora:{stem}:1>` to the prompt{_with(trigger_words)}.

### ComfyUI

Download `{kohya}` into `models/loras/` and load it with a **LoraLoader** node between the checkpoint loader and
the sampler (strength 1.0){_with(trigger_words)}.
""")
    else:
        sections.append("AUTOMATIC1111, Forge and ComfyUI read kohya-format LoRA files; this adapter has none.\n")
    return "\n".join(sections)


def _with(trigger_words: list[str]) -> str:
    return f", together with {', '.join(f'`{_cell(w)}`' for w in trigger_words)}" if trigger_words else ""


def _training_section(manifest: AdapterManifest) -> str:
    settings = manifest.settings
    if not settings:
        return ""
    lines = ["## Training settings", "", "| Setting | Value |", "|---|---|"]
    for key, value in settings.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        lines.append(f"| {_cell(key)} | {_cell(text)} |")
    return "\n".join(lines) + "\n"


def _files_section(files: Sequence[CardFile], *, made_here: bool) -> str:
    described = {
        "diffusers": "diffusers format (`load_lora_weights`)"
        + (", LoRA alpha kept in its metadata." if made_here else "."),
        "kohya": "kohya format for AUTOMATIC1111, Forge and ComfyUI.",
        "lycoris": "LyCORIS format for AUTOMATIC1111, Forge and ComfyUI.",
        "manifest": "Studio's manifest (base model, rank, alpha, trigger words, settings).",
    }
    lines = []
    for file in files:
        line = f"- `{file.name}`: {described.get(file.format.split(':')[0], 'a file of the adapter.')}"
        if file.sha256:
            line += f" SHA256 `{file.sha256}` (AutoV2 `{file.sha256[:10].upper()}`)"
            line += f", A1111 hash `{file.addnet_hash}`." if file.addnet_hash else "."
        lines.append(line)
    return "## Files\n\n" + "\n".join(lines) + "\n" if lines else ""


def _cell(text) -> str:
    """Text safe inside a Markdown table cell or inline code: one line, no column breaks, no backticks."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")


def _py(text: str) -> str:
    """Text safe inside a double-quoted Python string literal in a snippet."""
    return json.dumps(text, ensure_ascii=False)[1:-1]
