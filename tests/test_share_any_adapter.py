"""Sharing: nothing private leaves the machine, and every adapter in loras/ can be pushed.

Adapters are pushed with huggingface_hub's real client to the local Hub-compatible server (tests/hub_server.py),
and EVERY byte the server received is scanned for the temporary folders used: request paths, headers and bodies
(with the base64 file contents of commits decoded), the LFS objects, and the text chunks of the PNGs (inflated).
"""

import base64
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.generation.infotext import parse_infotext, read_infotext
from studio.hub.adapters import shareable_adapters
from studio.hub.public import public_file
from studio.lora.files import LoraWeights, save_diffusers_lora, save_kohya_lora
from studio.lora.folder import public_metadata, public_name, public_text
from studio.lora.library import addnet_hash, find_lora, header_manifest
from studio.models.hashes import sha256_file
from studio.models.kinds import ModelKind, read_safetensors_header
from tests.hub_clients import ALICE, DOWNLOAD_CODE, front_matter, push_python, run_python, snapshot
from tests.hub_server import HubServer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNET_MODULES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
]


@pytest.fixture
def hub():
    with HubServer({ALICE: "alice"}) as server:
        yield server


# --- the scan ------------------------------------------------------------------------------------------


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _decoded(body: bytes) -> list[bytes]:
    """The base64 payloads inside JSON (or NDJSON) bodies: commit file contents, preupload samples."""
    found = []
    for line in body.splitlines() or [body]:
        try:
            parsed = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        for text in _strings(parsed):
            if len(text) >= 4 and re.fullmatch(r"[A-Za-z0-9+/=\s]+", text):
                try:
                    found.append(base64.b64decode(text, validate=False))
                except ValueError:
                    pass
    return found


def png_texts(data: bytes) -> list[bytes]:
    """Every text chunk of a PNG, inflated when compressed (zTXt, compressed iTXt)."""
    texts, at = [], len(PNG_SIGNATURE)
    while data.startswith(PNG_SIGNATURE) and at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        at += 12 + length
        keyword, _, rest = body.partition(b"\0")
        try:
            if kind == b"tEXt":
                texts.append(rest)
            elif kind == b"zTXt":
                texts.append(zlib.decompress(rest[1:]))
            elif kind == b"iTXt":
                flag, rest = rest[0], rest[2:]
                _, _, rest = rest.partition(b"\0")
                translated, _, text = rest.partition(b"\0")
                texts += [translated, zlib.decompress(text) if flag else text]
        except (zlib.error, IndexError):
            texts.append(body)
    return texts


def received(hub: HubServer) -> list[bytes]:
    """Everything the server was sent, as bytes to search."""
    blobs = []
    for request in hub.requests:
        blobs.append(request.path.encode())
        blobs += [f"{key}: {value}".encode() for key, value in request.headers.items()]
        blobs.append(request.body)
        blobs += _decoded(request.body)
    blobs += list(hub.lfs_objects.values())
    for repo in hub.repos.values():
        blobs += list(repo.files.values())
    for blob in list(blobs):
        blobs += png_texts(blob)
    return blobs


def leaks(hub: HubServer, paths) -> list[str]:
    """Which of `paths` (as written, resolved, JSON-escaped) occur anywhere in what the server received."""
    forms = set()
    for path in paths:
        for text in {str(path), str(Path(path).resolve())}:
            forms |= {text, json.dumps(text)[1:-1]}
    blobs = received(hub)
    return sorted(form for form in forms if len(form) > 4 and any(form.encode() in blob for blob in blobs))


def test_the_scan_finds_a_path_in_base64_commit_bodies_and_compressed_png_text(tmp_path):
    secret = str(tmp_path / "home" / "alice")
    info = PngInfo()
    info.add_text("parameters", f"a cat\nModel: {secret}/model.safetensors", zip=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "s.png", pnginfo=info)
    png = (tmp_path / "s.png").read_bytes()
    assert secret.encode() not in png  # compressed: a plain byte search would miss it

    class Sent:
        path, headers = "/api/models/alice/x/commit/main", {}
        body = json.dumps({"key": "file", "value": {"content": base64.b64encode(png).decode()}}).encode()

    class FakeHub:
        requests, lfs_objects, repos = [Sent()], {}, {}

    assert leaks(FakeHub(), [secret]) == [secret]


# --- adapters as other tools make them -------------------------------------------------------------------


def weights(rank=8, alpha=4.0, seed=0) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for module in UNET_MODULES:
        width = 768 if "attn2.to_k" in module or "attn2.to_v" in module else 32
        layers[f"{module}.lora_A.weight"] = torch.randn(rank, width, generator=generator)
        layers[f"{module}.lora_B.weight"] = torch.randn(32, rank, generator=generator)
    return LoraWeights(kind=ModelKind.SD15, layers={"unet": layers}, alphas={"unet": alpha})


def kohya_file_made_elsewhere(tmp_path: Path) -> Path:
    """loras/mountains.safetensors as kohya's sd-scripts would write it, with local paths in its ss_* metadata."""
    home = tmp_path / "home"
    data = tmp_path / "data" / "10_mountains"
    metadata = {
        "ss_sd_model_name": str(home / "models" / "v1-5-pruned-emaonly.safetensors"),
        "ss_base_model_version": "sd_v1",
        "ss_network_module": "networks.lora",
        "ss_network_dim": "8",
        "ss_network_alpha": "4.0",
        "ss_tag_frequency": json.dumps({str(data): {"aid_mountain": 40, "snow": 12, "ridge": 3}}),
        "ss_dataset_dirs": json.dumps({str(data): {"n_repeats": 10, "img_count": 4}}),
        "ss_learning_rate": "0.0001",
        "ss_max_train_steps": "800",
        "ss_training_comment": f"captions from {data}/metadata.jsonl",
        "ss_output_name": "mountains",
    }
    path = tmp_path / "loras" / "mountains.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_kohya_lora(weights(), path, metadata=metadata)


def test_a_kohya_file_made_elsewhere_is_pushed_with_a_card_from_its_header_and_no_local_path(tmp_path, hub):
    kohya = kohya_file_made_elsewhere(tmp_path)
    before = snapshot(tmp_path / "loras")
    assert "mountains" in shareable_adapters(tmp_path / "loras")

    result = push_python(tmp_path, hub.url, name="mountains", repo_id="alice/mountains")
    assert result.returncode == 0, result.stdout + result.stderr
    repo = hub.repos["alice/mountains"]
    assert set(repo.files) == {"README.md", "adapter.json", "mountains.safetensors"}
    assert snapshot(tmp_path / "loras") == before  # the local file is left as it was

    sent = repo.files["mountains.safetensors"]
    (tmp_path / "sent.safetensors").write_bytes(sent)
    header = read_safetensors_header(tmp_path / "sent.safetensors")
    metadata = header.pop("__metadata__")
    assert metadata["ss_sd_model_name"] == "v1-5-pruned-emaonly.safetensors"
    assert json.loads(metadata["ss_tag_frequency"]) == {"10_mountains": {"aid_mountain": 40, "snow": 12, "ridge": 3}}
    assert metadata["ss_training_comment"] == "captions from metadata.jsonl"
    assert metadata["ss_network_dim"] == "8" and metadata["ss_max_train_steps"] == "800"  # the rest as it was
    local = read_safetensors_header(kohya)
    local.pop("__metadata__")
    assert header == local  # same tensors at the same offsets
    assert addnet_hash(tmp_path / "sent.safetensors") == find_lora(tmp_path / "loras", "mountains").addnet_hash

    card = repo.files["README.md"].decode()
    data = front_matter(repo.files["README.md"])
    assert "base_model" not in data and data["license"] == "creativeml-openrail-m"  # a local base, not a Hub id
    assert data["instance_prompt"] == "aid_mountain, snow, ridge"
    assert "A LoRA adapter with rank 8 and alpha 4.0 for a local Stable Diffusion 1.5 model" in card
    assert "`v1-5-pruned-emaonly.safetensors` (not a Hub repository)" in card
    assert "Made outside Studio" in card and "Made with Studio" not in card
    assert "`aid_mountain`, `snow`, `ridge`" in card
    assert 'load_lora_weights("alice/mountains", weight_name="mountains.safetensors")' in card
    assert "<lora:mountains:1>" in card and "LoraLoader" in card
    sha = sha256_file(tmp_path / "sent.safetensors")
    assert "- `mountains.safetensors`: kohya format" in card
    assert f"SHA256 `{sha}` (AutoV2 `{sha[:10].upper()}`)" in card
    assert f"A1111 hash `{find_lora(tmp_path / 'loras', 'mountains').addnet_hash}`" in card
    assert "| learning_rate | 0.0001 |" in card and "| steps | 800 |" in card

    manifest = json.loads(repo.files["adapter.json"])
    assert manifest["base_kind"] == "sd15" and manifest["rank"] == 8 and manifest["alpha"] == 4.0
    assert manifest["trigger_words"] == ["aid_mountain", "snow", "ridge"]
    assert manifest["base_model"] == "v1-5-pruned-emaonly.safetensors" and manifest["name"] == "mountains"
    assert manifest["made_elsewhere"] is True  # imported back, its card still says where it came from

    assert leaks(hub, [tmp_path / "home", tmp_path / "data", tmp_path / "loras", tmp_path]) == []

    # Imported into another LoRA folder, it is an adapter with its adapter.json, and pushing it again keeps the card.
    pulled = run_python(tmp_path, hub.url, DOWNLOAD_CODE.format(repo="alice/mountains", loras=str(tmp_path / "loras")))
    assert pulled.returncode == 0, pulled.stderr
    assert find_lora(tmp_path / "loras", "mountains").path.is_dir()  # the folder now wins over the single file
    again = push_python(tmp_path, hub.url, name="mountains", repo_id="alice/mountains-2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert hub.repos["alice/mountains-2"].files["README.md"] == repo.files["README.md"].replace(
        b'"alice/mountains"', b'"alice/mountains-2"'
    )


@pytest.mark.parametrize("layout", ["folder", "single-file"])
def test_a_diffusers_adapter_made_elsewhere_is_pushed_with_its_alpha_and_a_diffusers_only_card(tmp_path, hub, layout):
    loras = tmp_path / "loras"
    folder = save_diffusers_lora(weights(rank=4, alpha=8.0), loras / "desert").parent
    if layout == "single-file":
        (folder / "pytorch_lora_weights.safetensors").rename(loras / "desert.safetensors")
        folder.rmdir()
    assert shareable_adapters(loras) == ["desert"]

    result = push_python(tmp_path, hub.url, name="desert", repo_id="alice/desert")
    assert result.returncode == 0, result.stdout + result.stderr
    repo = hub.repos["alice/desert"]
    weights_name = "pytorch_lora_weights.safetensors" if layout == "folder" else "desert.safetensors"
    assert set(repo.files) == {"README.md", "adapter.json", weights_name}
    card = repo.files["README.md"].decode()
    assert "rank 4 and alpha 8.0" in card and "No trigger words" in card
    assert f'load_lora_weights("alice/desert", weight_name="{weights_name}")' in card
    assert "this adapter has none" in card and "<lora:" not in card  # A1111/ComfyUI need a kohya file
    assert (
        f"- `{weights_name}`: diffusers format" in card
        and f"SHA256 `{sha256_file(loras / 'desert' / weights_name if layout == 'folder' else loras / weights_name)}`"
        in card
    )
    assert leaks(hub, [tmp_path]) == []


def test_shareable_adapters_lists_every_pushable_adapter_and_nothing_else(tmp_path):
    loras = tmp_path / "loras"
    kohya_file_made_elsewhere(tmp_path)
    save_diffusers_lora(weights(), loras / "plain")  # a diffusers folder without adapter.json
    (loras / "empty").mkdir()
    (loras / "pickled.ckpt").write_bytes(b"not loaded")
    (loras / "broken.safetensors").write_bytes(b"\x10\x00")
    torch_file = loras / "checkpoint.safetensors"  # a full model put here by mistake
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, torch_file)
    assert shareable_adapters(loras) == ["mountains", "plain"]

    from studio.errors import InvalidRequestError
    from studio.hub.adapters import PushRequest

    for name, message in [
        ("empty", "no .safetensors LoRA file"),
        ("pickled", "pickle file"),
        ("checkpoint", "full model checkpoint"),
        ("nothing", "There is no adapter"),
    ]:
        with pytest.raises(InvalidRequestError, match=message):
            PushRequest(name=name, repo_id="alice/x", loras_dir=loras).validate()


# --- reduced at the source and at push time ----------------------------------------------------------------


def test_local_paths_become_names_hub_ids_and_urls_stay():
    assert public_name("/home/alice/models/base-sd15") == "base-sd15"
    assert public_name("C:\\Users\\al\\models\\v1-5.safetensors") == "v1-5.safetensors"
    assert public_name("../models/x.safetensors") == "x.safetensors"
    assert public_name("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert public_name("studio/lora") == "lora"  # a folder here (the tests run in the repo), not a Hub repo
    assert public_name("demo-sd15") == "demo-sd15"
    assert public_text("made from /home/alice/data/x.jpg and ~/y, see https://github.com/kohya-ss/sd-scripts") == (
        "made from x.jpg and y, see https://github.com/kohya-ss/sd-scripts"
    )
    assert public_text("w/ snow, 1/2 scale") == "w/ snow, 1/2 scale"
    clean = {"ss_network_dim": "8", "ss_tag_frequency": '{"10_x": {"a": 1}}'}
    assert public_metadata(clean) == clean  # a clean header is left byte for byte


def test_png_text_chunks_are_reduced_and_the_pixels_kept(tmp_path):
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 2, Sampler: Euler, Model: /home/alice/models/base.safetensors")
    info.add_text("comment", "from /home/alice/pictures", zip=True)
    info.add_itxt("source", "C:\\Users\\al\\x.png", zip=True)
    image = Image.new("RGB", (4, 4), "red")
    image.save(tmp_path / "s.png", pnginfo=info)
    (tmp_path / "work").mkdir()
    public = public_file(tmp_path / "s.png", tmp_path / "work")
    assert public != tmp_path / "s.png"
    texts = b"".join(png_texts(public.read_bytes()))
    assert b"alice" not in texts and b"Users" not in texts
    assert parse_infotext(read_infotext(public))["Model"] == "base.safetensors"
    assert Image.open(public).tobytes() == image.tobytes()
    clean = tmp_path / "clean.png"
    image.save(clean)
    assert public_file(clean, tmp_path / "work") == clean  # nothing to reduce: sent as it is


def test_header_manifest_reads_alpha_from_the_alpha_tensors(tmp_path):
    path = save_kohya_lora(weights(rank=8, alpha=2.5), tmp_path / "loras" / "a.safetensors", metadata={})
    entry = find_lora(path.parent, "a")
    manifest = header_manifest(entry)
    assert (manifest.base_kind, manifest.rank, manifest.alpha, manifest.base_model) == (ModelKind.SD15, 8, 2.5, "")


# --- a trained adapter -------------------------------------------------------------------------------------


def test_a_trained_adapter_from_local_folders_reaches_the_hub_without_any_local_path(tmp_path, hub):
    """Train on the tiny model from a local base folder and data folder, push, scan every byte the Hub received."""
    from studio.models.tiny import save_tiny
    from studio.training.trainer import train
    from tests.helpers import make_config, make_photo_folder, quick_request

    config = make_config(tmp_path)  # tmp_path/models, loras, outputs; the push's HOME is tmp_path/home
    base = save_tiny(ModelKind.SD15, tmp_path / "models" / "base-sd15")
    data = make_photo_folder(tmp_path / "data" / "photos")
    request = quick_request(data, model=str(base), steps=2, batch_size=1, validation_every=1)
    folder = train(request, config, on_event=lambda event: None, should_stop=lambda: False)

    local_paths = [tmp_path / "home", tmp_path / "data", data, tmp_path / "models", base, tmp_path / "loras", tmp_path]
    for path in folder.rglob("*"):  # reduced at the source: no file Studio wrote names a local folder
        if path.is_file():
            content = path.read_bytes()
            texts = png_texts(content) if path.suffix == ".png" else [content]
            assert not [p for p in local_paths if any(str(p).encode() in text for text in texts)], path
    manifest = json.loads((folder / "adapter.json").read_text())
    assert manifest["base_model"] == "base-sd15" and manifest["settings"]["model"] == "base-sd15"
    assert read_safetensors_header(folder / "alps.safetensors")["__metadata__"]["ss_sd_model_name"] == "base-sd15"

    # What an older Studio wrote, and a sample added by hand: reduced at push time.
    manifest["base_model"] = manifest["settings"]["model"] = str(base)
    manifest["settings"]["data"] = str(data)
    (folder / "adapter.json").write_text(json.dumps(manifest))
    info = PngInfo()
    info.add_text("parameters", f"mtn, peaks\nSteps: 2, Sampler: Euler, Model: {base}", zip=True)
    Image.new("RGB", (8, 8)).save(folder / "samples" / "by-hand.png", pnginfo=info)

    result = push_python(tmp_path, hub.url, repo_id="alice/alps")
    assert result.returncode == 0, result.stdout + result.stderr
    repo = hub.repos["alice/alps"]
    assert {"README.md", "adapter.json", "alps.safetensors", "pytorch_lora_weights.safetensors"} <= set(repo.files)
    assert parse_infotext(png_texts(repo.files["samples/by-hand.png"])[0].decode())["Model"] == "base-sd15"
    published = json.loads(repo.files["adapter.json"])
    assert published["base_model"] == published["settings"]["model"] == "base-sd15"
    assert published["settings"]["data"] == "photos"
    assert any(name.startswith("samples/") and name.endswith(".png") for name in repo.files)
    assert b"base-sd15" in repo.files["README.md"] and b"mtn" in repo.files["README.md"]  # names are kept
    sample = next(data for name, data in repo.files.items() if name.endswith(".png"))
    assert any(b"Model: base-sd15" in text for text in png_texts(sample))
    assert leaks(hub, local_paths) == []
