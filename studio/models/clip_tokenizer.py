"""The real CLIP tokenizer (49408 tokens, used by SD1.5 and both SDXL text encoders), built offline.

Single-file checkpoints carry no tokenizer, and the Hub is out of reach offline, so we build it from
CLIP's own BPE file (`configs/bpe_simple_vocab_16e6.txt.gz`, MIT, see `configs/LICENSE-clip`) the
way CLIP's reference tokenizer reads it:

- merges: lines 1 .. 48894 of the file (line 0 is a version header; CLIP keeps exactly
  49152 - 256 - 2 merges so that the vocabulary is 49408 entries);
- vocab: the 256 byte symbols (in `bytes_to_unicode` dict order, printable bytes first), the same
  with `</w>`, one entry per merge (the two halves joined), then `<|startoftext|>` (49406) and
  `<|endoftext|>` (49407).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILE = Path(__file__).resolve().parent / "configs" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
_MERGE_COUNT = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    """CLIP's `bytes_to_unicode` values in its dict order: printable bytes stand for themselves and
    come first, then every other byte, mapped to chr(256 + n). The vocabulary ids follow this order
    (so "a</w>" is 256 + 64 = 320), which is not byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    # The `tokenizers` BPE model takes merges as (left, right) pairs.
    merges = tuple(tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1])
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [left + right for left, right in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        # A damaged or different BPE file: the ids would silently not match the text encoders.
        raise RuntimeError(f"{BPE_FILE} gives {len(vocab)} tokens instead of {VOCAB_SIZE}; reinstall Studio.")
    return vocab, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A fresh CLIP tokenizer; SD1.5 and SDXL's first encoder pad with `<|endoftext|>`, SDXL's second with `!`."""
    vocab, merges = _vocab_and_merges()
    # The tokenizer keeps references to what it is given; copies keep the cache safe from mutation.
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=77)
