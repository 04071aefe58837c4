"""Training-batch throughput of the input pipeline, with augmentation, at 256 px and at 1024 px.

    make bench-input        # writes experiments/results/input_pipeline.md

Two sources: ``synthetic`` (examples held decoded in memory: the pipeline's own work only) and ``tfds``
(the array_record dataset built by ``maskrcnn/datasets/pannuke`` from generated PanNuke-format folds and
read through ``tfds.data_source``: PNG and zlib decoding included, as in training). Shapes: the ``fast``
preset (256 px, 256 instance slots, 28x28 mini-masks, batch 4) and the ``paper`` preset (1024 px, 100 slots,
56x56 mini-masks). Each row pulls whole batches from ``make_train_iterator`` with 1 and with 2 worker
threads, after one warm-up batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

from maskrcnn import input_pipeline as ip
from maskrcnn.config import load_config
from maskrcnn.pannuke import builder_class
from maskrcnn.synthetic import write_folds

RESULTS = os.path.join(os.path.dirname(__file__), "results", "input_pipeline.md")


def throughput(config, batches: int, workers: int) -> float:
    """Examples per second over ``batches`` training batches (one more before the clock starts)."""
    ip.loader._workers = lambda: workers  # noqa: SLF001 - the bench varies the pool size
    pulled, epoch, start = 0, 0, None
    while pulled <= batches:
        for batch in ip.make_train_iterator(config, epoch=epoch):
            assert batch["valid"].any()
            if pulled == 0:
                start = time.perf_counter()
            pulled += 1
            if pulled > batches:
                break
        epoch += 1
    return batches * config.train.batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-fold", type=int, default=40)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per row (1024 px: a quarter)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_folds(os.path.join(tmp, "folds"), args.images_per_fold, seed=11)
        builder = builder_class()(config="all_classes", data_dir=os.path.join(tmp, "tfds"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.path.join(tmp, "folds"))
        )
        for preset in ("fast", "paper"):
            base = load_config(preset)
            for source in ("synthetic", "tfds"):
                data = dataclasses.replace(
                    base.data,
                    variant="all_classes",
                    augment=True,
                    builder="synthetic" if source == "synthetic" else "pannuke",
                    data_dir=os.path.join(tmp, "tfds"),
                    synthetic_images_per_fold=args.images_per_fold,
                )
                config = dataclasses.replace(
                    base,
                    data=data,
                    model=dataclasses.replace(base.model, num_classes=data.num_classes),
                    train=dataclasses.replace(base.train, batch_size=4, steps_per_epoch=None),
                )
                batches = args.batches if data.image_size <= 256 else max(4, args.batches // 4)
                speeds = [throughput(config, batches, w) for w in (1, 2)]
                rows.append(
                    (preset, data.image_size, data.max_instances, data.mini_mask_size, source, speeds)
                )
                print(rows[-1], flush=True)

    lines = [
        "# Input pipeline speed",
        "",
        f"Made by `make bench-input` (`python experiments/bench_input_pipeline.py`) on "
        f"{time.strftime('%Y-%m-%d')}: {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, numpy {np.__version__}.",
        "",
        "Training batches (batch 4) from `make_train_iterator` with augmentation on (flips, rotation within "
        "+-10 degrees), resize, boxes from masks, mini-masks and padding. `synthetic`: examples decoded in "
        "memory; `tfds`: read from the array_record build through `tfds.data_source` (PNG and zlib decoding "
        "included).",
        "",
        "| preset | image px | slots | mini-mask | source | images/s, 1 thread | images/s, 2 threads |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for preset, size, slots, mini, source, (one, two) in rows:
        lines.append(f"| {preset} | {size} | {slots} | {mini} | {source} | {one:.0f} | {two:.0f} |")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
