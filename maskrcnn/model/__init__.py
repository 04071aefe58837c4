"""Keras layers and the Mask R-CNN model."""

from maskrcnn.model.backbone import BACKBONES, build_resnet, load_keras_applications_weights
from maskrcnn.model.fpn import FPN
from maskrcnn.model.heads import BoxHead, MaskHead, RPNHead
from maskrcnn.model.maskrcnn import LOSS_NAMES, MaskRCNN, build_model, detections_to_label_maps
from maskrcnn.model.pretrained import initialize

__all__ = [
    "BACKBONES",
    "FPN",
    "LOSS_NAMES",
    "BoxHead",
    "MaskHead",
    "MaskRCNN",
    "RPNHead",
    "build_model",
    "build_resnet",
    "detections_to_label_maps",
    "initialize",
    "load_keras_applications_weights",
]
