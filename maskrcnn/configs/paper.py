"""The seed paper's setup, faithful to its code (Matterport Mask R-CNN, ResNet101 + FPN).

256 px PanNuke patches are upscaled to 1024 px, anchors 32-512, RPN NMS 0.8, 200 training ROIs,
at most 100 ground-truth instances (more are counted and reported), 56x56 mini-masks, detection
confidence 0.8; stage 1 trains the heads for 20 epochs from 1e-3, stage 2 all layers for 30 from 1e-4.
Like the paper, it starts from Matterport's COCO weights, so its ResNet is Matterport's
(``backbone_style="matterport"``) and its input RGB minus Matterport's mean pixel (the defaults):

    mkdir -p weights && curl -L -o weights/mask_rcnn_coco.h5 \
        https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5
    make train CONFIG=paper                    # or INIT=/elsewhere/mask_rcnn_coco.h5, or INIT=none
"""

from maskrcnn.config import Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="paper",
        data=DataConfig(variant="neoplastic", scale=4.0, max_instances=100, mini_mask_size=56),
        model=ModelConfig(
            backbone="resnet101",
            backbone_style="matterport",
            num_classes=1,
            rpn_nms_threshold=0.8,
            train_rois_per_image=200,
            detection_min_confidence=0.8,
            detection_max_instances=100,
        ),
        train=TrainConfig(batch_size=2, init="weights/mask_rcnn_coco.h5"),
    )
