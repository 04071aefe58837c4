"""Pure-numpy evaluation: PQ, AJI, the PanNuke protocol (bPQ, mPQ), mask AP, and the report writers.

No TensorFlow or JAX import: these run on label maps and mask stacks as numpy arrays.
"""

from maskrcnn.evaluation.ap import (
    COCO_IOU_THRESHOLDS,
    average_precision,
    coco_mask_ap,
    instances_from_label_map,
    label_map_from_instances,
    mask_iou,
    match_predictions,
    mean_average_precision,
)
from maskrcnn.evaluation.pannuke import (
    PANNUKE_TISSUES,
    combine_channels,
    image_scores,
    instances_to_pannuke,
    pannuke_metrics,
    pannuke_to_instances,
)
from maskrcnn.evaluation.pq import (
    PQ,
    aji,
    aji_plus,
    check_label_map,
    overlaps,
    pairwise_instance_iou,
    panoptic_quality,
    pq_from_iou,
    relabel,
)
from maskrcnn.evaluation.report import (
    comparison_picture,
    overlay,
    paint_instances,
    read_references,
    save_overlays,
    tissue_table,
    write_report,
)

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "PANNUKE_TISSUES",
    "PQ",
    "aji",
    "aji_plus",
    "average_precision",
    "check_label_map",
    "coco_mask_ap",
    "combine_channels",
    "comparison_picture",
    "image_scores",
    "instances_from_label_map",
    "instances_to_pannuke",
    "label_map_from_instances",
    "mask_iou",
    "match_predictions",
    "mean_average_precision",
    "overlaps",
    "overlay",
    "paint_instances",
    "pairwise_instance_iou",
    "pannuke_metrics",
    "pannuke_to_instances",
    "panoptic_quality",
    "pq_from_iou",
    "read_references",
    "relabel",
    "save_overlays",
    "tissue_table",
    "write_report",
]
