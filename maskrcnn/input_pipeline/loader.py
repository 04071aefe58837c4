"""Batches: examples prepared in a small thread pool, in a seeded per-epoch order that a resume repeats."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator

import numpy as np

from maskrcnn.config import Config
from maskrcnn.input_pipeline.instances import prepare
from maskrcnn.input_pipeline.sources import open_split

# The batch entries the model reads (the rest is bookkeeping for evaluation and logging).
MODEL_INPUTS = ("image", "boxes", "classes", "masks", "valid", "ignore_boxes", "ignore_valid")


def _stack(items: list[dict]) -> dict:
    return {k: np.stack([np.asarray(item[k]) for item in items]) for k in items[0]}


def _batched(jobs: list[list], work, workers: int, ahead: int = 2) -> Iterator[dict]:
    """Runs ``work`` on every item of every job (a batch) in a thread pool, ``ahead`` batches ahead."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        try:
            for job in jobs:
                pending.append([pool.submit(work, *item) for item in job])
                if len(pending) > ahead:
                    yield _stack([f.result() for f in pending.pop(0)])
            while pending:
                yield _stack([f.result() for f in pending.pop(0)])
        finally:  # an abandoned iterator does not finish its prefetched batches
            for futures in pending:
                for f in futures:
                    f.cancel()


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def steps_per_epoch(config: Config) -> int:
    """Full batches in one pass over the training split, at least 1 (the remainder waits for another
    epoch's order)."""
    return max(1, len(open_split(config.data, config.data.train_split)) // config.train.batch_size)


def _epoch_order(n: int, seed: int, epoch: int, count: int) -> np.ndarray:
    """``count`` example positions for one epoch: seeded permutations of range(n), concatenated as needed."""
    rounds = -(-count // n)
    return np.concatenate([np.random.default_rng([seed, epoch, r]).permutation(n) for r in range(rounds)])[
        :count
    ]


def make_train_iterator(config: Config, *, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """The shuffled, augmented training batches of ``epoch``, from batch ``start_step`` on.

    An epoch has ``train.steps_per_epoch`` batches if set, else :func:`steps_per_epoch`. The order (a
    permutation seeded by ``train.seed`` and the epoch) and each example's augmentation (seeded by the
    seed, the epoch and the example's position in the epoch) do not depend on where the epoch starts, so
    a resumed run sees exactly the batches an uninterrupted run would.
    """
    source = open_split(config.data, config.data.train_split)
    if len(source) == 0:
        raise ValueError(f"training split {config.data.train_split!r} is empty")
    batch, seed = config.train.batch_size, config.train.seed
    steps = getattr(config.train, "steps_per_epoch", None) or steps_per_epoch(config)
    order = _epoch_order(len(source), seed, epoch, steps * batch)
    jobs = [
        [(int(order[i]), [seed, epoch, i]) for i in range(s * batch, (s + 1) * batch)]
        for s in range(start_step, steps)
    ]

    def work(position, example_seed):
        return prepare(source[position], config.data, np.random.default_rng(example_seed))

    return _batched(jobs, work, _workers())


def make_eval_iterator(config: Config, split: str, *, batch_size: int | None = None) -> Iterator[dict]:
    """Batches of ``split`` in the source's order, without augmentation; the last one is padded by
    repeating the last example, with ``example_valid`` False. Adds the original ``instances`` int32
    (B, 256, 256) and ``class_map`` uint8 (B, 256, 256) for evaluation at PanNuke's resolution."""
    source = open_split(config.data, split)
    batch = batch_size or config.train.batch_size
    n = len(source)
    jobs = [[(min(i, n - 1), i < n) for i in range(s, s + batch)] for s in range(0, n, batch)]

    def work(position, is_valid):
        example = source[position]
        out = prepare(example, config.data)
        out["instances"] = np.asarray(example["instances"], np.int32)
        out["class_map"] = np.asarray(example["classes"], np.uint8)
        out["example_valid"] = is_valid
        return out

    return _batched(jobs, work, _workers())
