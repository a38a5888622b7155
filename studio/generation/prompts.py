"""Prompts read the way AUTOMATIC1111 reads them ("Original" emphasis), for SD1.5 and SDXL.

    conditioning = encode_prompts(pipe, sdxl=False, prompt="a (red:1.3) barn", negative_prompt="blurry", steps=30)
    positive, negative = conditioning.at_step(0)        # PromptEmbeds: .embeds (1, 77*n, dim), .pooled (SDXL)
    count_tokens("a (red:1.3) barn", pipe.tokenizer)    # (3, 75), for a token counter; needs no torch

The rules (as in A1111's `modules/prompt_parser.py` and `modules/sd_hijack_clip.py`):

Emphasis, `parse_attention`:
- `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.3)` multiplies it by 1.3;
  nesting multiplies: `((text))` is 1.21.
- `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` are the literal characters; a lone backslash is dropped.
- Brackets that are never closed weight the rest of the prompt as if they were closed at its end
  (`(unbalanced` is 1.1); closing brackets with nothing open, and colons outside `(text:w)`, are kept as text.
- `BREAK` (upper case, a word of its own) ends the current 75-token chunk.
- The weights multiply the text encoder's output for each token of the chunk; the chunk is then rescaled so
  that its mean is what it was before weighting (A1111's "Original" emphasis).

Chunks, `split_chunks`:
- Each weighted piece of text is tokenized on its own; the tokens fill chunks of 75. When a chunk is full and
  the last comma is at most 20 tokens back, the tokens after that comma move to the next chunk.
- Each chunk is encoded alone as `<start> 75 tokens <end>`, padded with the end token (then the tokenizer's pad
  token after the first end, as SDXL's second tokenizer and diffusers do); the chunk outputs are concatenated.
  The prompt and the negative prompt are padded to the same number of chunks with empty chunks, because
  diffusers runs both in one batch (this is A1111's "pad prompt/negative prompt to be same length" option).
- SDXL: each chunk goes through both text encoders and the two hidden states are concatenated, as diffusers
  does (penultimate layer, or one more layer back per clip skip step); the pooled embedding comes from the
  second encoder on the first chunk, unweighted. SD1.5 reads the last layer, or the layer `clip_skip` from the
  end passed through the final layer norm.

Textual-inversion embeddings, `EmbeddingLookup` (files: `studio.generation.embeddings`):
- An embedding is named by its file name; it is found, as in A1111, where the name's own tokens appear in a
  weighted piece of the prompt (any case: CLIP lowercases). Its vectors take the name's place, weighted like
  the words around it, and move whole to the next chunk when they do not fit in the current one.
- The vectors are written into spare rows of the text encoder's token embedding matrix (`place_embeddings`,
  ids after the tokenizer's); the tokenizer is not changed, so a deleted or edited file leaves nothing behind.

Prompt editing and alternation, `prompt_schedule`:
- `[from:to:when]` uses `from` until sampling step `when`, then `to`; `[to:when]` adds `to`, `[from::when]`
  removes `from`. `when` with a decimal point is a fraction of the steps (`0.5`, `.25`, `1.0`), otherwise a step
  number. The step counter starts at 0 and `from` is used while `step <= when` (so `[a:b:2]` uses `a` for
  steps 0, 1 and 2), exactly as A1111's samplers count. Like A1111's, the counter counts model calls: Heun
  calls the model twice per step, so its switch comes earlier (diffusers' loop index is that same count).
- `[a|b|c]` alternates every step: a, b, c, a, ... (A1111's list starts at step 1, so step 0 also uses `a`).
- Editing can be nested and combined with emphasis: `[(a:1.2):b:0.5]`.
- A prompt A1111's parser rejects (a `|` outside `[...]`, a lone trailing backslash) is used as written.

Why not compel: compel (2.5.1, on PyPI, not installed here) has its own syntax (`word++`, `(word)1.3`, `.and()`),
weights a token by moving it away from the empty-prompt embedding instead of multiplying and restoring the
mean, down-weights (< 1) by blending with the prompt without the words, splits long prompts at any word end
instead of A1111's 20-token comma back-off, and knows neither `BREAK` nor `[from:to:when]` schedules. Images
would differ from A1111's for the same prompt and seed, which is what users coming from A1111/Civitai compare.

Where this differs from A1111, on purpose:
- The schedule parser is a small hand-written recursive parser, not A1111's Earley grammar (lark). Compared with
  that grammar on thousands of random prompts it gives the same schedules for every prompt whose brackets are
  well formed; it can differ where stray brackets make A1111's grammar ambiguous (`[[:: 3]]:`), and on
  `a [{b|d{:.5] c`, which A1111's doctest marks as unsupported.
- `BREAK` inside brackets still breaks (A1111 multiplies its marker and then reads it as the word "BREAK").
- A1111 restores the mean over every prompt it encodes in one batch (all the texts of a schedule together);
  here each text's chunk is rescaled alone, which is what A1111 gives for a prompt without editing.
- `(text:1.2.3)` is kept as text (A1111 raises an error).
- When a weighted chunk's mean is ~0 (an encoder whose outputs average to zero, like the tiny test models'
  bias-free final layer norm), the mean is not restored: A1111 would divide by ~0 and produce NaNs.
- Past the last scheduled step (Heun's extra calls), the last entry of the schedule is used (A1111: the first).
- SDXL with an empty negative prompt: A1111 uses zeros; we encode "" as diffusers did before this module, so
  plain prompts keep their pixels. SDXL clip skip follows diffusers' layer choice (A1111 ignores clip skip for
  SDXL by default) and applies to the negative prompt too (diffusers applied it to the prompt only).

Only the functions that encode import torch, so `count_tokens` and the parsers are cheap to import.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20
BREAK = ("BREAK", -1.0)
"""The marker `parse_attention` puts where a `BREAK` was (A1111's pair); test it with `is`, since a prompt can
weight the word BREAK by -1 too."""

# --- Emphasis ---------------------------------------------------------------------------------------------------

_ATTENTION = re.compile(
    r"""
    \\[()\[\]\\]               # an escaped bracket or backslash: the literal character
  | \\                         # any other backslash: dropped
  | [(\[]                      # an opening bracket
  | :\s*([+-]?[.\d]+)\s*\)     # `:1.3)` closes a round bracket with an explicit weight
  | [)\]]                      # a closing bracket
  | [^\\()\[\]:]+              # text
  | :                          # a colon that gives no weight
    """,
    re.X,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """`"a (b:1.3) c"` -> `[("a ", 1.0), ("b", 1.3), (" c", 1.0)]`; runs of equal weight merged, `BREAK` as `BREAK`."""
    pieces: list = []  # [text, weight] lists (closing brackets multiply them in place) and BREAK markers
    open_round: list[int] = []  # index in `pieces` where each open bracket starts
    open_square: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece is not BREAK:
                piece[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round and _is_float(weight):
            multiply_from(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            multiply_from(open_round.pop(), 1.1)
        elif token == "]" and open_square:
            multiply_from(open_square.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_BREAK_SPLIT.split(token)):
                if i > 0:
                    pieces.append(BREAK)
                pieces.append([part, 1.0])
    # Unclosed brackets act as if closed at the end (outermost first, as A1111: the order sets the last float bit).
    for start in open_round:
        multiply_from(start, 1.1)
    for start in open_square:
        multiply_from(start, 1 / 1.1)

    merged: list = []
    for piece in pieces or [["", 1.0]]:
        if merged and piece is not BREAK and merged[-1] is not BREAK and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [piece if piece is BREAK else (piece[0], piece[1]) for piece in merged]


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# --- Prompt editing and alternation ------------------------------------------------------------------------------

# A1111's grammar, which the parser below follows:
#   start:      (prompt | /[][():]/+)*                 stray brackets and colons are text, at the top level only
#   prompt:     (emphasized | scheduled | alternate | plain | WHITESPACE)*
#   emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"      (kept as written)
#   scheduled:  "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
#   alternate:  "[" prompt ("|" [prompt])+ "]"
#   plain:      /([^\\\[\]():|]|\\.)+/
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)\s*\]")


@dataclasses.dataclass
class _Scheduled:
    before: list | None
    after: list
    when: str


@dataclasses.dataclass
class _Alternate:
    options: list[list]


def _parse_sequence(text: str, pos: int) -> tuple[list, int]:
    """A `prompt`: as much plain text and well-formed bracket groups as possible (never fails)."""
    nodes: list = []
    while pos < len(text):
        plain = _PLAIN.match(text, pos)
        if plain:
            nodes.append(plain.group(0))
            pos = plain.end()
            continue
        group = _parse_group(text, pos) if text[pos] in "([" else None
        if group is None:
            break
        node, pos = group
        nodes.append(node)
    return nodes, pos


def _expect(text: str, pos: int, char: str) -> bool:
    return pos < len(text) and text[pos] == char


def _parse_group(text: str, pos: int):
    """One `(...)` or `[...]` group starting at `pos`: (node, end) or None when it is not well formed."""
    if text[pos] == "(":
        inner, end = _parse_sequence(text, pos + 1)
        if _expect(text, end, ")"):
            return ["(", *inner, ")"], end + 1
        if _expect(text, end, ":"):
            weight, end2 = _parse_sequence(text, end + 1)
            if _expect(text, end2, ")"):
                return ["(", *inner, ":", *weight, ")"], end2 + 1
        return None
    first, end = _parse_sequence(text, pos + 1)
    if _expect(text, end, ":"):
        # [from:to:when]
        second, end2 = _parse_sequence(text, end + 1)
        number = _NUMBER.match(text, end2 + 1) if _expect(text, end2, ":") else None
        if number:
            return _Scheduled(first, second, number.group(1)), number.end()
        # [to:when]
        number = _NUMBER.match(text, end + 1)
        if number:
            return _Scheduled(None, first, number.group(1)), number.end()
        return None
    if _expect(text, end, "|"):
        options = [first]
        while _expect(text, end, "|"):
            option, end = _parse_sequence(text, end + 1)
            options.append(option)
        if _expect(text, end, "]"):
            return _Alternate(options), end + 1
        return None
    if _expect(text, end, "]"):
        return ["[", *first, "]"], end + 1
    return None


def _parse_schedule_tree(prompt: str) -> list | None:
    nodes: list = []
    pos = 0
    while pos < len(prompt):
        sequence, pos = _parse_sequence(prompt, pos)
        nodes += sequence
        if pos < len(prompt):
            if prompt[pos] not in "[]():":
                return None  # a `|` outside brackets or a lone trailing backslash: A1111 gives up too
            nodes.append(prompt[pos])
            pos += 1
    return nodes


def _walk(nodes: list):
    for node in nodes:
        if isinstance(node, _Scheduled):
            yield node
            yield from _walk((node.before or []) + node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)
        elif isinstance(node, list):
            yield from _walk(node)


def _when_step(when: str, steps: int) -> int:
    value = float(when)
    return min(steps, int(value * steps if "." in when else value))


def _render(nodes: list, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = (node.before or []) if step <= _when_step(node.when, steps) else node.after
            out.append(_render(chosen, step, steps))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(_render(node, step, steps))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """`("a [b:c:0.5]", 10)` -> `[(5, "a b"), (10, "a c")]`: each text is used up to and including its step."""
    tree = _parse_schedule_tree(prompt)
    if tree is None:
        return [(steps, prompt)]
    ends = {steps}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            end = _when_step(node.when, steps)
            if end >= 1:
                ends.add(end)
        else:
            ends.update(range(1, steps + 1))
    return [(end, _render(tree, end, steps)) for end in sorted(ends)]


def schedule_index(schedule: list[tuple[int, str]], step: int) -> int:
    """Which entry of a schedule the sampler uses at `step` (counted from 0, as A1111's samplers do)."""
    for i, (end, _text) in enumerate(schedule):
        if step <= end:
            return i
    return len(schedule) - 1


# --- Tokens and chunks -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Chunk:
    """One text-encoder input: `<start>`, 75 prompt or padding tokens, `<end>`, and a weight for each."""

    tokens: list[int]
    weights: list[float]


class EmbeddingLookup:
    """Textual-inversion embeddings as A1111 finds them in a prompt: by the token ids of their (file) name.

    `vectors` maps each name to the token ids its vectors take in the text encoder. A name is found where its
    tokens appear in a weighted piece of the prompt (so `easynegative` is not found inside `easynegatives`,
    whose last token differs), longest name first; `used` collects the names found.
    """

    def __init__(self, tokenizer, vectors: dict[str, list[int]]):
        self.vectors = vectors
        self.used: set[str] = set()
        self._by_first: dict[int, list[tuple[list[int], str]]] = {}
        for name in vectors:
            ids = tokenizer(name, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, name))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda candidate: len(candidate[0]), reverse=True)

    def find(self, tokens: list[int], position: int) -> tuple[str, int] | None:
        """(name, length in prompt tokens) of the embedding whose name starts at `position`, or None."""
        for ids, name in self._by_first.get(tokens[position], ()):
            if tokens[position : position + len(ids)] == ids:
                return name, len(ids)
        return None


def split_chunks(prompt: str, tokenizer, embeddings: EmbeddingLookup | None = None) -> tuple[list[Chunk], int]:
    """Tokenize an (already scheduled) prompt into 77-token chunks; also returns A1111's token count.

    An embedding's name becomes its vectors' token ids; like A1111, an embedding never straddles two chunks.
    """
    parsed = parse_attention(prompt)
    texts = ["" if piece is BREAK else piece[0] for piece in parsed]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # not get_vocab(): it copies 49408 entries on every call
    comma = None if comma == tokenizer.unk_token_id else comma
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id

    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1
    count = 0

    def close(last: bool = False) -> None:
        nonlocal tokens, weights, last_comma, count
        count += len(tokens) if last else CHUNK_LENGTH
        padding = CHUNK_LENGTH - len(tokens)
        chunks.append(Chunk([start, *tokens, *[end] * padding, end], [1.0, *weights, *[1.0] * padding, 1.0]))
        tokens, weights, last_comma = [], [], -1

    for piece_ids, piece in zip(ids, parsed):
        if piece is BREAK:
            close()
            continue
        weight = piece[1]
        position = 0
        while position < len(piece_ids):
            token = piece_ids[position]
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_LENGTH and last_comma != -1 and CHUNK_LENGTH - last_comma <= COMMA_BACKTRACK:
                # The chunk is full and a comma is near: end the chunk at the comma, carry the rest over.
                keep = last_comma + 1
                moved_tokens, moved_weights = tokens[keep:], weights[keep:]
                tokens, weights = tokens[:keep], weights[:keep]
                close()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_LENGTH:
                close()
            found = embeddings.find(piece_ids, position) if embeddings is not None else None
            if found is None:
                tokens.append(token)
                weights.append(weight)
                position += 1
                continue
            name, length = found
            vector_ids = embeddings.vectors[name]
            embeddings.used.add(name)
            if len(tokens) + len(vector_ids) > CHUNK_LENGTH:
                close()
            tokens += vector_ids
            weights += [weight] * len(vector_ids)
            position += length
    if tokens or not chunks:
        close(last=True)
    return chunks, count


def count_tokens(prompt: str, tokenizer, steps: int = 20, embeddings: EmbeddingLookup | None = None) -> tuple[int, int]:
    """A1111's token counter: (tokens used, tokens that fit in the chunks so far), e.g. (32, 75) or (80, 150).

    `<lora:...>` tags are left out; with prompt editing, the longest text of the schedule counts; an embedding
    counts its vectors.
    """
    from studio.generation.infotext import split_lora_tags

    clean, _loras = split_lora_tags(prompt)
    used = max(split_chunks(text, tokenizer, embeddings)[1] for _end, text in prompt_schedule(clean, steps))
    return used, math.ceil(max(used, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


# One lock for the counter's shared tokenizer: the prompt boxes of several pages count at once, and a `tokenizers`
# tokenizer that changes its truncation settings while another thread encodes raises "Already borrowed".
_COUNTER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def counting_tokenizer():
    """The real CLIP tokenizer (SD1.5 and SDXL read prompts with it), built once."""
    from studio.models.clip_tokenizer import clip_tokenizer

    return clip_tokenizer()


@functools.lru_cache(maxsize=8)
def _counting_lookup(embeddings: tuple[tuple[str, int], ...]) -> dict[str, list[int]]:
    return {name: [0] * vectors for name, vectors in embeddings}


def token_counter(prompt: str, embeddings: tuple[tuple[str, int], ...] = ()) -> str:
    """The text under a prompt box, as A1111 shows it: `32/75`, then `80/150` once a second chunk starts.

    `embeddings`: (name, vector count) of the embeddings the prompt may name; each counts its vectors.
    """
    tokenizer = counting_tokenizer()
    with _COUNTER_LOCK:
        lookup = EmbeddingLookup(tokenizer, _counting_lookup(tuple(embeddings))) if embeddings else None
        used, room = count_tokens(prompt, tokenizer, embeddings=lookup)
    return f"{used}/{room}"


def _empty_chunk(tokenizer) -> Chunk:
    return split_chunks("", tokenizer)[0][0]


# --- Embeddings --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PromptEmbeds:
    """What the UNet is conditioned on for one text: token embeddings and, for SDXL, the pooled embedding."""

    embeds: torch.Tensor  # (1, 77 * chunks, dim)
    pooled: torch.Tensor | None = None  # (1, pooled dim), SDXL only


@dataclasses.dataclass
class ScheduledConditioning:
    """The prompt and negative prompt as schedules of (last step, embeddings), all with the same length."""

    positive: list[tuple[int, PromptEmbeds]]
    negative: list[tuple[int, PromptEmbeds]]
    embeddings_used: tuple[str, ...] = ()
    """The textual-inversion embeddings the prompt or the negative prompt named, sorted (for the infotext)."""

    @property
    def changes(self) -> bool:
        """Whether the conditioning changes between steps (prompt editing or alternation)."""
        return len(self.positive) > 1 or len(self.negative) > 1

    def changes_after(self, step: int) -> bool:
        """Whether step `step + 1` uses other embeddings than `step` (both counted from 0)."""
        return any(_entry(schedule, step + 1) != _entry(schedule, step) for schedule in (self.positive, self.negative))

    def at_step(self, step: int) -> tuple[PromptEmbeds, PromptEmbeds]:
        return (
            self.positive[_entry(self.positive, step)][1],
            self.negative[_entry(self.negative, step)][1],
        )


def _entry(schedule: list[tuple[int, object]], step: int) -> int:
    return schedule_index([(end, "") for end, _ in schedule], step)


def _text_encoders(pipe, sdxl: bool) -> list[tuple[object, object]]:
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if sdxl:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def encode_prompts(
    pipe,
    *,
    sdxl: bool,
    prompt: str,
    negative_prompt: str,
    steps: int,
    clip_skip: int = 1,
    embeddings: dict[str, list[torch.Tensor]] | None = None,
):
    """Encode a prompt and a negative prompt, with their schedules, for a diffusers SD1.5 or SDXL pipeline.

    `embeddings`: textual inversions the prompts may name, {name: [vectors (n, width) for each text encoder]}.
    """
    import torch

    encoders = _text_encoders(pipe, sdxl)
    lookups = [
        EmbeddingLookup(tokenizer, place_embeddings(tokenizer, encoder, [(n, v[i]) for n, v in embeddings.items()]))
        if embeddings
        else None
        for i, (tokenizer, encoder) in enumerate(encoders)
    ]
    schedules = [prompt_schedule(prompt, steps), prompt_schedule(negative_prompt, steps)]
    texts = sorted({text for schedule in schedules for _end, text in schedule})
    # chunks[text][encoder]: every text and encoder padded to the same number of chunks.
    chunks = {
        text: [split_chunks(text, tokenizer, lookup)[0] for (tokenizer, _), lookup in zip(encoders, lookups)]
        for text in texts
    }
    length = max(len(per_encoder) for by_encoder in chunks.values() for per_encoder in by_encoder)
    embeds = {}
    with torch.no_grad():
        for text in texts:
            parts, pooled = [], None
            for (tokenizer, encoder), text_chunks in zip(encoders, chunks[text]):
                text_chunks = text_chunks + [_empty_chunk(tokenizer)] * (length - len(text_chunks))
                hidden, pooled_here = _encode_chunks(pipe, tokenizer, encoder, text_chunks, sdxl, clip_skip)
                parts.append(hidden)
                pooled = pooled_here if pooled_here is not None else pooled
            embeds[text] = PromptEmbeds(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0], pooled)
    positive, negative = ([(end, embeds[text]) for end, text in schedule] for schedule in schedules)
    used = sorted(set().union(*(lookup.used for lookup in lookups if lookup is not None)))
    return ScheduledConditioning(positive, negative, tuple(used))


def place_embeddings(tokenizer, encoder, vectors: list[tuple[str, torch.Tensor]]) -> dict[str, list[int]]:
    """Write embedding vectors into rows of the text encoder's token embedding matrix, after the tokenizer's ids.

    Returns {name: the ids of its rows}. The rows are rewritten on every call (a changed file takes effect at
    once; rows of embeddings not named are never read), and the matrix only grows when more rows are needed.
    The tokenizer is left alone: `EmbeddingLookup` finds the names by their ordinary tokens.
    """
    import torch

    from studio.errors import InvalidRequestError

    table = encoder.get_input_embeddings()
    width = table.weight.shape[1]
    for name, tensor in vectors:
        if tensor.shape[-1] != width:
            raise InvalidRequestError(
                f"Embedding {name!r} has vectors {tensor.shape[-1]} wide, but this model's text encoder takes {width}: "
                "it was made for another base model. Use it with the model it was trained for."
            )
    needed = len(tokenizer) + sum(len(tensor) for _name, tensor in vectors)
    if table.weight.shape[0] < needed:
        encoder.resize_token_embeddings(needed, mean_resizing=False)
        table = encoder.get_input_embeddings()
    if table.weight.device.type == "meta":
        raise InvalidRequestError(
            "Embeddings cannot be used with --memory-mode sequential-offload; start Studio with model-offload."
        )
    placed, row = {}, len(tokenizer)
    with torch.no_grad():
        for name, tensor in vectors:
            ids = list(range(row, row + len(tensor)))
            table.weight[ids] = tensor.to(device=table.weight.device, dtype=table.weight.dtype)
            placed[name] = ids
            row += len(tensor)
    return placed


def _encode_chunks(pipe, tokenizer, encoder, chunks: list[Chunk], sdxl: bool, clip_skip: int):
    """(1, 77 * len(chunks), dim) weighted hidden states, and the pooled output of the first chunk (or None)."""
    import torch

    device = pipe._execution_device
    ids = torch.tensor([_with_padding(chunk.tokens, tokenizer) for chunk in chunks], device=device)
    if sdxl:
        # diffusers' SDXL reads the penultimate layer, one more back per clip skip step, with no final norm.
        output = encoder(ids, output_hidden_states=True)
        hidden = output.hidden_states[-(clip_skip + 1)]
        pooled = output[0][:1] if output[0].ndim == 2 else None
        if pooled is not None and max(chunks[0].tokens) > tokenizer.eos_token_id:
            # Embedding rows have ids above end-of-text, and CLIP configs with the old `eos_token_id` (SDXL's) pool
            # at the highest id: pool at the first end token ourselves, as the encoder means to.
            end_at = chunks[0].tokens.index(tokenizer.eos_token_id)
            pooled = encoder.text_projection(output.last_hidden_state[:1, end_at])
    else:
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = torch.tensor([_attention_mask(chunk.tokens, tokenizer) for chunk in chunks], device=device)
        if clip_skip > 1:
            # A1111: the layer `clip_skip` from the end, through the final layer norm.
            output = encoder(ids, attention_mask=mask, output_hidden_states=True)
            hidden = encoder.final_layer_norm(output.hidden_states[-clip_skip])
        else:
            hidden = encoder(ids, attention_mask=mask)[0]
        pooled = None
    weights = torch.tensor([chunk.weights for chunk in chunks], dtype=torch.float32, device=hidden.device)
    if not torch.all(weights == 1):
        # A1111 "Original": weight each token's output, then bring the chunk's mean back to what it was
        # (in float32, as A1111's float multipliers promote it). With all weights 1 this is the identity, so
        # skipping it keeps plain prompts bit-identical to diffusers' own encoding.
        hidden = hidden.clone()
        for i in range(len(chunks)):
            chunk = hidden[i].float()
            weighted = chunk * weights[i].unsqueeze(-1)
            new_mean = weighted.mean()
            if new_mean.abs() > _MEAN_EPSILON * weighted.abs().mean():
                weighted = weighted * (chunk.mean() / new_mean)
            hidden[i] = weighted.to(hidden.dtype)
    return hidden.reshape(1, -1, hidden.shape[-1]), pooled


# Restoring the mean divides by the weighted chunk's mean. Real CLIP outputs have a mean far from 0 (the final
# layer norm has a bias), but an encoder whose outputs average to ~0 (a bias-free layer norm, as in the tiny test
# models) would turn that into a division by ~0: there the weights are applied without restoring the mean.
_MEAN_EPSILON = 1e-4


def _with_padding(tokens: list[int], tokenizer) -> list[int]:
    """After the first end token, use the tokenizer's pad token (SDXL's second tokenizer pads with `!`)."""
    first_end = tokens.index(tokenizer.eos_token_id)
    return tokens[: first_end + 1] + [tokenizer.pad_token_id] * (len(tokens) - first_end - 1)


def _attention_mask(tokens: list[int], tokenizer) -> list[int]:
    first_end = tokens.index(tokenizer.eos_token_id)
    return [1] * (first_end + 1) + [0] * (len(tokens) - first_end - 1)
