"""Batches: examples prepared in parallel, in a seeded per-epoch order that a resume repeats.

Each example's work (augmentation, resizing, boxes, mini-masks) is numpy and PIL: threads of one process
share the GIL for its Python parts, which binds on a GPU machine's many cores, so the work runs in worker
processes there (``data.loader``): spawned once per source and kept (forking a process that runs XLA's
threads is unsafe), each opening the source itself, so no data is copied to them. Threads and processes
give the same batches bit for bit: every example's work depends only on its position and seed.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np

from maskrcnn.config import Config, DataConfig
from maskrcnn.input_pipeline.instances import prepare
from maskrcnn.input_pipeline.sources import open_split

MIN_CORES_FOR_PROCESSES = 4  # data.loader="auto": processes from this many cores up, threads below

# The batch entries the model reads (the rest is bookkeeping for evaluation and logging).
MODEL_INPUTS = ("image", "boxes", "classes", "masks", "valid", "ignore_boxes", "ignore_valid")


def _stack(items: list[dict]) -> dict:
    return {k: np.stack([np.asarray(item[k]) for item in items]) for k in items[0]}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _workers() -> int:
    """Thread-pool workers: one per core, at most 8 (the GIL gives no more)."""
    return max(1, min(8, _cores()))


def use_processes(data: DataConfig) -> bool:
    """Whether ``data.loader`` asks for worker processes ("auto": from :data:`MIN_CORES_FOR_PROCESSES`
    cores up)."""
    if data.loader == "auto":
        return _cores() >= MIN_CORES_FOR_PROCESSES
    return data.loader == "processes"


def process_workers(data: DataConfig) -> int:
    """Worker processes: ``data.loader_workers``, or one per core but one (the training process's own)."""
    return data.loader_workers or max(1, _cores() - 1)


_SOURCE = None  # a worker process's open source
_POOLS: dict = {}  # (data config, split) -> a worker-process pool, kept for the life of this process


def _open_in_worker(data: DataConfig, split: str) -> None:
    global _SOURCE
    _SOURCE = open_split(data, split)


def _in_worker(work, data: DataConfig, position: int, arg):
    return work(_SOURCE, data, position, arg)


def _train_work(source, data: DataConfig, position: int, example_seed) -> dict:
    return prepare(source[position], data, np.random.default_rng(example_seed))


def _eval_work(source, data: DataConfig, position: int, is_valid: bool) -> dict:
    example = source[position]
    out = prepare(example, data)
    out["instances"] = np.asarray(example["instances"], np.int32)
    out["class_map"] = np.asarray(example["classes"], np.uint8)
    out["example_valid"] = is_valid
    return out


def _process_pool(data: DataConfig, split: str) -> concurrent.futures.ProcessPoolExecutor:
    key = (data, split)
    if key not in _POOLS:
        _POOLS[key] = concurrent.futures.ProcessPoolExecutor(
            max_workers=process_workers(data),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_open_in_worker,
            initargs=(data, split),
        )
    return _POOLS[key]


@atexit.register
def shutdown_pools() -> None:
    """Stops the worker processes (at exit, or to free them earlier)."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown(cancel_futures=True)


def _batched(jobs: list[list], work, data: DataConfig, split: str, source) -> Iterator[dict]:
    """Runs ``work(source, data, *item)`` for every item of every batch of ``jobs`` in worker processes
    (each with its own open source) or threads (sharing ``source``), :func:`use_processes` deciding, a few
    batches ahead of the consumer, and yields the stacked batches in order."""
    if use_processes(data):
        pool, owned, workers = _process_pool(data, split), None, process_workers(data)

        def submit(item):
            return pool.submit(_in_worker, work, data, *item)
    else:
        workers = _workers()
        pool = owned = concurrent.futures.ThreadPoolExecutor(max_workers=workers)

        def submit(item):
            return pool.submit(work, source, data, *item)

    ahead = max(2, -(-2 * workers // max(len(jobs[0]) if jobs else 1, 1)))  # keep every worker busy
    pending = []
    try:
        for batch in jobs:
            pending.append([submit(item) for item in batch])
            if len(pending) > ahead:
                yield _stack([f.result() for f in pending.pop(0)])
        while pending:
            yield _stack([f.result() for f in pending.pop(0)])
    finally:  # an abandoned iterator does not finish its prefetched batches
        for futures in pending:
            for f in futures:
                f.cancel()
        if owned is not None:
            owned.shutdown(wait=False)


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
    return _batched(jobs, _train_work, config.data, config.data.train_split, source)


def make_eval_iterator(config: Config, split: str, *, batch_size: int | None = None) -> Iterator[dict]:
    """Batches of ``split`` in the source's order, without augmentation; the last one is padded by
    repeating the last example, with ``example_valid`` False. Adds the original ``instances`` int32
    (B, 256, 256) and ``class_map`` uint8 (B, 256, 256) for evaluation at PanNuke's resolution."""
    source = open_split(config.data, split)
    batch = batch_size or config.train.batch_size
    n = len(source)
    jobs = [[(min(i, n - 1), i < n) for i in range(s, s + batch)] for s in range(0, n, batch)]
    return _batched(jobs, _eval_work, config.data, split, source)
