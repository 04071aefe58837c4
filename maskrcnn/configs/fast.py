"""The paper's network sized for 256 px nuclei patches: ResNet50 + FPN at the native 256 px.

Nuclei in PanNuke are about 6-40 px across at 40x, so anchors start at 8 px (8-128 over P2-P6) and the
image is not upscaled. With one anchor scale per level only 10% of nuclei have an anchor at IoU >= 0.7,
so the RPN learned most of them from a single best-anchor positive; three scales per level (RetinaNet's
octaves) lift that to 37% (94% at IoU >= 0.5), and ATSS (Zhang et al. 2020) picks each nucleus's
positives from its nearest anchors by an IoU threshold adapted to it: 8.4 positives per nucleus instead
of 1.2 (`maskrcnn anchors`, table in experiments/results/learning_ablation.md). Proposals are the best
1000 of each level with NMS per level (torchvision, detectron2), so the coarse levels are not crowded out
by the many P2 anchors. Training jitters the stains (HED-light, Tellez et al. 2019) and the brightness,
contrast and saturation, since slides from other centres differ in colour. Dense tumour patches hold a
few hundred nuclei: 256 ground-truth and detection slots. Ground-truth boxes join the proposals so the
heads train while the RPN is young. Matterport's COCO weights are ResNet101's, so this ResNet50 starts
from keras.applications' ImageNet weights instead (downloaded by Keras; offline, pass the file: README,
Transfer learning), which want keras.applications' ResNet and caffe-style input (BGR minus the ImageNet
mean).

    make train CONFIG=fast
"""

import dataclasses

from maskrcnn.config import load_config


def get_config():
    base = load_config("paper")
    return dataclasses.replace(
        base,
        name="fast",
        data=dataclasses.replace(
            base.data,
            scale=1.0,
            max_instances=256,
            mini_mask_size=28,
            hed_jitter=0.05,
            brightness=0.1,
            contrast=0.1,
            saturation=0.1,
        ),
        model=dataclasses.replace(
            base.model,
            backbone="resnet50",
            backbone_style="keras",
            bgr=True,
            pixel_mean=(123.68, 116.779, 103.939),  # keras.applications' caffe mean, in RGB order
            anchor_scales=(8, 16, 32, 64, 128),
            anchor_octaves=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
            rpn_assignment="atss",
            rpn_nms_threshold=0.7,
            pre_nms_limit=1000,
            pre_nms_per_level=True,
            post_nms_rois_training=1000,
            post_nms_rois_inference=1000,
            train_rois_per_image=256,
            add_gt_as_proposals=True,
            detection_min_confidence=0.5,
            detection_max_instances=256,
            mask_head_width=128,
        ),
        train=dataclasses.replace(base.train, batch_size=4, init="imagenet"),
    )
