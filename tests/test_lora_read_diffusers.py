"""kohya/A1111 LoRA files read through diffusers' own reader give what Studio's hand-written mapping gave, and
diffusers-format files name text-encoder layers as transformers 4 (and the Hub's LoRAs) do.

Table-driven over SD1.5/SDXL and the key styles a file comes in:
- "studio": what `save_kohya_lora` writes (rank 4, alpha 8, UNet + text encoders);
- "per-module-alpha": the same file with other alphas on some layers and no alpha on others;
- "a1111": names written as A1111/ComfyUI/kohya sd-scripts write them, independently of Studio's writer
  (`lora_te_text_model_encoder_layers_*`, `lora_te1_`/`lora_te2_`, `lora_unet_down_blocks_*`), fp16, alpha = rank / 2,
  attention, feed-forward, proj_in/out and resnet conv (LoCon) layers, text-encoder mlp;
- "a1111-lora-te" (SDXL): the first encoder written as `lora_te_`, as some SDXL exporters do;
- "qkv-only", "qkv-mlp" (text-encoder attention without out_proj, with or without mlp layers) and "add-embedding"
  (SDXL): layers diffusers 0.42 misreads, kept on the hand-written mapping.
`hand_read` is the kohya reader as it was before diffusers read the names (studio/lora/files.py at 9f004c0).
"""

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from studio.lora import files
from studio.lora.blend import load_adapter
from studio.lora.files import DIFFUSERS_WEIGHTS, LoraWeights, read_lora, save_diffusers_lora, save_kohya_lora
from studio.lora.library import read_entry
from studio.models.kinds import ModelKind
from studio.models.tiny import BOS_ID, EOS_ID, build_tiny
from tests.helpers import a1111_file, live_adapter, render, text_encoders

KINDS = {"sd15": ModelKind.SD15, "sdxl": ModelKind.SDXL}
RANK = 4


# --- the reference: today's hand-written reader ------------------------------------------------------


def hand_read(path) -> LoraWeights:
    """`read_lora` of a kohya file before this change: `module_from_kohya` for every layer."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    from studio.lora.formats import detect_kind

    kind = detect_kind({k: list(v.shape) for k, v in tensors.items()}, metadata, name=path.name)
    prefixes = {prefix: component for component, prefix in files.KOHYA_PREFIXES[kind].items()}
    if kind is ModelKind.SDXL:
        prefixes["lora_te_"] = "text_encoder"
    layers, module_alphas = {}, {}
    for key in tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        prefix = next(p for p in sorted(prefixes, key=len, reverse=True) if name.startswith(p))
        component = prefixes[prefix]
        module = files.module_from_kohya(name[len(prefix) :], component)
        down, up = tensors[key], tensors[f"{name}.lora_up.weight"]
        alpha_tensor = tensors.get(f"{name}.alpha")
        alpha = float(alpha_tensor.item()) if alpha_tensor is not None else float(down.shape[0])
        layers.setdefault(component, {})[f"{module}.lora_A.weight"] = down
        layers[component][f"{module}.lora_B.weight"] = up
        module_alphas.setdefault(component, {})[module] = alpha
    return files._with_common_alpha(kind, layers, module_alphas)


# --- the files -----------------------------------------------------------------------------------


def studio_file(kind, path):
    _pipe, weights = live_adapter(kind)
    return save_kohya_lora(weights, path, metadata={"ss_network_dim": str(RANK)})


def per_module_alpha_file(kind, path):
    studio_file(kind, path)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    alphas = sorted(k for k in tensors if k.endswith(".alpha"))
    for i, key in enumerate(alphas):
        if i % 3 == 1:
            tensors[key] = torch.tensor(2.0)
        elif i % 7 == 5:
            del tensors[key]  # kohya's rule: alpha = rank
    save_file(tensors, str(path), metadata=metadata)
    return path


def qkv_file(kind, path, *, text_mlp=False):
    """Attention without out_proj (and, with `text_mlp`, the text encoders' mlp too)."""

    def select(component, name, module):
        suffixes = ("to_q", "to_k", "to_v") if component == "unet" else ("q_proj", "k_proj", "v_proj")
        if text_mlp and component != "unet":
            suffixes += ("fc1", "fc2")
        return isinstance(module, torch.nn.Linear) and name.endswith(suffixes)

    return a1111_file(kind, path, select=select)


def add_embedding_file(kind, path):
    extra = [("unet", "add_embedding.linear_1"), ("unet", "add_embedding.linear_2")]
    return a1111_file(kind, path, extra=extra)


# (case, kinds, make the file, layers diffusers misreads: kept on the hand-written mapping)
CASES = [
    ("studio", ["sd15", "sdxl"], studio_file, lambda name: False),
    ("per-module-alpha", ["sd15", "sdxl"], per_module_alpha_file, lambda name: False),
    ("a1111", ["sd15", "sdxl"], a1111_file, lambda name: False),
    ("a1111-lora-te", ["sdxl"], lambda k, p: a1111_file(k, p, te1_prefix="lora_te_"), lambda name: False),
    ("qkv-only", ["sd15", "sdxl"], qkv_file, lambda name: name.startswith("lora_te")),
    (
        "qkv-mlp",
        ["sd15", "sdxl"],
        lambda k, p: qkv_file(k, p, text_mlp=True),
        lambda name: name.startswith("lora_te") and "_self_attn_" in name,
    ),
    ("add-embedding", ["sdxl"], add_embedding_file, lambda name: "add_embedding" in name),
]
TABLE = [
    pytest.param(case, kind, make, hand_only, id=f"{case}-{kind}")
    for case, kinds, make, hand_only in CASES
    for kind in kinds
]


@pytest.fixture(scope="module")
def kohya_files(tmp_path_factory):
    """(case, kind) -> (kind, path of the kohya file), each made once per module."""
    made = {}

    def get(case, kind_id, make):
        if (case, kind_id) not in made:
            kind = KINDS[kind_id]
            path = make(kind, tmp_path_factory.mktemp(case) / f"{case}.safetensors")
            made[case, kind_id] = kind, path
        return made[case, kind_id]

    return get


def assert_same_weights(new: LoraWeights, old: LoraWeights, *, same_order=True):
    """Tensor by tensor, same dtype, same alpha; in the same order unless the file sorted them."""
    assert new.kind is old.kind
    assert new.alphas == old.alphas
    same = (lambda a, b: list(a) == list(b)) if same_order else (lambda a, b: set(a) == set(b))
    assert same(new.layers, old.layers)
    for component, layers in old.layers.items():
        assert same(new.layers[component], layers), component
        for key, tensor in layers.items():
            assert new.layers[component][key].dtype == tensor.dtype
            assert torch.equal(new.layers[component][key], tensor), key


def image_of(weights: LoraWeights, base_dir, folder) -> np.ndarray:
    """Draw with the adapter: the weights as a diffusers file, loaded into the tiny model by diffusers."""
    save_diffusers_lora(weights, folder)
    return image_of_file(weights.kind, base_dir, folder, DIFFUSERS_WEIGHTS)


def image_of_file(kind, base_dir, folder, weight_name) -> np.ndarray:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind is ModelKind.SDXL else StableDiffusionPipeline
    pipe = cls.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name="x")
    return render(pipe)


@pytest.fixture
def base_dir(request):
    return lambda kind: request.getfixturevalue("tiny_sdxl_dir" if kind is ModelKind.SDXL else "tiny_sd15_dir")


# --- 1. kohya files read through diffusers -------------------------------------------------------


@pytest.mark.parametrize("case, kind_id, make, hand_only", TABLE)
def test_reads_as_the_hand_written_mapping(kohya_files, case, kind_id, make, hand_only):
    kind, path = kohya_files(case, kind_id, make)
    assert_same_weights(read_lora(path), hand_read(path))


@pytest.mark.parametrize("case, kind_id, make, hand_only", TABLE)
def test_diffusers_names_every_layer_but_the_ones_it_misreads(kohya_files, case, kind_id, make, hand_only):
    kind, path = kohya_files(case, kind_id, make)
    tensors = load_file(str(path))
    names = files._kohya_layers(tensors, kind, path.name)
    from_diffusers = files._read_kohya_with_diffusers(kind, names)
    assert sorted(set(names) - set(from_diffusers)) == sorted(n for n in names if hand_only(n))
    assert set(from_diffusers) - set(names) == set()


@pytest.mark.parametrize("case, kind_id, make, hand_only", TABLE)
def test_draws_the_same_image(kohya_files, base_dir, tmp_path, case, kind_id, make, hand_only):
    kind, path = kohya_files(case, kind_id, make)
    new = image_of(read_lora(path), base_dir(kind), tmp_path / "new")
    old = image_of(hand_read(path), base_dir(kind), tmp_path / "old")
    np.testing.assert_array_equal(new, old)
    if case == "studio":
        live_pipe, _weights = live_adapter(kind)
        np.testing.assert_allclose(new, render(live_pipe), atol=2e-5)
    # Guard: the adapter does change the image.
    base = build_tiny(kind)
    base.set_progress_bar_config(disable=True)
    assert np.abs(render(base) - new).mean() > 1e-4


def image_of_live_blend(kind, base_dir, path) -> np.ndarray:
    """Draw with the adapter as the live blend loads it (`blend.load_adapter`), at strength 1."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind is ModelKind.SDXL else StableDiffusionPipeline
    pipe = cls.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    load_adapter(pipe, read_entry(path), "x")
    return render(pipe)


@pytest.mark.parametrize("case, kind_id, make, hand_only", TABLE)
def test_the_live_blend_loads_the_kohya_file_to_the_same_image(
    kohya_files, base_dir, tmp_path, case, kind_id, make, hand_only
):
    """What the live blend loads and what a merge reads agree: also when layers have their own alpha or none, and for
    the layers diffusers' own loader misreads (text-encoder attention without out_proj, SDXL add_embedding)."""
    kind, path = kohya_files(case, kind_id, make)
    merged = image_of(read_lora(path), base_dir(kind), tmp_path)
    live = image_of_live_blend(kind, base_dir(kind), path)
    np.testing.assert_allclose(live, merged, atol=2e-5)


def test_diffusers_own_loader_still_misreads_per_layer_alpha(kohya_files, base_dir, tmp_path):
    """Why the live blend reads kohya files itself: diffusers 0.42's `load_lora_weights` gives layers whose alpha
    differs from the most common one, and layers without alpha, the most common alpha (its alpha_pattern keys are
    `...attn1.processor.to_q_lora.down.weight`, matching no module). When this fails, diffusers reads them right and
    `blend.load_adapter` could hand kohya files to it again."""
    kind, path = kohya_files("per-module-alpha", "sd15", per_module_alpha_file)
    merged = image_of(read_lora(path), base_dir(kind), tmp_path)
    by_diffusers = image_of_file(kind, base_dir(kind), path.parent, path.name)
    assert np.abs(by_diffusers - merged).max() > 1 / 255


@pytest.mark.parametrize("kind_id", list(KINDS))
def test_each_layer_keeps_its_own_alpha(kohya_files, kind_id):
    """The meaning of a kohya layer, checked without either reader's names: delta = up @ down * alpha / rank, with
    alpha = rank for a layer that has none. Matched to the read layer by value (1x1 convs as matrices)."""
    kind, path = kohya_files("per-module-alpha", kind_id, per_module_alpha_file)
    tensors = load_file(str(path))
    weights = read_lora(path)
    read = {}
    for component, layers in weights.layers.items():
        for module in weights.modules(component):
            down, up = layers[f"{module}.lora_A.weight"], layers[f"{module}.lora_B.weight"]
            read[component, module] = (up.flatten(1) @ down.flatten(1)) * weights.alphas[component] / down.shape[0]
    expected = []
    for key, down in tensors.items():
        if key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            alpha = tensors[f"{name}.alpha"].item() if f"{name}.alpha" in tensors else down.shape[0]
            up = tensors[f"{name}.lora_up.weight"]
            expected.append((up.flatten(1) @ down.flatten(1)) * alpha / down.shape[0])
    assert len(expected) == len(read)
    assert {a for a in (t.item() for t in tensors.values() if t.ndim == 0)} == {2.0, 8.0}
    assert sum(f"{k[: -len('.lora_down.weight')]}.alpha" not in tensors for k in tensors if "lora_down" in k) > 0
    for delta in expected:
        assert any(torch.allclose(delta, got, atol=1e-6) for got in read.values() if got.shape == delta.shape)


# --- 2. diffusers files name text-encoder layers as transformers 4 did ----------------------------


@pytest.fixture(scope="module", params=list(KINDS), ids=list(KINDS))
def diffusers_file(request, tmp_path_factory):
    kind = KINDS[request.param]
    pipe, weights = live_adapter(kind)
    folder = tmp_path_factory.mktemp(f"diffusers-{request.param}")
    save_diffusers_lora(weights, folder)
    return kind, weights, folder, render(pipe), pipe


def transformers_4_module_names(kind, component) -> set[str]:
    """Module paths of the text encoder as transformers 4 named them: CLIPTextModel had a `text_model.` level."""
    encoder = getattr(build_tiny(kind), component)
    names = {name for name, _module in encoder.named_modules()}
    if isinstance(encoder, CLIPTextModel):  # transformers 5 flattened it
        names = {f"text_model.{name}" if name else "text_model" for name in names}
    return names


def test_text_encoder_keys_fit_the_transformers_4_layout(diffusers_file):
    kind, weights, folder, *_ = diffusers_file
    keys = list(load_file(str(folder / DIFFUSERS_WEIGHTS)))
    for component in text_encoders(kind):
        component_keys = [k[len(component) + 1 :] for k in keys if k.startswith(f"{component}.")]
        assert len(component_keys) == len(weights.layers[component])
        assert all(k.startswith("text_model.encoder.layers.") for k in component_keys), component_keys[:3]
        modules = {k.rsplit(".lora_", 1)[0] for k in component_keys}
        assert modules <= transformers_4_module_names(kind, component)


def test_the_file_loads_into_a_transformers_4_layout_text_encoder(diffusers_file):
    """peft puts the file's text-encoder layers on a CLIPTextModel laid out as in transformers 4 (under
    `text_model.`), with the file's own adapter config, and it encodes as the live adapter does."""
    kind, _weights, folder, _image, live_pipe = diffusers_file
    tensors = load_file(str(folder / DIFFUSERS_WEIGHTS))
    with safe_open(str(folder / DIFFUSERS_WEIGHTS), framework="pt") as f:
        config = json.loads(f.metadata()[files.ADAPTER_METADATA_KEY])
    ids = torch.tensor([[BOS_ID, 70, 71, 72, EOS_ID]])
    encoder = build_tiny(kind).text_encoder
    transformers_4 = torch.nn.Module()
    transformers_4.text_model = encoder  # named_modules(): text_model.encoder.layers.N.self_attn.q_proj ...
    lora_config = {k.removeprefix("text_encoder."): v for k, v in config.items() if k.startswith("text_encoder.")}
    inject_adapter_in_model(LoraConfig(**lora_config), transformers_4)
    state = {k.removeprefix("text_encoder."): v for k, v in tensors.items() if k.startswith("text_encoder.")}
    result = set_peft_model_state_dict(transformers_4, state)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if ".lora_" in k]
    with torch.no_grad():
        torch.testing.assert_close(encoder(ids)[0], live_pipe.text_encoder(ids)[0])


def test_diffusers_loads_both_forms_to_the_live_image(diffusers_file, base_dir, tmp_path):
    """The Hub form (written now) and the form Studio wrote before (no `text_model.`) draw the same image in
    diffusers, and `read_lora` reads both to the same weights."""
    kind, weights, folder, live, _pipe = diffusers_file
    tensors = load_file(str(folder / DIFFUSERS_WEIGHTS))
    with safe_open(str(folder / DIFFUSERS_WEIGHTS), framework="pt") as f:
        metadata = f.metadata()
    old = {k.replace("text_encoder.text_model.", "text_encoder.", 1): v for k, v in tensors.items()}
    assert old.keys() != tensors.keys()
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / DIFFUSERS_WEIGHTS), metadata=metadata)
    new_image = image_of_file(kind, base_dir(kind), folder, DIFFUSERS_WEIGHTS)
    old_image = image_of_file(kind, base_dir(kind), tmp_path / "old", DIFFUSERS_WEIGHTS)
    np.testing.assert_array_equal(new_image, old_image)
    np.testing.assert_allclose(new_image, live, atol=2e-5)
    # safetensors lists tensors sorted by name: the order of the live adapter is not kept.
    assert_same_weights(read_lora(folder), weights, same_order=False)
    assert_same_weights(read_lora(tmp_path / "old"), weights, same_order=False)
