"""A1111-compatible generation metadata ("infotext") in the PNG `parameters` text chunk.

Format, as written by AUTOMATIC1111 and read by its PNG Info tab and by Civitai:

    a photo of mountains <lora:alps:0.8>
    Negative prompt: blurry
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512,
    Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "alps: 1f2e3d4c5b6a", Version: studio 0.1.0

(the last line is one line). Values with commas, colons or newlines are JSON-quoted, as A1111 does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

import studio
from studio.errors import InvalidRequestError, UnreadableImageError

LORA_TAG = re.compile(r"<lora:([^:>]+):(-?[\d.]+)(?::[^>]*)?>")
# A1111's own pattern for `Key: value` pairs, where a value may be a JSON-quoted string.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(value) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def lora_tags(loras: list[tuple[str, float]]) -> str:
    return " ".join(f"<lora:{name}:{weight:g}>" for name, weight in loras)


def split_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Take A1111 `<lora:name:weight>` tags out of a prompt: (clean prompt, [(name, weight)])."""
    loras = [(name.strip(), float(weight)) for name, weight in LORA_TAG.findall(prompt)]
    clean = re.sub(r"\s{2,}", " ", LORA_TAG.sub("", prompt)).strip().strip(",").strip()
    return clean, loras


def parse_lora_weight(text: str) -> tuple[str, float]:
    """`NAME:WEIGHT` (weight optional, default 1) -> (name, weight), as --lora and evaluation candidates take it.

    The weight is after the last ':', so names that contain ':' still work (`a:b:0.5` -> ("a:b", 0.5)).
    """
    name, sep, weight = text.strip().rpartition(":")
    if not sep:
        name, weight = text, "1"
    if not name.strip():
        raise InvalidRequestError(f"{text!r} has an empty LoRA name; write NAME:WEIGHT, e.g. my-lora:0.8.")
    try:
        return name.strip(), float(weight)
    except ValueError:
        raise InvalidRequestError(
            f"LoRA {text!r}: {weight.strip()!r} is not a number; the weight after ':' must be a number, "
            f"e.g. {name.strip()}:0.8."
        ) from None


def build_infotext(*, prompt: str, negative_prompt: str, params: dict) -> str:
    """Infotext from a prompt, a negative prompt and ordered `Key: value` parameters (None values skipped)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [f"{key}: {quote(value)}" for key, value in params.items() if value not in (None, "")]
    pairs.append(f"Version: studio {studio.__version__}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict:
    """Parse infotext into {"Prompt", "Negative prompt", <Key>: <value str>...}, like A1111's PNG Info."""
    lines = text.strip().split("\n")
    params_line = lines[-1] if len(_PAIR.findall(lines[-1])) >= 3 else ""
    body = lines[:-1] if params_line else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt).strip(), "Negative prompt": "\n".join(negative).strip()}
    for key, value in _PAIR.findall(params_line):
        result[key.strip()] = unquote(value.strip())
    return result


def png_info(infotext: str) -> PngInfo:
    info = PngInfo()
    info.add_text("parameters", infotext)
    return info


def read_infotext(image_or_path) -> str | None:
    """The `parameters` chunk of a PNG (A1111), or None when the image carries none.

    Uploaded files are untrusted: empty, truncated and bomb files (a tiny PNG whose header claims 100000x100000)
    raise `UnreadableImageError` naming the file, instead of PIL's errors or decoding gigabytes of pixels.
    """
    if isinstance(image_or_path, Image.Image):
        return _parameters(image_or_path)
    path = Path(image_or_path)
    try:
        with Image.open(path) as image:
            return _parameters(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(
            f"{path.name} is not a readable image ({error}); pick a PNG saved by Studio or AUTOMATIC1111."
        ) from error


def _parameters(image: Image.Image) -> str | None:
    text = image.info.get("parameters")
    # `.text` decodes the pixels to reach chunks after the image data: only for sizes PIL itself calls safe.
    # (`hasattr` runs that property too, so the size is checked first.)
    if text is None and image.width * image.height <= Image.MAX_IMAGE_PIXELS and hasattr(image, "text"):
        text = image.text.get("parameters")
    return text


def image_fields(info: dict) -> dict:
    """`GenerationRequest` image-to-image / inpaint fields from parsed infotext (A1111 names), for "Send to".

    Keys A1111 writes only when they differ from its defaults read back as those defaults, so an inpaint
    infotext without "Masked content" means "original", one without "Inpaint area" means the whole picture.
    """
    fields = {}
    try:
        if "Denoising strength" in info:
            fields["strength"] = float(info["Denoising strength"])
        if "Mask blur" in info:
            fields["mask_blur"] = int(info["Mask blur"])
        if "Masked area padding" in info:
            fields["inpaint_full_res_padding"] = int(info["Masked area padding"])
    except ValueError:
        pass  # a hand-edited value: leave the form as it is
    from studio.generation.images import MASKED_CONTENT, RESIZE_MODES

    if info.get("Resize mode", "").lower() in RESIZE_MODES:
        fields["resize_mode"] = info["Resize mode"].lower()
    if "Mask blur" in info or "Inpaint area" in info or "Mask mode" in info or "Masked content" in info:
        fields["inpaint_full_res"] = info.get("Inpaint area") == "Only masked"
        fields["inpaint_not_masked"] = info.get("Mask mode") == "Inpaint not masked"
        content = info.get("Masked content", "original")
        if content in MASKED_CONTENT:
            fields["masked_content"] = content
    return fields


def hires_params(request) -> dict:
    """A1111's hires fix keys for a `GenerationRequest` ({} without the hires fix); "Denoising strength" is
    written with the main parameters, after "Model", where A1111 puts it."""
    if not request.hires:
        return {}
    params = {}
    if request.hires_width or request.hires_height:
        params["Hires resize"] = f"{request.hires_width}x{request.hires_height}"
    else:
        params["Hires upscale"] = f"{request.hires_scale:g}"
    params["Hires steps"] = request.hires_steps or None  # A1111 leaves it out when it equals Steps
    params["Hires upscaler"] = request.hires_upscaler
    return params


def hires_fields(info: dict) -> dict:
    """`GenerationRequest` hires fields from parsed infotext ({} when the image had no hires fix).

    "Denoising strength" is the hires denoise only next to "Hires upscale"/"Hires resize" (alone it is img2img's).
    """
    if "Hires upscale" not in info and "Hires resize" not in info:
        return {}
    fields = {}
    try:
        if "Hires resize" in info:
            fields["hires_width"], fields["hires_height"] = (int(v) for v in info["Hires resize"].split("x", 1))
        else:
            fields["hires_scale"] = float(info["Hires upscale"])
        fields["hires_steps"] = int(info.get("Hires steps", 0))
        if "Denoising strength" in info:
            fields["hires_denoise"] = float(info["Denoising strength"])
    except ValueError:
        return {}
    if info.get("Hires upscaler"):
        fields["hires_upscaler"] = info["Hires upscaler"]
    return fields
