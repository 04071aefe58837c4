"""Pure, jittable array functions with static shapes: boxes, anchors, NMS and ROIAlign.

Boxes are (y1, x1, y2, x2) absolute pixels on pixel edges everywhere (see DESIGN.md).
"""

from maskrcnn.ops.anchors import anchors_per_level, feature_size, generate_anchors
from maskrcnn.ops.boxes import (
    BOX_STD,
    LOG_SIZE_CLIP,
    box_area,
    boxes_from_masks,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    pairwise_iou,
)
from maskrcnn.ops.nms import nms
from maskrcnn.ops.roi_align import assign_fpn_levels, multilevel_roi_align, roi_align

__all__ = [
    "BOX_STD",
    "LOG_SIZE_CLIP",
    "anchors_per_level",
    "assign_fpn_levels",
    "box_area",
    "boxes_from_masks",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "feature_size",
    "generate_anchors",
    "multilevel_roi_align",
    "nms",
    "pairwise_iou",
    "roi_align",
]
