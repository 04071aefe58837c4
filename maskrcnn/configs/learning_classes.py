"""The learning benchmark's five-class model: `learning` for all five PanNuke classes.

    make bench-learning DATA=/path/to/consep_train \
        ARGS="--config learning_classes --out experiments/results/learning_classes.md"

The same network, data, detection recipe and schedule as `learning` (batch norm trained, three anchor
octaves, ATSS, per-level proposals, stain jitter); it differs only in the classes: the `all_classes`
variant and five class outputs, so its bPQ sits beside `learning`'s and its mPQ and per-class PQ show
which classes the recipe separates (experiments/results/learning_classes.md). Until 2026-12-03 this
config also froze batch norm (the first recipe, bPQ 0.154 on 2026-11-25); it now changes one thing.
"""

import dataclasses

from maskrcnn.config import load_config


def get_config():
    base = load_config("learning")
    return dataclasses.replace(
        base,
        name="learning_classes",
        data=dataclasses.replace(base.data, variant="all_classes"),
        model=dataclasses.replace(base.model, num_classes=5),
    )
