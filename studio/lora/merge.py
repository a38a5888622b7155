""" "Save blend as new LoRA": merge weighted adapters into one adapter that reproduces the blend at strength 1.

A blend adds, per layer, sum_i w_i * (alpha_i / r_i) * B_i @ A_i. Stacking the factors along the rank axis,

    A = [A_1; A_2; ...]      B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]      (s_i = alpha_i / r_i)

gives B @ A = that same sum, exactly (no SVD, nothing lost), with rank r_1 + r_2 + ... Layers that only some
adapters touch get zero rows/columns so every layer of a component has the same rank, and alpha = rank
(scale 1), which both diffusers and kohya loaders read without ambiguity.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import torch

import studio
from studio.atomic import disk_full_as_error, make_readable, replace_folder, restore_replaced, staging_folder
from studio.errors import LoraError, UnsafePathError
from studio.lora.blend import BlendEntry, resolve_blend
from studio.lora.files import LoraWeights, read_lora
from studio.lora.folder import AdapterManifest, kohya_metadata, save_adapter_files
from studio.lora.requests import SaveBlendRequest
from studio.models.kinds import ModelKind


def merge_weights(parts: list[tuple[LoraWeights, dict[str, float]]], kind: ModelKind) -> LoraWeights:
    """One LoraWeights equal to sum of parts, each scaled per component ({component: weight})."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        # module -> [(A, B scaled)], in blend order
        factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for weights, component_weights in parts:
            weight = component_weights.get(component, 0.0)
            if weight == 0.0 or component not in weights.layers:
                continue
            for module in weights.modules(component):
                down = weights.layers[component][f"{module}.lora_A.weight"].float()
                up = weights.layers[component][f"{module}.lora_B.weight"].float()
                scale = weight * weights.alphas[component] / down.shape[0]
                factors.setdefault(module, []).append((down, up * scale))
        if not factors:
            continue
        rank = max(sum(down.shape[0] for down, _up in pairs) for pairs in factors.values())
        merged = {}
        for module, pairs in factors.items():
            down = torch.cat([d for d, _u in pairs], dim=0)
            up = torch.cat([u for _d, u in pairs], dim=1)
            pad = rank - down.shape[0]
            if pad:
                down = torch.cat([down, down.new_zeros((pad, *down.shape[1:]))], dim=0)
                up = torch.cat([up, up.new_zeros((up.shape[0], pad, *up.shape[2:]))], dim=1)
            merged[f"{module}.lora_A.weight"] = down
            merged[f"{module}.lora_B.weight"] = up
        layers[component] = merged
    if not layers:
        raise LoraError("Every LoRA in the blend has strength 0; there is nothing to save.")
    alphas = {component: float(next(iter(lay.values())).shape[0]) for component, lay in layers.items()}
    return LoraWeights(kind=kind, layers=layers, alphas=alphas)


def save_blend(request: SaveBlendRequest, *, loras_dir: Path) -> Path:
    """Write `loras/<name>/` (diffusers + kohya files, adapter.json, README.md); returns the folder."""
    request.validate()
    loras_dir = Path(loras_dir)
    target = loras_dir / request.name
    if not target.resolve().is_relative_to(loras_dir.resolve()):
        raise UnsafePathError(f"Adapter name {request.name!r} would leave the LoRA folder; pick a plain name.")
    restore_replaced(target)  # a version a killed save left aside counts as there
    single_file = loras_dir / f"{request.name}.safetensors"
    if single_file.exists():
        # A folder of the same name would hide the file from the library: overwrite replaces folders only.
        raise LoraError(
            f"{single_file.name} in the LoRA folder already has the name {request.name!r}; pick another name "
            "(overwrite replaces saved blends, never a LoRA file)."
        )
    if target.exists() and not request.overwrite:
        raise LoraError(f"A LoRA named {request.name!r} already exists; pick another name or choose overwrite.")
    resolved = resolve_blend(request.loras, loras_dir=loras_dir, kind=request.kind)
    parts = []
    for blend_entry, entry in resolved:
        weights = read_lora(entry.weights_file)
        te = blend_entry.text_encoder_weight
        te = blend_entry.weight * request.text_encoder_scale if te is None else te
        parts.append((weights, {"unet": blend_entry.weight, "text_encoder": te, "text_encoder_2": te}))
    merged = merge_weights(parts, request.kind)
    triggers = list(dict.fromkeys(word for _b, entry in resolved for word in entry.trigger_words))
    return _write_folder(target, merged, request, resolved, triggers)


def _write_folder(target: Path, merged: LoraWeights, request: SaveBlendRequest, resolved, triggers) -> Path:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    blend = [{"name": entry.name, "weight": b.weight, **_te(b)} for b, entry in resolved]
    manifest = AdapterManifest(
        name=request.name,
        base_model=request.base_model,
        base_kind=request.kind,
        trigger_words=triggers,
        rank=merged.rank(),
        alpha=float(merged.rank()),
        text_encoder=any(c != "unet" for c in merged.layers),
        settings=None,
        blend=blend,
        samples=[],
        created=now.isoformat(),
        studio_version=studio.__version__,
    )
    recipe = ", ".join(f"{b['name']}:{b['weight']:g}" for b in blend)
    metadata = kohya_metadata(manifest, comment=f"Blend of {recipe} (Studio, exact rank concatenation)")
    tmp = staging_folder(target)
    try:
        with disk_full_as_error(target.parent):
            save_adapter_files(tmp, merged, manifest, metadata=metadata)
        make_readable(tmp)
        replace_folder(tmp, target, overwrite=request.overwrite)  # the checks above allowed an overwrite
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return target


def _te(blend_entry: BlendEntry) -> dict:
    te = blend_entry.text_encoder_weight
    return {} if te is None else {"text_encoder_weight": te}
