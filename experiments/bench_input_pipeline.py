"""Training-batch throughput of the input pipeline, with augmentation, by loader and worker count.

    make bench-input        # writes experiments/results/input_pipeline.md

Two sources: ``synthetic`` (examples held decoded in memory: the pipeline's own work only) and ``tfds``
(the array_record dataset built by ``maskrcnn/datasets/pannuke`` from generated PanNuke-format folds and
read through ``tfds.data_source``: PNG and zlib decoding included, as in training). Shapes: the ``fast``
preset (256 px, 256 instance slots, 28x28 mini-masks) and the ``paper`` preset (1024 px, 100 slots, 56x56
mini-masks), batch 16. Each row pulls whole batches from ``make_train_iterator`` after two warm-up batches
(the worker processes start then), with threads (``data.loader="threads"``) and with worker processes
(``"processes"``) at 1 up to every core of the machine; the batches are the same either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import harness

RESULTS = os.path.join(harness.RESULTS, "input_pipeline.md")
BATCH = 16


def throughput(config, batches: int) -> float:
    """Examples per second over ``batches`` training batches (two more before the clock starts)."""
    from maskrcnn import input_pipeline as ip

    pulled, epoch, start = 0, 0, None
    while pulled < batches + 2:
        for batch in ip.make_train_iterator(config, epoch=epoch):
            assert batch["valid"].any()
            pulled += 1
            if pulled == 2:
                start = time.perf_counter()
            if pulled == batches + 2:
                break
        epoch += 1
    return batches * config.train.batch_size / (time.perf_counter() - start)


def main():
    import tensorflow_datasets as tfds

    from maskrcnn.config import load_config
    from maskrcnn.datasets.pannuke import Builder
    from maskrcnn.input_pipeline import loader
    from maskrcnn.synthetic import write_folds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-fold", type=int, default=40)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per row (1024 px: a third)")
    args = parser.parse_args()
    cores = loader._cores()
    counts = sorted({1, 2, cores // 2, cores} - {0})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_folds(os.path.join(tmp, "folds"), args.images_per_fold, seed=11)
        builder = Builder(config="all_classes", data_dir=os.path.join(tmp, "tfds"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.path.join(tmp, "folds"))
        )
        for preset in ("fast", "paper"):
            base = load_config(preset)
            for source in ("synthetic", "tfds"):
                speeds = {}
                for kind in ("threads", "processes"):
                    for n in counts:
                        data = dataclasses.replace(
                            base.data,
                            variant="all_classes",
                            builder="synthetic" if source == "synthetic" else "pannuke",
                            data_dir=os.path.join(tmp, "tfds"),
                            synthetic_images_per_fold=args.images_per_fold,
                            loader=kind,
                            loader_workers=n,
                        )
                        config = dataclasses.replace(
                            base,
                            data=data,
                            model=dataclasses.replace(base.model, num_classes=data.num_classes),
                            train=dataclasses.replace(base.train, batch_size=BATCH, steps_per_epoch=None),
                        )
                        loader._workers = lambda n=n: n  # noqa: SLF001 - the thread count varies here
                        batches = args.batches if data.image_size <= 256 else max(3, args.batches // 3)
                        speeds[kind, n] = throughput(config, batches)
                        loader.shutdown_pools()
                        print(preset, source, kind, n, f"{speeds[kind, n]:.0f} images/s", flush=True)
                rows.append((preset, data.image_size, source, speeds))

    lines = [
        "# Input pipeline speed",
        "",
        harness.header("make bench-input (python experiments/bench_input_pipeline.py)"),
        "",
        f"Training batches (batch {BATCH}) from `make_train_iterator` with augmentation on (flips, rotation "
        "within +-10 degrees, stain and colour jitter where the preset sets them), resize, boxes from masks, "
        "mini-masks and padding, in images per second. `synthetic`: examples decoded in memory; `tfds`: "
        "read from the array_record build through `tfds.data_source` (PNG and zlib decoding included). "
        'Threads share one process\'s GIL; worker processes (`data.loader="processes"`, the default from '
        f"{loader.MIN_CORES_FOR_PROCESSES} cores up) do not.",
        "",
        "| preset | image px | source | "
        + " | ".join(f"{n} thread{'s' * (n > 1)}" for n in counts)
        + " | "
        + " | ".join(f"{n} process{'es' * (n > 1)}" for n in counts)
        + " |",
        "|---|---:|---|" + "---:|" * (2 * len(counts)),
    ]
    for preset, size, source, speeds in rows:
        cells = [f"{speeds[k, n]:.0f}" for k in ("threads", "processes") for n in counts]
        lines.append(f"| {preset} | {size} | {source} | " + " | ".join(cells) + " |")
    harness.write(RESULTS, "\n".join(lines))


if __name__ == "__main__":
    main()
