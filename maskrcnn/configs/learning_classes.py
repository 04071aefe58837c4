"""The learning benchmark's first recipe: `learning` for all five PanNuke classes, batch norm frozen.

    make bench-learning DATA=/path/to/consep_train ARGS="--config learning_classes"

The same network, data and schedule as `learning`; it differs only where `learning` was changed after
this recipe lost to the classical baseline (see experiments/results/learning.md): five classes instead of
one, and batch norm frozen (Matterport's TRAIN_BN=False, the seed paper's setting). Kept as the
per-class reference (per-class PQ in experiments/results/learning_classes.md).
"""

import dataclasses

from maskrcnn.config import load_config


def get_config():
    base = load_config("learning")
    return dataclasses.replace(
        base,
        name="learning_classes",
        data=dataclasses.replace(base.data, variant="all_classes"),
        model=dataclasses.replace(base.model, num_classes=5, train_bn=False),
    )
