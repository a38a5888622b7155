"""The order samples are trained in: a pure function of (seed, epoch), so a resumed run sees the same data.

An epoch shuffles the samples, groups them by bucket (a batch must share one image size), cuts each
group into batches and shuffles the batches. Micro-batch `i` of the whole run is batch `i % per_epoch`
of epoch `i // per_epoch`, so nothing about the order needs saving in a checkpoint: resuming at step
`s` just continues at micro-batch `s * gradient_accumulation * processes`.
"""

from __future__ import annotations

import collections
import functools
import random


class DataOrder:
    def __init__(self, buckets: list[tuple[int, int]], *, batch_size: int, seed: int, random_flip: bool):
        """`buckets[i]` is the bucket of sample i."""
        self.buckets = buckets
        self.batch_size = batch_size
        self.seed = seed
        self.random_flip = random_flip
        counts = collections.Counter(buckets)
        self.per_epoch = sum(-(-count // batch_size) for count in counts.values())

    @functools.lru_cache(maxsize=4)
    def epoch(self, epoch: int) -> list[list[tuple[int, bool]]]:
        """Batches of (sample index, flipped) for one epoch."""
        rng = random.Random(f"{self.seed}:{epoch}")
        indices = list(range(len(self.buckets)))
        rng.shuffle(indices)
        groups: dict[tuple[int, int], list[tuple[int, bool]]] = {}
        for i in indices:
            flipped = self.random_flip and rng.random() < 0.5
            groups.setdefault(self.buckets[i], []).append((i, flipped))
        batches = [g[j : j + self.batch_size] for g in groups.values() for j in range(0, len(g), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def micro_batch(self, index: int) -> list[tuple[int, bool]]:
        return self.epoch(index // self.per_epoch)[index % self.per_epoch]
