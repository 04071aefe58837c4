"""The demo: the tiny network at PanNuke's native 256 px on a generated, synthetic PanNuke-format sample.

    make demo          # generates the sample, builds it with the tfds builder, trains, evaluates

Sized to train on 2 CPU cores (about 7 minutes here, experiments/results/demo.md); not a model to use on
real slides.
"""

import dataclasses

from maskrcnn.config import StageConfig, load_config


def get_config():
    base = load_config("tiny")
    return dataclasses.replace(
        base,
        name="demo",
        data=dataclasses.replace(base.data, scale=1.0, max_instances=96, mini_mask_size=28),
        model=dataclasses.replace(
            base.model,
            anchor_scales=(8, 16, 32, 64, 128),
            roi_canonical_size=56.0,  # nuclei are small: a 56 px ROI pools from P4, 14 px from P2
            post_nms_rois_training=512,
            post_nms_rois_inference=384,
            train_rois_per_image=128,
            rpn_train_anchors_per_image=256,
            detection_max_instances=96,
            detection_min_confidence=0.5,
        ),
        train=dataclasses.replace(
            base.train,
            batch_size=4,
            stages=(StageConfig("all", "all", epochs=24, learning_rate=2e-2),),
            lr_per_step=True,
        ),
    )
