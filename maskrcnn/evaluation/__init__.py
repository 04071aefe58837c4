"""Pure-numpy evaluation: PQ, the PanNuke protocol (bPQ, mPQ), mask AP, and the report writers."""

from maskrcnn.evaluation.ap import (
    average_precision,
    instances_from_label_map,
    mask_iou,
    match_predictions,
    mean_average_precision,
)
from maskrcnn.evaluation.pannuke import PANNUKE_TISSUES, combine_channels, image_scores, pannuke_metrics
from maskrcnn.evaluation.pq import PQ, pairwise_instance_iou, panoptic_quality, relabel
from maskrcnn.evaluation.report import overlay, save_overlays, tissue_table, write_report

__all__ = [
    "PANNUKE_TISSUES",
    "PQ",
    "average_precision",
    "combine_channels",
    "image_scores",
    "instances_from_label_map",
    "mask_iou",
    "match_predictions",
    "mean_average_precision",
    "overlay",
    "pairwise_instance_iou",
    "panoptic_quality",
    "pannuke_metrics",
    "relabel",
    "save_overlays",
    "tissue_table",
    "write_report",
]
