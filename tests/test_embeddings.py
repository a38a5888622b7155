"""Textual-inversion embeddings from the embeddings folder, through the real manager and the tiny pipelines.

The strongest check that an embedding's vectors reach the text encoder at the right places: an embedding made of
the token embeddings of a word draws exactly the image of that word.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from safetensors.torch import save_file

from studio.cli import main as cli_main
from studio.engine import Studio
from studio.errors import InvalidRequestError, UnsafeFileError
from studio.generation.embeddings import scan_embeddings
from studio.generation.infotext import parse_infotext
from studio.generation.prompts import EmbeddingLookup, split_chunks, token_counter
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.kinds import ModelKind
from studio.models.manager import ModelManager
from studio.models.tiny import byte_level_tokenizer
from tests.helpers import mean_abs_diff

MODELS = {"demo-sd15": ModelKind.SD15, "demo-sdxl": ModelKind.SDXL}


@pytest.fixture
def studio_config(studio_config, tmp_path):
    """The shared config with its own, empty embeddings folder (the default one is the checkout's)."""
    return dataclasses.replace(studio_config, embeddings_dir=tmp_path / "embeddings")


@pytest.fixture
def manager(studio_config):
    return ModelManager(studio_config)


def request(model: str, prompt: str, **overrides) -> GenerationRequest:
    fields = dict(model=model, prompt=prompt, steps=2, seed=11, width=64, height=64)
    fields.update(overrides)
    return GenerationRequest(**fields)


def word_rows(manager, model: str, word: str) -> list[torch.Tensor]:
    """The token embeddings of `word` in each text encoder of a model: an embedding that means exactly `word`."""
    with manager.acquire(model) as loaded:
        pipe = loaded.pipe
        pairs = [(pipe.tokenizer, pipe.text_encoder)]
        if MODELS[model] is ModelKind.SDXL:
            pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
        rows = []
        for tokenizer, encoder in pairs:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            rows.append(encoder.get_input_embeddings().weight[ids].detach().clone())
    return rows


def save_embedding(folder, name: str, rows: list[torch.Tensor], *, sd15_key: str = "emb_params"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    tensors = {"clip_l": rows[0], "clip_g": rows[1]} if len(rows) == 2 else {sd15_key: rows[0]}
    save_file({key: value.contiguous() for key, value in tensors.items()}, path)
    return path


@pytest.mark.parametrize("model", list(MODELS))
def test_an_embedding_named_in_the_prompt_is_its_vectors(manager, studio_config, model):
    folder = studio_config.embeddings_dir
    path = save_embedding(folder, "RedWord", word_rows(manager, model, "red"))
    as_word = generate(manager, request(model, "a red barn")).images[0]
    result = generate(manager, request(model, "a RedWord barn"))
    # The name became the vectors of "red", at the same places: the same pixels.
    assert mean_abs_diff(result.images[0], as_word) == 0

    generator = torch.Generator().manual_seed(3)
    widths = [row.shape[1] for row in word_rows(manager, model, "red")]
    save_embedding(folder, "noise", [torch.randn(2, width, generator=generator) for width in widths])
    noisy = generate(manager, request(model, "a noise barn", negative_prompt="RedWord")).images[0]
    plain = generate(manager, request(model, "a noise barn")).images[0]  # "noise" still names it: same vectors
    assert mean_abs_diff(noisy, as_word) > 1
    assert mean_abs_diff(plain, noisy) > 0  # the negative prompt's embedding counts too

    # Infotext: A1111's `TI hashes` (sha256 of the file, 12 hex digits), read back by PNG info.
    info = parse_infotext(result.infotexts[0])
    assert info["TI hashes"] == f"RedWord: {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    assert info["Prompt"] == "a RedWord barn"


def test_sdxl_clip_l_and_clip_g_reach_their_own_encoders(manager, studio_config):
    rows = word_rows(manager, "demo-sdxl", "red")
    save_embedding(studio_config.embeddings_dir, "RedWord", rows)
    right = generate(manager, request("demo-sdxl", "a RedWord barn")).images[0]
    save_embedding(studio_config.embeddings_dir, "RedWord", [rows[1], rows[0]])  # swapped: each in the wrong encoder
    assert torch.equal(rows[0], rows[1]) is False
    swapped = generate(manager, request("demo-sdxl", "a RedWord barn")).images[0]
    assert mean_abs_diff(right, swapped) > 0  # and the changed file takes effect without a restart
    with manager.acquire("demo-sdxl") as loaded:
        pipe = loaded.pipe
        first = pipe.text_encoder.get_input_embeddings().weight
        second = pipe.text_encoder_2.get_input_embeddings().weight
        start = len(pipe.tokenizer)
        assert torch.equal(first[start : start + len(rows[1])], rows[1])
        assert torch.equal(second[start : start + len(rows[0])], rows[0])


def test_an_sdxl_embedding_on_sd15_is_refused_with_the_reason(manager, studio_config):
    save_embedding(studio_config.embeddings_dir, "xlstyle", [torch.zeros(2, 32), torch.zeros(2, 32)])
    with pytest.raises(InvalidRequestError, match=r"'xlstyle' .* is an SDXL embedding and the model is SD1.5"):
        generate(manager, request("demo-sd15", "a barn, xlstyle"))
    generate(manager, request("demo-sd15", "a barn"))  # not named: no error
    save_embedding(studio_config.embeddings_dir, "sdstyle", [torch.zeros(2, 32)])
    with pytest.raises(InvalidRequestError, match=r"'sdstyle' .* is an SD1.5 embedding and the model is SDXL"):
        generate(manager, request("demo-sdxl", "a barn", negative_prompt="sdstyle"))


def test_a_pickle_embedding_is_refused_unless_allowed(manager, studio_config):
    folder = studio_config.embeddings_dir
    folder.mkdir()
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "name": "old"}, folder / "old.pt")
    [entry] = scan_embeddings(folder)
    assert entry.kind is None and "pickle" in entry.problem and "--allow-pickle" in entry.problem
    with pytest.raises(UnsafeFileError, match=r"'old' \(old.pt\) cannot be used: .pt is a pickle file"):
        generate(manager, request("demo-sd15", "an old barn"))
    [allowed] = scan_embeddings(folder, allow_pickle=True)
    assert (allowed.kind, allowed.vectors, allowed.problem) == (ModelKind.SD15, 1, None)


def test_a_real_size_sd15_embedding_is_listed_and_refused_on_a_narrower_encoder(manager, studio_config):
    """768 wide, 4 vectors, as an A1111/Civitai SD1.5 embedding; the tiny text encoder is 32 wide."""
    save_embedding(studio_config.embeddings_dir, "EasyStyle", [torch.randn(4, 768)])
    save_embedding(studio_config.embeddings_dir, "sd2thing", [torch.randn(2, 1024)])
    entries = {e.name: e for e in scan_embeddings(studio_config.embeddings_dir)}
    easy = entries["EasyStyle"]
    assert (easy.kind, easy.vectors, easy.widths, easy.problem) == (ModelKind.SD15, 4, (768,), None)
    assert "SD 2.x" in entries["sd2thing"].problem
    with pytest.raises(InvalidRequestError, match=r"'EasyStyle' has vectors 768 wide.* takes 32"):
        generate(manager, request("demo-sd15", "easystyle, a barn"))


def test_the_token_counter_counts_the_vectors_of_an_embedding(studio_config):
    save_embedding(studio_config.embeddings_dir, "EasyStyle", [torch.randn(4, 768)])
    save_embedding(studio_config.embeddings_dir, "xlstyle", [torch.zeros(6, 768), torch.zeros(6, 1280)])
    studio = Studio(studio_config)
    assert studio.count_tokens("demo-sd15", "a barn") == "2/75"
    assert studio.count_tokens("demo-sd15", "a barn, easystyle") == "7/75"  # a, barn, ",", 4 vectors
    assert studio.count_tokens("demo-sd15", "a barn, easystyles") != "7/75"  # another word, not the embedding
    assert studio.count_tokens("demo-sdxl", "a barn, xlstyle") == "9/75"
    assert studio.count_tokens("demo-sd15", "a barn, xlstyle") == token_counter("a barn, xlstyle")  # SDXL's: words


def test_an_embedding_never_straddles_two_chunks():
    tokenizer = byte_level_tokenizer()
    lookup = EmbeddingLookup(tokenizer, {"emb": [900, 901, 902, 903]})
    chunks, count = split_chunks("x" * 73 + " emb", tokenizer, lookup)  # 73 tokens, then 4 vectors: 77 > 75
    assert [chunk.tokens[1:5] for chunk in chunks][1] == [900, 901, 902, 903]
    assert 900 not in chunks[0].tokens and count == 75 + 4
    assert lookup.used == {"emb"}


def test_the_cli_lists_the_embeddings_folder(studio_config, capsys):
    path = save_embedding(studio_config.embeddings_dir, "xlstyle", [torch.zeros(3, 768), torch.zeros(3, 1280)])
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, studio_config.embeddings_dir / "old.pt")
    assert cli_main(["embeddings", "--embeddings-dir", str(studio_config.embeddings_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "name\tkind\tvectors\thash\tproblem"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert f"xlstyle\tSDXL\t3\t{digest}\tok" in lines
    assert any(line.startswith("old\t?\t?\t") and "pickle" in line for line in lines)


def test_sdxl_pooling_stays_at_the_end_token_with_the_old_eos_config():
    """Real SDXL text encoders carry `eos_token_id: 2` and so pool at the highest id, which an embedding's rows
    (ids after the vocabulary) would win: the pooled embedding must still be read at the end token."""
    from types import SimpleNamespace

    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from studio.generation.prompts import _encode_chunks, place_embeddings

    torch.manual_seed(0)
    config = CLIPTextConfig(
        bos_token_id=512, eos_token_id=2, pad_token_id=513, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=514, projection_dim=32,
    )  # fmt: skip
    encoder = CLIPTextModelWithProjection(config).eval()
    tokenizer = byte_level_tokenizer(pad_token="!")
    ids = tokenizer("red", add_special_tokens=False)["input_ids"]
    rows = encoder.get_input_embeddings().weight[ids].detach().clone()
    lookup = EmbeddingLookup(tokenizer, place_embeddings(tokenizer, encoder, [("emb", rows)]))
    assert encoder.get_input_embeddings().weight.shape[0] == 514 + len(ids)  # grown for the new rows
    pipe = SimpleNamespace(_execution_device=torch.device("cpu"))
    with torch.no_grad():
        word = _encode_chunks(pipe, tokenizer, encoder, split_chunks("a red barn", tokenizer)[0], True, 1)
        named = _encode_chunks(pipe, tokenizer, encoder, split_chunks("a emb barn", tokenizer, lookup)[0], True, 1)
    assert torch.allclose(named[0], word[0]) and torch.allclose(named[1], word[1])


def test_a_real_size_sd15_embedding_reaches_the_real_size_text_encoder(tmp_path):
    """The real SD1.5 text encoder (random weights, bundled config) and the real CLIP tokenizer: a 4-vector,
    768-wide embedding named in the prompt is placed in the encoder's rows and changes the conditioning."""
    import types

    from transformers import CLIPTextConfig, CLIPTextModel

    from studio.generation.embeddings import load_vectors
    from studio.generation.prompts import encode_prompts
    from studio.models.clip_tokenizer import clip_tokenizer
    from studio.models.single_file import BUNDLED_CONFIGS

    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(BUNDLED_CONFIGS[ModelKind.SD15] / "text_encoder")).eval()
    pipe = types.SimpleNamespace(
        tokenizer=clip_tokenizer(), text_encoder=encoder, _execution_device=torch.device("cpu")
    )
    rows = torch.randn(4, 768)
    save_embedding(tmp_path, "AidStyle", [rows])
    (entry,) = scan_embeddings(tmp_path)
    assert (entry.kind, entry.vectors, entry.problem) == (ModelKind.SD15, 4, None)

    def conditioning(prompt, embeddings):
        result = encode_prompts(pipe, sdxl=False, prompt=prompt, negative_prompt="", steps=2, embeddings=embeddings)
        return result.positive[0][1].embeds, result

    named, result = conditioning("satellite image, AidStyle", {"AidStyle": load_vectors(entry)})
    as_words, _ = conditioning("satellite image, AidStyle", None)
    assert result.embeddings_used == ("AidStyle",)
    table = encoder.get_input_embeddings().weight
    placed = [i for i in range(table.shape[0]) if i >= 49408 and torch.equal(table[i], rows[i - 49408])]
    assert len(placed) == 4  # the file's vectors are the rows the prompt's tokens point at
    assert named.shape == as_words.shape == (1, 77, 768)
    assert (named - as_words).abs().mean() > 1e-3
