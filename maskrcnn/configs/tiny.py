"""A CPU-sized Mask R-CNN for tests and the demo: a one-block-per-stage ResNet, narrow heads, 128 px.

Trained from random weights (no pretrained file fits it), on RGB input minus Matterport's mean pixel.

make train CONFIG=tiny
"""

import dataclasses

from maskrcnn.config import ModelConfig, StageConfig, load_config


def get_config():
    base = load_config("fast")
    return dataclasses.replace(
        base,
        name="tiny",
        data=dataclasses.replace(base.data, scale=0.5, max_instances=64, mini_mask_size=14),
        model=dataclasses.replace(
            base.model,
            backbone="tiny",
            bgr=False,
            pixel_mean=ModelConfig.pixel_mean,
            backbone_width=8,
            fpn_channels=32,
            anchor_scales=(4, 8, 16, 32, 64),
            pre_nms_limit=1000,
            post_nms_rois_training=256,
            post_nms_rois_inference=256,
            train_rois_per_image=64,
            rpn_train_anchors_per_image=128,
            box_head_width=64,
            mask_head_width=32,
            detection_max_instances=64,
        ),
        train=dataclasses.replace(
            base.train,
            batch_size=2,
            init=None,
            stages=(StageConfig("all", "all", epochs=2, learning_rate=1e-2),),
        ),
    )
