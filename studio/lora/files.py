"""LoRA weights on disk: the diffusers/peft file and the kohya/A1111 file, both ways.

`LoraWeights` holds what a LoRA is, independent of the file format: per component ("unet",
"text_encoder", "text_encoder_2") the peft state dict (`<module path>.lora_A.weight` /
`.lora_B.weight`, as `peft.get_peft_model_state_dict` returns it) and the `lora_alpha`, so the
effect of each layer is `B @ A * alpha / rank`.

Two writers, one reader:
- `save_diffusers_lora`: `pytorch_lora_weights.safetensors` as `pipe.save_lora_weights` writes it, with the
  adapter metadata (`lora_alpha`, `r`, target modules) that keeps alpha on reload; without it diffusers
  reloads the file at alpha = rank, a different effect. Text-encoder keys are named as the Hub's LoRAs name
  them (`text_encoder.text_model.encoder.layers...`), so the file loads on transformers 4 and 5.
- `save_kohya_lora`: the A1111/ComfyUI/Civitai layout, `lora_unet_<module path with _>.lora_down.weight`,
  `.lora_up.weight` and `.alpha`; `lora_te_` for the SD1.5 text encoder, `lora_te1_`/`lora_te2_` for SDXL.
  The mapping is written here rather than taken from diffusers' `convert_state_dict_to_kohya`, whose keys
  diffusers 0.42 cannot load back; tests prove both files reload to the same image as the live adapter.
- `read_lora`: either format back into `LoraWeights` (used to merge a blend into one adapter); `read_kohya_layers`
  gives a kohya file's layers with each layer's own alpha (used by the live blend, see `blend.load_adapter`).
  kohya files are renamed by diffusers' own reader (`lora_state_dict` + its peft conversion, what
  `load_lora_weights` runs), except the few layers it misreads (`_read_kohya_with_diffusers` lists them), which
  keep the hand-written `module_from_kohya`. Diffusers files are read with or without the `text_model.` level of
  the first text encoder.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from studio.atomic import atomic_file
from studio.errors import LoraError, UnsupportedModelError
from studio.lora.folder import DIFFUSERS_WEIGHTS
from studio.models.kinds import ModelKind, read_safetensors_header

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# diffusers keeps the adapter config (r, lora_alpha, target_modules) as JSON under this header key.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
KOHYA_PREFIXES = {
    ModelKind.SD15: {"unet": "lora_unet_", "text_encoder": "lora_te_"},
    ModelKind.SDXL: {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
}
# The architecture names of the safetensors "modelspec" convention (also read by A1111 and ComfyUI).
MODELSPEC_ARCHITECTURE = {
    ModelKind.SD15: "stable-diffusion-v1/lora",
    ModelKind.SDXL: "stable-diffusion-xl-v1-base/lora",
}

# Module-name pieces that themselves contain "_": kohya names replace every "." with "_", so reading a
# kohya name back means re-joining these. Longest first, so `time_emb_proj` wins over shorter pieces.
_COMPOUNDS = sorted(
    [
        "down_blocks",
        "up_blocks",
        "mid_block",
        "transformer_blocks",
        "to_q",
        "to_k",
        "to_v",
        "to_out",
        "proj_in",
        "proj_out",
        "time_emb_proj",
        "conv_shortcut",
        "conv_in",
        "conv_out",
        "time_embedding",
        "add_embedding",
        "linear_1",
        "linear_2",
        "text_model",
        "self_attn",
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "text_projection",
        "conv_norm_out",
        "time_proj",
        "add_time_proj",
    ],
    key=len,
    reverse=True,
)
_COMPOUND_PATTERNS = [
    (re.compile(rf"(?<![A-Za-z0-9]){re.escape(c.replace('_', '.'))}(?![A-Za-z0-9])"), c) for c in _COMPOUNDS
]


@dataclasses.dataclass(frozen=True)
class LoraWeights:
    kind: ModelKind
    layers: dict[str, dict[str, torch.Tensor]]
    """component -> peft state dict ("<module path>.lora_A.weight" / "<module path>.lora_B.weight")."""

    alphas: dict[str, float]
    """component -> lora_alpha (scale = alpha / rank of each layer)."""

    def modules(self, component: str) -> list[str]:
        """Module paths of a component that carry a LoRA, in file order."""
        suffix = ".lora_A.weight"
        return [key[: -len(suffix)] for key in self.layers.get(component, {}) if key.endswith(suffix)]

    def rank(self) -> int:
        """The most common rank over all layers (what users call "the rank")."""
        ranks = collections.Counter(
            tensor.shape[0] for layers in self.layers.values() for key, tensor in layers.items() if ".lora_A." in key
        )
        return ranks.most_common(1)[0][0] if ranks else 0


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write next to the target, then os.replace: a crash never leaves a half-written adapter behind."""
    with atomic_file(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return Path(path)


def _check_weights(weights: LoraWeights) -> None:
    unknown = set(weights.layers) - set(KOHYA_PREFIXES[weights.kind])
    if unknown:
        raise LoraError(
            f"LoRA components {sorted(unknown)} do not exist in {weights.kind.label}; "
            f"expected {list(KOHYA_PREFIXES[weights.kind])}."
        )
    for component, layers in weights.layers.items():
        if layers and component not in weights.alphas:
            raise LoraError(f"LoRA component {component!r} has layers but no alpha; pass alphas[{component!r}].")


def _adapter_config(weights: LoraWeights, component: str) -> dict:
    """The peft LoraConfig fields diffusers rebuilds the adapter from (rank exceptions via rank_pattern)."""
    ranks = {m: weights.layers[component][f"{m}.lora_A.weight"].shape[0] for m in weights.modules(component)}
    rank = collections.Counter(ranks.values()).most_common(1)[0][0]
    config = {"r": rank, "lora_alpha": weights.alphas[component], "target_modules": sorted(ranks)}
    pattern = {m: r for m, r in ranks.items() if r != rank}
    if pattern:
        config["rank_pattern"] = pattern
    return config


def save_diffusers_lora(weights: LoraWeights, folder: Path) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` (loads with `pipe.load_lora_weights(folder)`), atomically."""
    _check_weights(weights)
    tensors, adapter_metadata = {}, {}
    for component, layers in weights.layers.items():
        if not layers:
            continue
        tensors.update({f"{component}.{_hub_module_path(component, key)}": tensor for key, tensor in layers.items()})
        adapter_metadata.update({f"{component}.{k}": v for k, v in _adapter_config(weights, component).items()})
    if not tensors:
        raise LoraError("This LoRA has no layers to save.")
    metadata = {
        "format": "pt",
        ADAPTER_METADATA_KEY: json.dumps(adapter_metadata, indent=2, sort_keys=True),
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[weights.kind],
    }
    return _atomic_save(tensors, Path(folder) / DIFFUSERS_WEIGHTS, metadata)


def _hub_module_path(component: str, key: str) -> str:
    """CLIPTextModel keys as transformers 4 named them (`text_model.encoder.layers...`), as the Hub's LoRAs have them.

    transformers 5 dropped the `text_model.` level of CLIPTextModel (not of CLIPTextModelWithProjection); diffusers
    strips it again when the text encoder has no such level, so the file loads on transformers 4 and 5. The adapter
    metadata keeps the short paths: peft matches `target_modules` and `rank_pattern` as suffixes, on either layout.
    """
    if component == "text_encoder" and not key.startswith("text_model."):
        return f"text_model.{key}"
    return key


def kohya_name(kind: ModelKind, component: str, module: str) -> str:
    """`lora_unet_down_blocks_0_..._to_q` / `lora_te_text_model_encoder_layers_0_self_attn_q_proj`.

    SDXL's second encoder has its `text_projection` beside `text_model`, not in it: `lora_te2_text_projection`, as
    A1111, ComfyUI and OneTrainer name it.
    """
    if component != "unet" and not module.startswith("text_model.") and module != _TEXT_PROJECTION:
        # transformers 5 dropped the `text_model.` level of CLIPTextModel; A1111 and diffusers expect it.
        module = f"text_model.{module}"
    return KOHYA_PREFIXES[kind][component] + module.replace(".", "_")


_TEXT_PROJECTION = "text_projection"


def save_kohya_lora(weights: LoraWeights, path: Path, *, metadata: dict[str, str]) -> Path:
    """Write one kohya/A1111 `.safetensors` (only `lora_unet_`/`lora_te*_` keys), atomically."""
    _check_weights(weights)
    tensors = {}
    for component, layers in weights.layers.items():
        alpha = torch.tensor(float(weights.alphas.get(component, 0.0)), dtype=torch.float32)
        for module in weights.modules(component):
            name = kohya_name(weights.kind, component, module)
            tensors[f"{name}.lora_down.weight"] = layers[f"{module}.lora_A.weight"]
            tensors[f"{name}.lora_up.weight"] = layers[f"{module}.lora_B.weight"]
            tensors[f"{name}.alpha"] = alpha.clone()
    if not tensors:
        raise LoraError("This LoRA has no layers to save.")
    header = {"modelspec.architecture": MODELSPEC_ARCHITECTURE[weights.kind]}
    header.update({k: str(v) for k, v in metadata.items()})
    return _atomic_save(tensors, Path(path), header)


# --- reading -------------------------------------------------------------------------------------


def module_from_kohya(name: str, component: str) -> str:
    """Inverse of `kohya_name` without the prefix: `down_blocks_0_attentions_0_..._to_q` -> the module path."""
    dotted = name.replace("_", ".")
    for pattern, compound in _COMPOUND_PATTERNS:
        dotted = pattern.sub(compound, dotted)
    if component == "text_encoder" and dotted.startswith("text_model."):
        # CLIPTextModel (transformers 5) has no `text_model.` level; CLIPTextModelWithProjection keeps it.
        dotted = dotted[len("text_model.") :]
    return dotted


def _weights_path(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        candidates = [path / DIFFUSERS_WEIGHTS] + sorted(path.glob("*.safetensors"))
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise LoraError(f"{path.name} holds no .safetensors LoRA file. Add {DIFFUSERS_WEIGHTS} or a kohya file.")
        return found
    if path.suffix != ".safetensors":
        raise LoraError(
            f"{path.name} is not a .safetensors file; only .safetensors LoRAs are loaded (convert it first)."
        )
    return path


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        header = read_safetensors_header(path)  # catches truncated files with a clear message first
    except UnsupportedModelError as e:
        raise LoraError(str(e)) from None
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, header.get("__metadata__") or {}
    except (SafetensorError, OSError) as e:
        raise LoraError(f"{path.name} cannot be read ({e}). Re-download or re-export it.") from None


def read_lora(path: Path) -> LoraWeights:
    """A diffusers/peft or kohya/A1111 LoRA file (or an adapter folder) back into `LoraWeights`."""
    from studio.lora.formats import detect_kind  # header-level facts, shared with the library scan

    path = _weights_path(path)
    tensors, metadata = _load_tensors(path)
    kind = detect_kind({k: list(v.shape) for k, v in tensors.items()}, metadata, name=path.name)
    if any(k.startswith("lora_") for k in tensors):
        return _from_kohya(tensors, kind, path.name)
    return _from_diffusers(tensors, metadata, kind, path.name)


def read_kohya_layers(path: Path) -> tuple[ModelKind, dict[str, dict[str, torch.Tensor]], dict[str, dict[str, float]]]:
    """A kohya/A1111 file as `read_lora` reads it, but with each layer's own alpha and the tensors as stored:
    (kind, component -> peft state dict, component -> {module path: alpha}).

    `read_lora` folds per-layer alphas into lora_B to give one alpha per component; the live blend hands these
    alphas to peft instead (`alpha_pattern`), so the loaded layers are the file's tensors, scaled by alpha / rank.
    """
    from studio.lora.formats import detect_kind

    path = _weights_path(path)
    tensors, metadata = _load_tensors(path)
    kind = detect_kind({k: list(v.shape) for k, v in tensors.items()}, metadata, name=path.name)
    if not any(k.startswith("lora_") for k in tensors):
        raise LoraError(f"{path.name} is not a kohya/A1111 LoRA file (no lora_unet_/lora_te*_ layers).")
    return (kind, *_kohya_per_layer(tensors, kind, path.name))


def _from_kohya(tensors: dict[str, torch.Tensor], kind: ModelKind, filename: str) -> LoraWeights:
    return _with_common_alpha(kind, *_kohya_per_layer(tensors, kind, filename))


def _kohya_per_layer(tensors: dict[str, torch.Tensor], kind: ModelKind, filename: str) -> tuple[dict, dict]:
    """(component -> peft state dict, component -> {module path: alpha}) of a kohya file.

    Module paths from diffusers' own kohya reader (`_read_kohya_with_diffusers`), the hand-written
    `module_from_kohya` only for the layers diffusers 0.42 misreads.

    alpha is read here, by kohya's rule (a layer without `.alpha` runs at alpha = rank). diffusers returns the same
    values as `network_alphas`, but keyed by its intermediate names (`...attn1.processor.to_q_lora.down.weight.alpha`)
    and, when only some layers carry one, gives the others the most common alpha instead of their rank.
    """
    names = _kohya_layers(tensors, kind, filename)
    from_diffusers = _read_kohya_with_diffusers(kind, names)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    module_alphas: dict[str, dict[str, float]] = {}
    for name, (component, prefix) in names.items():
        module = from_diffusers.get(name) or module_from_kohya(name[len(prefix) :], component)
        if component == "text_encoder_2" and module == f"text_model.{_TEXT_PROJECTION}":
            module = _TEXT_PROJECTION  # `lora_te2_text_model_text_projection`, as Studio wrote it before
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        alpha_tensor = tensors.get(f"{name}.alpha")
        # kohya's rule: a layer without alpha runs at scale 1 (alpha = rank).
        alpha = float(alpha_tensor.item()) if alpha_tensor is not None else float(down.shape[0])
        layers.setdefault(component, {})[f"{module}.lora_A.weight"] = down
        layers[component][f"{module}.lora_B.weight"] = up
        module_alphas.setdefault(component, {})[module] = alpha
    if not layers:
        raise LoraError(f"{filename} has no lora_down/lora_up layers; it is not a LoRA Studio can read.")
    return layers, module_alphas


def _kohya_layers(tensors: dict[str, torch.Tensor], kind: ModelKind, filename: str) -> dict[str, tuple[str, str]]:
    """kohya layer name (`lora_unet_..._to_q`) -> (component, prefix), refusing what Studio cannot merge."""
    prefixes = {prefix: component for component, prefix in KOHYA_PREFIXES[kind].items()}
    if kind is ModelKind.SDXL:
        prefixes["lora_te_"] = "text_encoder"  # some SDXL exporters write the first encoder as lora_te_
    names = {}
    for key in tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        prefix = next((p for p in sorted(prefixes, key=len, reverse=True) if name.startswith(p)), None)
        if prefix is None or f"{name}.lora_up.weight" not in tensors:
            raise LoraError(f"{filename}: layer {name!r} is not a {kind.label} LoRA layer Studio can read.")
        if prefixes[prefix] == "unet" and re.search(r"(input|output)_blocks|middle_block", name):
            # diffusers renames these only given the UNet's config (`unet_config=`, which read_lora does not have).
            raise LoraError(
                f"{filename} uses the original (SGM) UNet layer names; it loads for generation but cannot be merged. "
                "Leave it out of the saved blend."
            )
        names[name] = (prefixes[prefix], prefix)
    return names


def _read_kohya_with_diffusers(kind: ModelKind, names: dict[str, tuple[str, str]]) -> dict[str, str]:
    """kohya layer name -> module path, as diffusers' `lora_state_dict` + its peft conversion read it.

    The same steps `load_lora_weights` takes, so a merged blend names its layers as the live blend does. A layer
    is left out (and read by the hand-written `module_from_kohya` instead) when diffusers 0.42 gets it wrong:
    - a text encoder with q/k/v_proj layers but no out_proj: diffusers guesses the key style from `to_out_lora`
      and raises ("Could not automatically infer state dict type") or keeps `self_attn.to_q_lora` names;
    - SDXL `add_embedding_linear_1/2`: diffusers has no rule for it, and its SGM `emb` rule strips the index,
      so both layers become `add.embedding.linear`.
    Both are caught the same way: a module path is used only if, written back as a kohya name, it is the layer's.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    loader = StableDiffusionXLLoraLoaderMixin if kind is ModelKind.SDXL else StableDiffusionLoraLoaderMixin
    # diffusers only renames keys here, so each value is its kohya layer name rather than a tensor: what comes out
    # maps diffusers' key to the layer it was read from.
    kohya = {f"{n}.lora_{d}.weight": n for n in names for d in ("down", "up")}
    state_dict, _alphas = loader.lora_state_dict(kohya)
    found = {}
    for component in COMPONENTS:
        converted = {k[len(component) + 1 :]: n for k, n in state_dict.items() if k.startswith(f"{component}.")}
        if not converted:
            continue
        try:
            if component == "unet":
                converted = convert_unet_state_dict_to_peft(converted)
            else:
                converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(converted))
        except ValueError:
            continue  # a text encoder without out_proj layers (see above)
        for key, name in converted.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            if component == "text_encoder":
                module = module.removeprefix("text_model.")  # CLIPTextModel (transformers 5) has no `text_model.`
            prefix = names[name][1]
            if kohya_name(kind, component, module)[len(KOHYA_PREFIXES[kind][component]) :] == name[len(prefix) :]:
                found[name] = module
    return found


def _with_common_alpha(kind, layers, module_alphas) -> LoraWeights:
    """One alpha per component, as peft has it: layers with another alpha get it folded into lora_B."""
    alphas = {}
    for component, per_module in module_alphas.items():
        common = collections.Counter(per_module.values()).most_common(1)[0][0]
        alphas[component] = common
        for module, alpha in per_module.items():
            if alpha != common and common != 0:
                key = f"{module}.lora_B.weight"
                layers[component][key] = layers[component][key] * (alpha / common)
    return LoraWeights(kind=kind, layers=layers, alphas=alphas)


def _from_diffusers(tensors, metadata, kind: ModelKind, filename: str) -> LoraWeights:
    try:
        config = json.loads(metadata.get(ADAPTER_METADATA_KEY) or "{}")
    except json.JSONDecodeError:
        config = {}
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        component, _, rest = key.partition(".")
        if component not in COMPONENTS or not re.search(r"\.lora_[AB]\.weight$", rest):
            raise LoraError(
                f"{filename}: tensor {key!r} is not a peft LoRA layer (expected unet./text_encoder.*.lora_A.weight). "
                "Studio merges peft-format and kohya-format LoRAs."
            )
        layers.setdefault(component, {})[rest] = tensor
    module_alphas = {}
    for component, component_layers in layers.items():
        default_alpha = config.get(f"{component}.lora_alpha")
        rank_pattern = config.get(f"{component}.rank_pattern") or {}
        alpha_pattern = config.get(f"{component}.alpha_pattern") or {}
        per_module = {}
        for key, tensor in component_layers.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            alpha = _pattern_value(alpha_pattern, module, default_alpha)
            if alpha is None:
                # No metadata: diffusers reloads such files at alpha = rank (scale 1), so that is their meaning.
                alpha = float(_pattern_value(rank_pattern, module, None) or tensor.shape[0])
            per_module[module] = float(alpha)
        module_alphas[component] = per_module
    if "text_encoder" in layers:
        # Both forms of CLIPTextModel keys load (see _hub_module_path); LoraWeights has transformers 5's.
        layers["text_encoder"] = {k.removeprefix("text_model."): v for k, v in layers["text_encoder"].items()}
        module_alphas["text_encoder"] = {
            m.removeprefix("text_model."): a for m, a in module_alphas["text_encoder"].items()
        }
    if not layers:
        raise LoraError(f"{filename} holds no LoRA layers.")
    # Per-layer scale is alpha / rank: fold any per-layer alpha difference into lora_B.
    return _with_common_alpha(kind, layers, module_alphas)


def _pattern_value(pattern: dict, module: str, default):
    """peft's rank/alpha pattern lookup: a key matches a module path ending in it."""
    for key, value in pattern.items():
        if re.fullmatch(rf"(.*\.)?({key})", module):
            return value
    return default
