"""The Generate tab's mode controls: the input image (img2img), the painted or uploaded mask (inpaint), hires fix.

Names follow A1111 so its users find their way; values go to `GenerationRequest` fields of the same names.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from studio.errors import InvalidRequestError

MODES = {"Text to image": "txt2img", "Image to image": "img2img", "Inpaint": "inpaint"}
RESIZE_MODES = ["just resize", "crop and resize", "resize and fill"]
MASKED_CONTENT = ["original", "fill", "latent noise", "latent nothing"]
INPAINT_AREAS = ["Whole picture", "Only masked"]
MASK_MODES = ["Inpaint masked", "Inpaint not masked"]

# The request fields each mode adds to the shared prompt/steps/seed/size/... settings, in API parameter order.
HIRES_FIELDS = ["hires_scale", "hires_width", "hires_height", "hires_upscaler", "hires_steps", "hires_denoise"]
IMG2IMG_FIELDS = ["strength", "resize_mode"]
INPAINT_FIELDS = IMG2IMG_FIELDS + [
    "mask_blur",
    "inpaint_not_masked",
    "masked_content",
    "inpaint_full_res",
    "inpaint_full_res_padding",
]
MODE_FIELDS = {"txt2img": HIRES_FIELDS, "img2img": IMG2IMG_FIELDS, "inpaint": INPAINT_FIELDS}
INTEGER_FIELDS = {"hires_width", "hires_height", "hires_steps", "mask_blur", "inpaint_full_res_padding"}
FLOAT_FIELDS = {"strength", "hires_scale", "hires_denoise"}

# A see-through brush: the painted strokes show what will be repainted without hiding the picture under them.
BRUSH_COLOR = ("#ff2266", 0.6)


def build_image_inputs(boxes: dict) -> dict:
    """The img2img image, the inpaint editor and mask upload, and their settings (hidden until a mode needs them).

    Returns the controls; their containers, which `mode_visibility` shows and hides, go into `boxes`.
    """
    c = {}
    with gr.Group(visible=False) as boxes["img2img"]:
        c["init_image"] = _picture("Input image (drop, upload or paste)", "RGB", 300, "init-image")
    with gr.Group(visible=False) as boxes["inpaint"]:
        c["editor"] = gr.ImageEditor(
            label="Image and mask: paint over what to repaint",
            type="pil",
            image_mode="RGBA",
            sources=["upload", "clipboard"],
            format="png",
            height=360,
            brush=gr.Brush(default_size=24, colors=[BRUSH_COLOR], default_color=BRUSH_COLOR, color_mode="fixed"),
            eraser=gr.Eraser(default_size=24),
            layers=False,
            transforms=(),
            elem_id="inpaint-editor",
        )
        with gr.Accordion("Or upload a mask (white = repaint)", open=False):
            c["mask_upload"] = _picture("Mask", "L", 200, "mask-upload")
    with gr.Group(visible=False) as boxes["image_settings"]:
        with gr.Row():
            c["strength"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength")
            c["resize_mode"] = gr.Radio(RESIZE_MODES, value="just resize", label="Resize mode")
        with gr.Row(visible=False) as boxes["inpaint_settings"]:
            c["mask_blur"] = gr.Slider(0, 64, value=4, step=1, precision=0, label="Mask blur")
            c["mask_mode"] = gr.Radio(MASK_MODES, value=MASK_MODES[0], label="Mask mode")
            c["masked_content"] = gr.Radio(MASKED_CONTENT, value="original", label="Masked content")
        with gr.Row(visible=False) as boxes["inpaint_area"]:
            c["inpaint_area"] = gr.Radio(INPAINT_AREAS, value=INPAINT_AREAS[0], label="Inpaint area")
            c["inpaint_full_res_padding"] = gr.Slider(
                0, 256, value=32, step=4, precision=0, label="Only masked padding, pixels"
            )
    return c


def _picture(label: str, image_mode: str, height: int, elem_id: str) -> gr.Image:
    # PNG: Gradio's default webp would blur a mask's edge and change the picture before it is drawn over.
    return gr.Image(
        label=label,
        type="pil",
        image_mode=image_mode,
        sources=["upload", "clipboard"],
        format="png",
        height=height,
        elem_id=elem_id,
    )


def build_hires_inputs(upscalers: list[str], boxes: dict) -> dict:
    """Hires fix for text to image, in a closed accordion: a second pass at a larger size (A1111 names)."""
    c = {}
    with gr.Accordion("Hires fix: upscale, then a second pass", open=False, elem_id="hires-fix") as boxes["hires"]:
        with gr.Row():
            c["hires_scale"] = gr.Slider(1.0, 4.0, value=1.0, step=0.05, label="Upscale by (1 = off)")
            c["hires_width"] = gr.Slider(0, 4096, value=0, step=8, precision=0, label="Resize width to (0 = by scale)")
            c["hires_height"] = gr.Slider(
                0, 4096, value=0, step=8, precision=0, label="Resize height to (0 = by scale)"
            )
        with gr.Row():
            c["hires_upscaler"] = gr.Dropdown(upscalers, value=upscalers[0] if upscalers else None, label="Upscaler")
            c["hires_steps"] = gr.Slider(0, 150, value=0, step=1, precision=0, label="Hires steps (0 = same)")
            c["hires_denoise"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Hires denoising strength")
    return c


def mode_visibility(boxes: dict, mode_label: str) -> dict:
    """Show the containers of the controls the mode uses and hide the others."""
    mode = MODES.get(mode_label, "txt2img")
    shown = {
        "img2img": mode == "img2img",
        "inpaint": mode == "inpaint",
        "image_settings": mode != "txt2img",
        "inpaint_settings": mode == "inpaint",
        "inpaint_area": mode == "inpaint",
        "hires": mode == "txt2img",
    }
    return {boxes[name]: gr.update(visible=visible) for name, visible in shown.items()}


def mode_label(mode: str) -> str:
    return next(label for label, value in MODES.items() if value == mode)


def page_values(c: dict, values: dict) -> dict:
    """Request fields from the page's mode controls (`values`: component -> value, as Gradio passes a set)."""
    fields = {name: values[c[name]] for name in HIRES_FIELDS + IMG2IMG_FIELDS if c[name] in values}
    fields["mask_blur"] = values[c["mask_blur"]]
    fields["masked_content"] = values[c["masked_content"]]
    fields["inpaint_full_res_padding"] = values[c["inpaint_full_res_padding"]]
    fields["inpaint_not_masked"] = values[c["mask_mode"]] == MASK_MODES[1]
    fields["inpaint_full_res"] = values[c["inpaint_area"]] == INPAINT_AREAS[1]
    return fields


def editor_image_and_mask(editor: dict | None, uploaded: Image.Image | None) -> tuple[Image.Image, Image.Image]:
    """The editor's picture (RGB) and the mask: white where any stroke was painted, or where the upload is light."""
    background = (editor or {}).get("background")
    image = background.convert("RGB") if background is not None else None
    size = image.size if image is not None else (uploaded.size if uploaded is not None else (8, 8))
    mask = Image.new("L", size, 0)
    for layer in (editor or {}).get("layers") or []:
        if layer is None:
            continue
        painted = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
        mask = _union(mask, painted)
    if uploaded is not None:
        mask = _union(mask, uploaded.convert("L").point(lambda v: 255 if v >= 128 else 0))
    if image is None:
        raise InvalidRequestError("Inpaint needs a picture: drop one on the editor, or use Send to inpaint.")
    if mask.getbbox() is None:
        raise InvalidRequestError("Nothing is masked: paint over what to repaint with the brush, or upload a mask.")
    return image, mask


def _union(mask: Image.Image, other: Image.Image) -> Image.Image:
    from PIL import ImageChops

    if other.size != mask.size:
        other = other.resize(mask.size, Image.Resampling.NEAREST)
    return ImageChops.lighter(mask, other)


def typed(fields: dict) -> dict:
    """Numbers as the request expects them: Gradio sliders and JSON clients may send 2.0 for 2."""
    out = dict(fields)
    for name in INTEGER_FIELDS & out.keys():
        out[name] = int(out[name])
    for name in FLOAT_FIELDS & out.keys():
        out[name] = float(out[name])
    return out
