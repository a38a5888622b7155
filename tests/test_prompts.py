"""A1111 prompt syntax: the parsers against A1111's rules, then images through the real generation path.

The expected lists are written by hand from A1111's rules (`modules/prompt_parser.py` doctests where it has them).
Image tests run the tiny demo models (byte-level tokenizer: one token per character, the last one of a word
carries `</w>`), so token counts below are character counts.
"""

import pytest
import torch

from studio.generation.prompts import (
    BREAK,
    count_tokens,
    parse_attention,
    prompt_schedule,
    schedule_index,
    split_chunks,
)
from studio.generation.request import GenerationRequest
from studio.generation.run import generate
from studio.models.manager import ModelManager
from studio.models.tiny import byte_level_tokenizer
from tests.helpers import mean_abs_diff, pixels

MODELS = ["demo-sd15", "demo-sdxl"]

# --- Parsers (pure Python, fast) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("((word))", [("word", 1.1 * 1.1)]),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
        ("(word:1.3)", [("word", 1.3)]),
        ("(word: 1.3 )", [("word", 1.3)]),
        ("((word:1.3))", [("word", 1.3 * 1.1)]),
        ("(a (b:2) c)", [("a ", 1.1), ("b", 2 * 1.1), (" c", 1.1)]),
        ("(word:0.5)", [("word", 0.5)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
        ("a (b [c", [("a ", 1.0), ("b ", 1.1), ("c", 1.1 / 1.1)]),
        ("closing) only]", [("closing) only]", 1.0)]),
        ("a:b", [("a:b", 1.0)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        (r"\(word\)", [("(word)", 1.0)]),
        (r"\[a\] \\ b", [("[a] \\ b", 1.0)]),
        (r"lone\backslash", [("lonebackslash", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.3 * 1.1 * 1.1),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.1**4),
                (".", 1.1),
            ],
        ),
        ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("a BREAKb", [("a BREAKb", 1.0)]),
        ("a break b", [("a break b", 1.0)]),
        ("", [("", 1.0)]),
        ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),  # A1111 raises here; we keep the text, weighted by the open `(`
        ("(a:-1) BREAK (b:-1.)", [("a", -1.0), ("", 1.0), BREAK, ("", 1.0), ("b", -1.0)]),  # -1 is a weight
        ("(BREAK:-1)", [("", -1.0), BREAK, ("", -1.0)]),  # inside brackets still a break (A1111: the word)
    ],
)
def test_attention_is_parsed_as_a1111_does(prompt, expected):
    parsed = parse_attention(prompt)
    assert [piece is BREAK for piece in parsed] == [piece is BREAK for piece in expected]
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


@pytest.mark.parametrize(
    "prompt, expected",
    [
        # A1111's own doctests (10 steps).
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
        ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
        ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
        # The three editing forms, fractions and step numbers.
        ("[cat:dog:0.5]", [(5, "cat"), (10, "dog")]),
        ("a [cat::4] b", [(4, "a cat b"), (10, "a  b")]),
        ("[cat:dog:1.0]", [(10, "cat")]),  # "1.0" has a decimal point: the whole run
        ("[cat:dog:1]", [(1, "cat"), (10, "dog")]),  # "1" is a step number
        ("[cat:dog:25]", [(10, "cat")]),  # past the end: never switches
        ("[cat:dog:0]", [(10, "dog")]),
        ("[(cat:1.2):dog:0.3] x", [(3, "(cat:1.2) x"), (10, "dog x")]),
        ("[a|b] [c:d:5]", [(i, ("a" if i % 2 else "b") + (" c" if i <= 5 else " d")) for i in range(1, 11)]),
        # What A1111's parser rejects is used as written.
        ("a | b", [(10, "a | b")]),
        ("trailing \\", [(10, "trailing \\")]),
        (r"\[not:edited:3\]", [(10, r"\[not:edited:3\]")]),
    ],
)
def test_prompt_schedule_matches_a1111(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


@pytest.mark.parametrize(
    "schedule, expected",
    [
        # A1111's samplers count steps from 0 and use an entry while step <= its end.
        ([(2, "cat"), (4, "dog")], ["cat", "cat", "cat", "dog"]),
        ([(1, "a"), (2, "b"), (3, "a"), (4, "b")], ["a", "a", "b", "a"]),
        ([(4, "x")], ["x", "x", "x", "x", "x"]),  # past the end (Heun): the last entry
    ],
)
def test_schedule_index_counts_steps_from_zero(schedule, expected):
    assert [schedule[schedule_index(schedule, step)][1] for step in range(len(expected))] == expected


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def words(count, word="w"):
    """`count` one-character words: exactly `count` tokens for the byte-level tokenizer."""
    return " ".join([word] * count)


@pytest.mark.parametrize(
    "prompt, chunk_fill, count",
    [
        # (prompt, prompt tokens in each chunk, A1111's token count)
        ("", [0], 0),
        (words(32), [32], 32),
        (words(75), [75], 75),
        (words(76), [75, 1], 76),
        (words(80), [75, 5], 80),
        (words(150), [75, 75], 150),
        # The comma is token 61; when the chunk fills, it is 15 tokens back (<= 20): the chunk ends after it.
        (words(60) + " , " + words(20), [61, 20], 95),
        # The comma is token 51, 25 tokens back: a hard split at 75.
        (words(50) + " , " + words(30), [75, 6], 81),
        ("a BREAK b", [1, 1], 76),
        ("BREAK a", [0, 1], 76),
        ("a BREAK", [1], 75),  # a BREAK counts its chunk as full, as A1111
        (words(80) + " BREAK b", [75, 5, 1], 151),
    ],
)
def test_prompts_split_into_chunks_as_a1111(tokenizer, prompt, chunk_fill, count):
    chunks, token_count = split_chunks(prompt, tokenizer)
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert token_count == count
    assert [len(chunk.tokens) for chunk in chunks] == [77] * len(chunk_fill)
    for chunk, fill in zip(chunks, chunk_fill):
        assert chunk.tokens[0] == start and chunk.tokens[fill + 1 :] == [end] * (76 - fill)
        assert end not in chunk.tokens[1 : fill + 1]


def test_weights_follow_their_tokens_and_escapes_stay_literal(tokenizer):
    [chunk], _ = split_chunks("ab (cd:1.5) [e]", tokenizer)
    ids = tokenizer("ab cd e", add_special_tokens=False)["input_ids"]
    assert chunk.tokens[1:6] == ids
    assert chunk.weights[:7] == pytest.approx([1.0, 1.0, 1.0, 1.5, 1.5, 1 / 1.1, 1.0])
    [literal], _ = split_chunks(r"a \(b\)", tokenizer)
    assert literal.tokens[1:5] == tokenizer("a (b)", add_special_tokens=False)["input_ids"]
    assert set(literal.weights) == {1.0}


@pytest.mark.parametrize(
    "prompt, expected",
    [
        (words(32), (32, 75)),
        (words(80), (80, 150)),
        ("", (0, 75)),
        (words(75), (75, 75)),
        ("a BREAK b", (76, 150)),
        (words(30) + " <lora:alps:0.8>", (30, 75)),  # LoRA tags are not sent to the text encoder
        ("[" + words(10) + ":" + words(80) + ":0.5]", (80, 150)),  # the longest text of the schedule
    ],
)
def test_count_tokens_like_the_a1111_counter(tokenizer, prompt, expected):
    assert count_tokens(prompt, tokenizer) == expected


def test_count_tokens_with_the_real_clip_tokenizer():
    from studio.models.clip_tokenizer import clip_tokenizer

    # "a photo of a mountain lake , sunrise" is 8 CLIP tokens; emphasis brackets are not tokens.
    assert count_tokens("a photo of a (mountain lake:1.2), [sunrise]", clip_tokenizer()) == (8, 75)


# --- Through the real generation path -----------------------------------------------------------------------------

PROMPT = "satellite image of mountains"


@pytest.fixture
def manager(studio_config):
    return ModelManager(studio_config)


def image(manager, model, prompt, **overrides):
    fields = dict(model=model, prompt=prompt, steps=2, seed=7, width=64, height=64)
    fields.update(overrides)
    return generate(manager, GenerationRequest(**fields)).images[0]


class UnetInputs:
    """Records what the UNet is conditioned on at each call (the sampler's view of the prompt)."""

    def __init__(self, manager, model):
        self.calls = []
        with manager.acquire(model) as loaded:
            self.handle = loaded.pipe.unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, _args, kwargs):
        pooled = (kwargs.get("added_cond_kwargs") or {}).get("text_embeds")
        self.calls.append((kwargs["encoder_hidden_states"].clone(), None if pooled is None else pooled.clone()))

    def run(self, manager, model, prompt, **overrides):
        self.calls = []
        result = image(manager, model, prompt, **overrides)
        return result, self.calls


@pytest.mark.parametrize("model", MODELS)
def test_weight_one_is_the_plain_prompt_and_bigger_weights_change_more(manager, model):
    plain = image(manager, model, PROMPT)
    assert (pixels(image(manager, model, "(satellite:1.0) image of mountains")) == pixels(plain)).all()
    mild = mean_abs_diff(plain, image(manager, model, "(satellite:1.2) image of mountains"))
    strong = mean_abs_diff(plain, image(manager, model, "(satellite:1.5) image of mountains"))
    assert 0 < mild < strong
    assert mean_abs_diff(plain, image(manager, model, "satellite image of [mountains]")) > 0


@pytest.mark.parametrize("model", MODELS)
def test_weights_restore_the_chunk_mean(manager, model):
    recorder = UnetInputs(manager, model)
    if model == "demo-sd15":
        # SD1.5 reads the final layer norm's output; the tiny model's norm has no bias, so its outputs average
        # to ~0 and the mean cannot be restored. Give it a bias, as real CLIP has.
        with manager.acquire(model) as loaded, torch.no_grad():
            loaded.pipe.text_encoder.final_layer_norm.bias.fill_(0.1)
    _img, [(plain, _)] = recorder.run(manager, model, PROMPT, steps=1)
    _img, [(weighted, _)] = recorder.run(manager, model, "(satellite:1.5) image of [mountains]", steps=1)
    positive, plain_positive = weighted[1], plain[1]  # [negative, positive] under classifier-free guidance
    assert not torch.equal(positive, plain_positive)
    # SDXL: each text encoder's half is restored separately, so the mean of each half is kept.
    halves = 2 if model == "demo-sdxl" else 1
    for new, old in zip(positive.chunk(halves, dim=-1), plain_positive.chunk(halves, dim=-1)):
        assert new.mean().item() == pytest.approx(old.mean().item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_long_prompt_words_after_token_100_change_the_image(manager, model):
    head = " ".join(["mountain"] * 12)  # 12 x 8 = 96 tokens
    recorder = UnetInputs(manager, model)
    first, calls = recorder.run(manager, model, f"{head} lake river snow peaks")
    second, _ = recorder.run(manager, model, f"{head} lake river sand dunes")
    assert calls[0][0].shape[1] == 154  # two chunks, the negative prompt padded to two chunks as well
    assert mean_abs_diff(first, second) > 0


@pytest.mark.parametrize("model", MODELS)
def test_break_starts_a_new_chunk(manager, model):
    recorder = UnetInputs(manager, model)
    broken, calls = recorder.run(manager, model, "satellite BREAK mountains")
    assert calls[0][0].shape[1] == 154
    joined, calls = recorder.run(manager, model, "satellite mountains")
    assert calls[0][0].shape[1] == 77
    assert mean_abs_diff(broken, joined) > 0


@pytest.mark.parametrize("model", MODELS)
def test_escaped_brackets_are_text_and_unbalanced_ones_do_not_fail(manager, model):
    literal = image(manager, model, r"satellite \(image\) of mountains")
    weighted = image(manager, model, "satellite (image) of mountains")
    plain = image(manager, model, PROMPT)
    assert mean_abs_diff(literal, weighted) > 0 and mean_abs_diff(literal, plain) > 0
    assert image(manager, model, "satellite (image of [mountains").size == (64, 64)
    assert image(manager, model, "satellite image) of mountains]").size == (64, 64)


@pytest.mark.parametrize("model", MODELS)
def test_prompt_editing_switches_the_conditioning_at_its_step(manager, model):
    recorder = UnetInputs(manager, model)
    cat_image, cat = recorder.run(manager, model, "a cat", steps=4)
    dog_image, dog = recorder.run(manager, model, "a dog", steps=4)
    edited_image, edited = recorder.run(manager, model, "a [cat:dog:0.25]", steps=4)
    assert len(edited) == 4
    # 0.25 of 4 steps is step 1; A1111's step counter starts at 0, so cat is used for steps 0 and 1. (Two dog
    # steps, not one: a single last step can change the tiny models' image by less than one level.)
    expected = [cat[0], cat[0], dog[0], dog[0]]
    for (embeds, pooled), (want_embeds, want_pooled) in zip(edited, expected):
        assert torch.equal(embeds, want_embeds)
        if model == "demo-sdxl":
            assert torch.equal(pooled, want_pooled)  # the pooled embedding follows the edit too
    assert mean_abs_diff(edited_image, cat_image) > 0 and mean_abs_diff(edited_image, dog_image) > 0


@pytest.mark.parametrize("model", MODELS)
def test_alternation_and_editing_in_the_negative_prompt(manager, model):
    recorder = UnetInputs(manager, model)
    _img, cat = recorder.run(manager, model, "a cat", steps=4)
    _img, dog = recorder.run(manager, model, "a dog", steps=4)
    _img, alternating = recorder.run(manager, model, "a [cat|dog]", steps=4)
    # A1111's alternation list starts at step 1 and steps count from 0: cat, cat, dog, cat.
    for (embeds, _), (want, _) in zip(alternating, [cat[0], cat[0], dog[0], cat[0]]):
        assert torch.equal(embeds, want)
    _img, blurry = recorder.run(manager, model, "a cat", negative_prompt="blurry", steps=4)
    _img, edited = recorder.run(manager, model, "a cat", negative_prompt="[blurry::1]", steps=4)
    negatives = [embeds[0] for embeds, _ in edited]
    assert torch.equal(negatives[0], blurry[0][0][0]) and torch.equal(negatives[1], blurry[0][0][0])
    assert torch.equal(negatives[2], cat[0][0][0])  # the empty negative prompt, as in the "a cat" run
    assert all(torch.equal(embeds[1], cat[0][0][1]) for embeds, _ in edited)


@pytest.mark.parametrize("model", MODELS)
def test_prompt_editing_works_in_batches_and_without_guidance(manager, model):
    recorder = UnetInputs(manager, model)
    batch, calls = recorder.run(manager, model, "a [cat:dog:1]", steps=3, batch_size=2)
    assert [embeds.shape[0] for embeds, _ in calls] == [4, 4, 4]
    _img, unguided = recorder.run(manager, model, "a [cat:dog:1]", steps=3, cfg=1.0)
    assert [embeds.shape[0] for embeds, _ in unguided] == [1, 1, 1]
    assert torch.equal(unguided[0][0][0], unguided[1][0][0]) and not torch.equal(unguided[1][0][0], unguided[2][0][0])


def test_prompt_editing_counts_model_calls_with_every_scheduler(manager):
    """Like A1111's samplers, the step counter counts model calls: Heun's extra calls move the switch earlier."""
    from studio.generation.schedulers import SCHEDULER_NAMES

    recorder = UnetInputs(manager, "demo-sd15")
    _img, [(cat, _), *_] = recorder.run(manager, "demo-sd15", "a cat", steps=4)
    _img, [(dog, _), *_] = recorder.run(manager, "demo-sd15", "a dog", steps=4)
    for scheduler in SCHEDULER_NAMES:
        _img, calls = recorder.run(manager, "demo-sd15", "a [cat:dog:0.5]", steps=4, scheduler=scheduler)
        used = ["cat" if torch.equal(e, cat) else "dog" if torch.equal(e, dog) else "?" for e, _pooled in calls]
        assert used == ["cat"] * 3 + ["dog"] * (len(calls) - 3), scheduler


@pytest.mark.parametrize("model", MODELS)
def test_a_long_negative_prompt_pads_the_prompt_to_its_length(manager, model):
    recorder = UnetInputs(manager, model)
    _img, calls = recorder.run(manager, model, "a cat", negative_prompt=" ".join(["blurry"] * 20))  # 120 tokens
    assert calls[0][0].shape[1] == 154


def test_counting_tokens_does_not_import_torch():
    """The UI counts tokens as the user types, and the UI never imports torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from studio.generation.prompts import count_tokens\n"
        "from studio.models.clip_tokenizer import clip_tokenizer\n"
        "assert count_tokens('a (photo:1.2), [lake]', clip_tokenizer()) == (4, 75)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
def test_plain_prompts_encode_bit_for_bit_as_diffusers_does(manager, model, negative):
    """So plain prompts under 75 tokens keep the pixels they had when diffusers encoded the strings."""
    from studio.generation.prompts import encode_prompts

    with manager.acquire(model) as loaded:
        pipe = loaded.pipe
        sdxl = model == "demo-sdxl"
        ours = encode_prompts(pipe, sdxl=sdxl, prompt=PROMPT, negative_prompt=negative, steps=2)
        guided = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
        theirs = pipe.encode_prompt([PROMPT], negative_prompt=[negative], **guided)
    positive, negative_embeds = ours.at_step(0)
    assert torch.equal(positive.embeds, theirs[0]) and torch.equal(negative_embeds.embeds, theirs[1])
    if sdxl:
        assert torch.equal(positive.pooled, theirs[2]) and torch.equal(negative_embeds.pooled, theirs[3])
