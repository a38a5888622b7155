"""Put a blend of LoRAs on a loaded pipeline, live: load each adapter once, then only change weights.

    apply_blend(model, [("alps", 0.8), ("watercolor", -0.3)], loras_dir=config.loras_dir)

- An adapter is loaded the first time it is used (`load_adapter`) and stays loaded. kohya/A1111 files are read by
  Studio's kohya reader and handed to diffusers with each layer's own alpha, so the live image is the one A1111 and
  the saved blend draw; diffusers files go to `load_lora_weights` as they are. A change of adapters is one
  `set_adapters` call; a slider move (same adapters, new weights) sets the same per-layer scales directly
  (milliseconds, no file read, no model reload).
- Adapters that leave the blend are deleted from the pipeline, so they cost nothing at generation time.
- The text encoders get their own strength: per adapter (a third tuple element), else the blend's
  text-encoder scale times the adapter's weight.
- `fuse=True` folds the blend into the weights (generation at base speed); any change to the blend
  unfuses first, so a fused blend is never stacked on another.
- Every adapter is checked against the model before anything is touched (wrong base, truncated,
  LyCORIS...), and a load that still fails removes what it added and re-applies the previous blend, so the
  pipeline is left exactly as it was.

What the pipeline currently carries is remembered per pipeline object (weakly: it goes with the pipeline).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from pathlib import Path

import torch

from studio.errors import LoraError, StudioError
from studio.lora.kind_blends import usable_lora
from studio.lora.library import LoraEntry
from studio.lora.requests import BlendRequest
from studio.models.kinds import ModelKind
from studio.models.manager import quiet_logger

log = logging.getLogger(__name__)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclasses.dataclass
class _PipeState:
    applied: tuple = ()
    """((adapter name, {component: weight}), ...) as last given to set_adapters."""

    text_encoder_scale: float = 1.0
    fuse: bool = False
    fused: tuple | None = None
    """The `applied` value that is currently fused into the weights, or None."""

    layer_index: dict = dataclasses.field(default_factory=dict)
    """component -> its peft LoRA layers, for slider moves; rebuilt when the loaded adapters change."""

    layer_index_for: tuple | None = None

    unfused_weights: dict = dataclasses.field(default_factory=dict)
    """CPU copies of the weights a fuse changed, put back on unfuse so no rounding drift is left behind."""


def _state(model) -> _PipeState:
    # Kept on the manager's LoadedModel: it lives and dies with the pipeline it describes.
    if model.lora_state is None:
        model.lora_state = _PipeState()
    return model.lora_state


@dataclasses.dataclass(frozen=True)
class BlendEntry:
    name: str
    weight: float
    text_encoder_weight: float | None = None
    """None: the adapter's weight times the blend's text-encoder scale."""


def adapter_name(entry: LoraEntry) -> str:
    """A peft-safe adapter name that changes when the file does (a retrained LoRA is loaded afresh)."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', entry.name)}_{(entry.addnet_hash or 'nohash')[:8]}"


def _parse(loras) -> list[BlendEntry]:
    """(name, weight[, te_weight]) tuples or BlendEntry; the same name twice adds up, as in A1111."""
    combined: dict[str, BlendEntry] = {}
    for item in loras:
        entry = item if isinstance(item, BlendEntry) else BlendEntry(*item)
        if entry.name in combined:
            previous = combined[entry.name]
            te = None
            if entry.text_encoder_weight is not None or previous.text_encoder_weight is not None:
                te = (previous.text_encoder_weight or 0.0) + (entry.text_encoder_weight or 0.0)
            entry = BlendEntry(entry.name, previous.weight + entry.weight, te)
        combined[entry.name] = entry
    return list(combined.values())


def resolve_blend(loras, *, loras_dir: Path, kind: ModelKind) -> list[tuple[BlendEntry, LoraEntry]]:
    """Each requested adapter with its library entry, refusing any that cannot be used with `kind`."""
    resolved = []
    for blend_entry in _parse(loras):
        resolved.append((blend_entry, usable_lora(loras_dir, blend_entry.name, kind)))
    return resolved


def _component_weights(blend_entry: BlendEntry, entry: LoraEntry, te_scale: float) -> dict[str, float]:
    te = blend_entry.text_encoder_weight
    te = blend_entry.weight * te_scale if te is None else te
    return {c: (blend_entry.weight if c == "unet" else te) for c in entry.components}


def apply_blend(
    model,
    loras,
    *,
    loras_dir: Path,
    text_encoder_scale: float | None = None,
    fuse: bool | None = None,
) -> list[tuple[str, float, str]]:
    """Make the pipeline carry exactly this blend; returns [(name, weight, addnet hash)] for the infotext.

    `text_encoder_scale` and `fuse` are remembered for the pipeline when given (None keeps the last setting),
    so a generation that passes only names and weights keeps what the LoRA tab chose.
    """
    pipe = model.pipe
    state = _state(model)
    resolved = resolve_blend(loras, loras_dir=loras_dir, kind=model.kind)
    te_scale = state.text_encoder_scale if text_encoder_scale is None else float(text_encoder_scale)
    want_fused = state.fuse if fuse is None else bool(fuse)
    applied = tuple((adapter_name(entry), _component_weights(b, entry, te_scale)) for b, entry in resolved)

    previously_fused = state.fused
    if state.fused is not None and (state.fused != applied or not want_fused):
        _unfuse(pipe, state)
    try:
        _load_missing(pipe, state, [(adapter, entry) for (adapter, _w), (_b, entry) in zip(applied, resolved)])
    except LoraError:
        if previously_fused is not None and state.fused is None:
            _fuse(pipe, state, previously_fused)
        raise
    present = _present_adapters(pipe)
    unused = sorted(present - {adapter for adapter, _w in applied})
    if unused:
        pipe.delete_adapters(unused)
    if applied and not unused and [a for a, _w in applied] == [a for a, _w in state.applied]:
        _set_weights(pipe, state, applied)  # a slider move: the same adapters with new weights
    elif applied:
        pipe.set_adapters([a for a, _w in applied], [dict(w) for _a, w in applied])
        state.layer_index_for = None  # adapters were loaded or deleted: list the LoRA layers afresh next time
    if applied and want_fused and state.fused is None:
        _fuse(pipe, state, applied)
    state.applied, state.text_encoder_scale, state.fuse = applied, te_scale, want_fused
    return [(entry.name, b.weight, entry.addnet_hash or "") for b, entry in resolved]


def _set_weights(pipe, state: _PipeState, applied: tuple) -> None:
    """What `set_adapters` does to the scales (peft's `set_scale` per LoRA layer and adapter), without walking every
    module of the UNet twice: a slider move on the full SD1.5 UNet drops from ~40 ms to ~2 ms. The active adapters
    are already the right ones (same names, nothing loaded or deleted since the last `set_adapters`)."""
    for component, layers in _layer_index(pipe, state).items():
        for layer in layers:
            for adapter, weights in applied:
                if component in weights:
                    layer.set_scale(adapter, weights[component])


def _layer_index(pipe, state: _PipeState) -> dict:
    from peft.tuners.lora import LoraLayer

    adapters = tuple(sorted(_present_adapters(pipe)))
    if state.layer_index_for != adapters:
        state.layer_index = {
            component: [m for m in getattr(pipe, component).modules() if isinstance(m, LoraLayer)]
            for component in _lora_components(pipe)
        }
        state.layer_index_for = adapters
    return state.layer_index


def _present_adapters(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _lora_components(pipe) -> list[str]:
    return [c for c in pipe._lora_loadable_modules if getattr(pipe, c, None) is not None]


def _lora_layers(pipe):
    from peft.tuners.lora import LoraLayer

    for component in _lora_components(pipe):
        for name, module in getattr(pipe, component).named_modules():
            if isinstance(module, LoraLayer):
                yield f"{component}.{name}", module.get_base_layer()


def _fuse(pipe, state: _PipeState, applied: tuple) -> None:
    # Unfusing subtracts the LoRA delta again, which is exact only up to rounding (visible in fp16):
    # keep the original weights to put back instead.
    state.unfused_weights = {name: base.weight.detach().to("cpu", copy=True) for name, base in _lora_layers(pipe)}
    pipe.fuse_lora(components=_lora_components(pipe), adapter_names=[a for a, _w in applied])
    state.fused = applied


def _unfuse(pipe, state: _PipeState) -> None:
    pipe.unfuse_lora(components=_lora_components(pipe))  # diffusers' and peft's bookkeeping
    with torch.no_grad():
        for name, base in _lora_layers(pipe):
            saved = state.unfused_weights.get(name)
            if saved is not None:
                base.weight.copy_(saved)
    state.unfused_weights, state.fused = {}, None


def _load_missing(pipe, state: _PipeState, wanted: list[tuple[str, LoraEntry]]) -> None:
    """Load adapters not yet on the pipeline; on failure remove them again and restore the previous blend."""
    present = _present_adapters(pipe)
    added = []
    for adapter, entry in wanted:
        if adapter in present:
            continue
        added.append(adapter)
        try:
            # transformers 5 logs a long "LOAD REPORT" calling every text-encoder LoRA weight MISSING when diffusers
            # loads an adapter into a CLIP encoder, although the weights are loaded (tests/test_lora_files.py and the
            # text-encoder strength test prove it). The false alarm would bury real messages in the console.
            with quiet_logger("transformers.integrations.peft"):
                load_adapter(pipe, entry, adapter)
        except (StudioError, ValueError, KeyError, RuntimeError, OSError, TypeError) as e:
            _roll_back(pipe, state, added)
            raise LoraError(
                f"LoRA {entry.name!r} could not be loaded into this model ({_short(e)}); the blend is unchanged. "
                f"Check that {entry.weights_file.name} was made for this base model."
            ) from e
        log.info("Loaded LoRA %s as adapter %s", entry.name, adapter)


def load_adapter(pipe, entry: LoraEntry, adapter: str) -> None:
    """Load one adapter file onto the pipeline as peft adapter `adapter`.

    kohya/A1111 files are read by `read_kohya_layers` (the reader `read_lora` and the saved blend use) and handed to
    diffusers as a peft state dict with its LoraConfig, each layer at its own alpha / rank as kohya and A1111 draw it.
    `load_lora_weights` on the file itself gives layers whose alpha differs from the most common one (attention
    `to_q/k/v/out`, text-encoder `self_attn`), and layers without alpha, the most common alpha: its alpha patterns are
    named `...attn1.processor.to_q_lora.down.weight`, which match no module. Files that reader does not take (the SGM
    UNet names, keys other than lora_down/lora_up/alpha) and diffusers files load with `load_lora_weights` as before.
    """
    weights = entry.weights_file
    if entry.format == "kohya":
        try:
            state_dict, metadata = _kohya_as_peft(weights)
        except LoraError as e:
            log.info("%s: %s; loading it with diffusers' own kohya reader", weights.name, _short(e))
        else:
            _load_peft_state_dict(pipe, state_dict, metadata, adapter)
            return
    pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name=adapter)


_KOHYA_TENSOR = re.compile(r"lora_(unet|te[12]?)_\w+\.(lora_down\.weight|lora_up\.weight|alpha)")


def _kohya_as_peft(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A kohya file as diffusers' own files are: `<component>.<module>.lora_A/B.weight` tensors (as stored) and
    `lora_adapter_metadata` (peft LoraConfig fields per component) whose `alpha_pattern` / `rank_pattern` give every
    layer whose alpha or rank is not the most common one its own, by its full module path."""
    from studio.lora.files import _hub_module_path, read_kohya_layers
    from studio.models.kinds import read_safetensors_header

    header = read_safetensors_header(path)
    other = sorted(k for k in header if k != "__metadata__" and not _KOHYA_TENSOR.fullmatch(k))
    if other:
        raise LoraError(f"has tensors other than lora_down/lora_up/alpha ({', '.join(other[:3])})")
    _kind, layers, module_alphas = read_kohya_layers(path)
    state_dict, metadata = {}, {}
    for component, component_layers in layers.items():
        state_dict.update({f"{component}.{_hub_module_path(component, k)}": t for k, t in component_layers.items()})
        config = _lora_config(component_layers, module_alphas[component])
        metadata.update({f"{component}.{field}": value for field, value in config.items()})
    return state_dict, metadata


def _lora_config(layers: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict:
    """peft LoraConfig fields: the most common rank and alpha, the others per module. peft matches a pattern key as
    a regular expression against the end of a module path, so the paths are escaped (`.` is not any character)."""
    ranks = {module: layers[f"{module}.lora_A.weight"].shape[0] for module in alphas}
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": sorted(alphas),
        "rank_pattern": {re.escape(m): r for m, r in ranks.items() if r != rank},
        "alpha_pattern": {re.escape(m): a for m, a in alphas.items() if a != alpha},
    }


def _load_peft_state_dict(pipe, state_dict: dict[str, torch.Tensor], metadata: dict, adapter: str) -> None:
    """What `load_lora_weights` does after reading its file, with our LoraConfig (`metadata`) instead of the one
    diffusers would guess from kohya's alphas. Only the components the file has are loaded."""
    components = {key.partition(".")[0] for key in state_dict}
    missing = sorted(components - set(_lora_components(pipe)))
    if missing:
        raise LoraError(f"the file has layers for {missing}, which this pipeline does not have")
    common = dict(adapter_name=adapter, metadata=metadata, _pipeline=pipe, low_cpu_mem_usage=True)
    te_scale = pipe.lora_scale
    if "unet" in components:
        pipe.load_lora_into_unet(state_dict, network_alphas=None, unet=pipe.unet, **common)
    for component in TEXT_ENCODERS:
        if component in components:
            encoder = getattr(pipe, component)
            pipe.load_lora_into_text_encoder(
                state_dict, network_alphas=None, text_encoder=encoder, prefix=component, lora_scale=te_scale, **common
            )


def _roll_back(pipe, state: _PipeState, added: list[str]) -> None:
    leftovers = sorted(_present_adapters(pipe) & set(added))
    if leftovers:
        pipe.delete_adapters(leftovers)
    if state.applied:
        # Loading an adapter makes it the only active one; give the previous blend back its weights.
        pipe.set_adapters([a for a, _w in state.applied], [dict(w) for _a, w in state.applied])


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def blend_state(model) -> dict:
    """What the model's pipeline carries now (for the UI): adapters with weights, text-encoder scale, fused or not."""
    state = _state(model)
    return {
        "adapters": [(adapter, dict(weights)) for adapter, weights in state.applied],
        "text_encoder_scale": state.text_encoder_scale,
        "fused": state.fused is not None,
    }


def apply_request(manager, request: BlendRequest) -> list[tuple[str, float, str]]:
    """Take the GPU, load the model if needed, and put the blend on it."""
    request.validate()
    with manager.acquire(request.model) as model:
        return apply_blend(
            model,
            list(request.loras),
            loras_dir=manager.config.loras_dir,
            text_encoder_scale=request.text_encoder_scale,
            fuse=request.fuse,
        )
