"""Mask average precision: per image (Matterport's ``compute_ap``) and over a data set (COCO's mask AP).

Per image (``average_precision``, as the seed paper's mAP): predictions are visited in descending score;
each takes the unmatched true instance it overlaps most if their mask IoU is at least the threshold.
Precision and recall along that list give AP by all-point interpolation (VOC 2010+): the area under the
precision envelope. This is matterport/Mask_RCNN ``mrcnn/utils.py`` ``compute_matches`` + ``compute_ap``
except for one bug not copied: there a true instance counts as matched only when ``gt_match[j] > 0``,
so one matched by the top-scoring prediction (index 0) can be matched again, and AP can exceed 1. Ties:
equal scores keep the input order, equal IoUs go to the lower true index (Matterport's reversed argsort
takes the higher ones; this only matters for exact ties).

Over a data set (``coco_mask_ap``): pycocotools' COCOeval for one category, area "all": detections of
all images pooled by score, precision sampled at 101 recall points, averaged over IoU 0.50:0.05:0.95.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from maskrcnn.evaluation.pq import relabel

# pycocotools Params: iouThrs = linspace(.5, .95, 10), recThrs = linspace(0, 1, 101).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)


def _stack(masks, name: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"{name} must be a boolean (N, H, W) mask stack, got shape {masks.shape}")
    return masks.astype(bool, copy=False)


def _boxes(masks: np.ndarray) -> np.ndarray:
    """int (N, 4) tight (y1, x1, y2, x2) pixel-edge boxes of a bool (N, H, W) stack; empty masks: zeros."""
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[1:]
    boxes = np.stack(
        [rows.argmax(1), cols.argmax(1), h - rows[:, ::-1].argmax(1), w - cols[:, ::-1].argmax(1)], axis=1
    )
    return np.where(rows.any(1)[:, None], boxes, 0)


def mask_iou(masks_a, masks_b) -> np.ndarray:
    """IoU of two boolean mask stacks.

    Only pairs whose boxes overlap are compared, each inside the overlap of the boxes, so the work grows
    with the overlapping pairs rather than with Na * Nb * H * W.

    Args:
      masks_a: bool (Na, H, W); masks_b: bool (Nb, H, W). Masks may overlap.

    Returns:
      float64 (Na, Nb); a pair of empty masks gives 0.
    """
    a, b = _stack(masks_a, "masks_a"), _stack(masks_b, "masks_b")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask stacks differ in image size: {a.shape} vs {b.shape}")
    box_a, box_b = _boxes(a), _boxes(b)
    area_a = np.array(
        [np.count_nonzero(m[y1:y2, x1:x2]) for m, (y1, x1, y2, x2) in zip(a, box_a, strict=True)]
    )
    area_b = np.array(
        [np.count_nonzero(m[y1:y2, x1:x2]) for m, (y1, x1, y2, x2) in zip(b, box_b, strict=True)]
    )
    lo = np.maximum(box_a[:, None, :2], box_b[None, :, :2])  # (Na, Nb, 2) overlap of the boxes
    hi = np.minimum(box_a[:, None, 2:], box_b[None, :, 2:])
    inter = np.zeros((len(a), len(b)))
    for i, j in zip(*np.nonzero(np.all(lo < hi, axis=-1)), strict=True):
        (y1, x1), (y2, x2) = lo[i, j], hi[i, j]
        inter[i, j] = np.count_nonzero(a[i, y1:y2, x1:x2] & b[j, y1:y2, x1:x2])
    union = area_a.reshape(-1, 1) + area_b.reshape(1, -1) - inter
    return inter / np.maximum(union, 1)


def _greedy_match(iou: np.ndarray, threshold: float, last_on_ties: bool = False) -> np.ndarray:
    """Rows (predictions, best first) take the free column of highest IoU >= threshold: int (Np,), -1 none."""
    matched = np.full(iou.shape[0], -1)
    free = np.ones(iou.shape[1], bool)
    for i, row in enumerate(iou if iou.shape[1] else []):
        row = np.where(free, row, -1.0)
        j = len(row) - 1 - int(np.argmax(row[::-1])) if last_on_ties else int(np.argmax(row))
        if row[j] >= threshold:
            matched[i], free[j] = j, False
    return matched


def _sorted_iou(true_instances, pred_instances, pred_scores, max_detections=None):
    true, pred = _stack(true_instances, "true_instances"), _stack(pred_instances, "pred_instances")
    scores = np.asarray(pred_scores, np.float64).reshape(-1)
    if len(scores) != len(pred):
        raise ValueError(f"got {len(scores)} pred_scores for {len(pred)} predicted masks, expected (Np,)")
    order = np.argsort(-scores, kind="stable")[:max_detections]
    return mask_iou(pred[order], true), scores[order]


def match_predictions(true_instances, pred_instances, pred_scores, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy one-to-one matching of predictions to true instances.

    Args:
      true_instances: bool (Ng, H, W); pred_instances: bool (Np, H, W); pred_scores: float (Np,).

    Returns:
      int (Np,): for the predictions in descending score order (ties: lower index first), the index of the
      matched true instance, -1 if none.
    """
    iou, _ = _sorted_iou(true_instances, pred_instances, pred_scores)
    return _greedy_match(iou, iou_threshold)


def _all_point_ap(hits: np.ndarray, n_true: int) -> float:
    """All-point interpolated AP of a ranked bool (Np,) hit list against n_true > 0 instances."""
    tp = np.cumsum(hits)
    precision = np.concatenate([[0.0], tp / np.arange(1, len(hits) + 1), [0.0]])
    recall = np.concatenate([[0.0], tp / n_true, [1.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def average_precision(true_instances, pred_instances, pred_scores, iou_threshold: float = 0.5) -> float:
    """Mask AP of one image (Matterport ``compute_ap`` without its double match).

    Args:
      true_instances: bool (Ng, H, W) true masks.
      pred_instances: bool (Np, H, W) predicted masks (they may overlap).
      pred_scores: float (Np,) confidence of each prediction.
      iou_threshold: a match needs mask IoU >= this.

    Returns:
      AP in [0, 1]. Empty cases: no true and no predicted instance -> NaN (nothing to measure;
      ``mean_average_precision`` skips it; Matterport divides by zero here); no true instance but
      predictions -> 0 (every prediction is a false positive); true instances but no prediction -> 0
      (Matterport gives 0 too).
    """
    iou, _ = _sorted_iou(true_instances, pred_instances, pred_scores)
    n_pred, n_true = iou.shape
    if n_true == 0:
        return float("nan") if n_pred == 0 else 0.0
    return _all_point_ap(_greedy_match(iou, iou_threshold) >= 0, n_true)


def mean_average_precision(images: Iterable[tuple], iou_threshold: float = 0.5) -> float:
    """Mean of :func:`average_precision` over images (the seed paper's mAP).

    Args:
      images: iterable of (true_instances (Ng, H, W), pred_instances (Np, H, W), pred_scores (Np,)) tuples.

    Returns:
      float; images with neither true nor predicted instances (NaN) are left out; NaN if all are.
    """
    values = [average_precision(t, p, s, iou_threshold) for t, p, s in images]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def coco_mask_ap(
    images: Iterable[tuple],
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_detections: int | None = None,
) -> dict:
    """COCO-style mask AP over a data set, for one category (pycocotools COCOeval, iouType "segm").

    Per image and threshold, detections in descending score take the free true instance of highest IoU
    >= the threshold (ties: the later one, as COCOeval). Then detections of all images are pooled by score,
    precision is made monotone and read at 101 recall points; AP is their mean.

    Args:
      images: iterable of (true_instances bool (Ng, H, W), pred_instances bool (Np, H, W), scores (Np,)).
      iou_thresholds: the IoU thresholds to average over; COCO's 0.50:0.05:0.95 by default.
      max_detections: keep this many top-scoring detections per image (COCO's maxDets, 100 there); None
        keeps all, as a PanNuke patch can hold several hundred nuclei.

    Returns:
      {"ap": mean over the thresholds (AP@[.5:.95] by default), "ap50", "ap75" (NaN if not among the
      thresholds), "per_threshold": {threshold: AP}}. No true instance in the whole data set: NaN; true
      instances but no detection at all: 0.
    """
    thresholds = np.asarray(iou_thresholds, np.float64).reshape(-1)
    scores, hits, n_true = [], [], 0
    for true, pred, pred_scores in images:
        iou, sorted_scores = _sorted_iou(true, pred, pred_scores, max_detections)
        n_true += iou.shape[1]
        scores.append(sorted_scores)
        # COCOeval compares with min(t, 1 - 1e-10), so a perfect mask also counts at threshold 1.
        hits.append([_greedy_match(iou, min(t, 1 - 1e-10), last_on_ties=True) >= 0 for t in thresholds])
    hits = np.concatenate(
        [np.zeros((len(thresholds), 0), bool)] + [np.reshape(h, (len(thresholds), -1)) for h in hits], 1
    )
    order = np.argsort(-np.concatenate([np.zeros(0)] + scores), kind="mergesort")  # COCOeval's sort
    per_threshold = {}
    for t, h in zip(thresholds, hits[:, order], strict=True):
        if n_true == 0:
            per_threshold[float(t)] = float("nan")
            continue
        if h.size == 0:  # true instances but no detection (pycocotools says -1, "undefined")
            per_threshold[float(t)] = 0.0
            continue
        tp, fp = np.cumsum(h), np.cumsum(~h)
        recall = tp / n_true
        precision = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[::-1])[::-1]
        idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
        sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
        per_threshold[float(t)] = float(sampled.mean())
    values = list(per_threshold.values())
    pick = {k: next((v for t, v in per_threshold.items() if np.isclose(t, k)), np.nan) for k in (0.5, 0.75)}
    return {
        "ap": float(np.mean(values)) if values else float("nan"),
        "ap50": float(pick[0.5]),
        "ap75": float(pick[0.75]),
        "per_threshold": per_threshold,
    }


def instances_from_label_map(labels) -> np.ndarray:
    """Boolean (N, H, W) stack of the instances of an integer (H, W) label map, in increasing id order."""
    compact, ids = relabel(labels)
    return compact[None] == np.arange(1, len(ids) + 1)[:, None, None]


def label_map_from_instances(instances, scores=None) -> np.ndarray:
    """An int32 (H, W) label map (ids 1..N) from a bool (N, H, W) stack of possibly overlapping masks.

    A pixel claimed by several masks goes to the one of highest score (``scores`` float (N,)), or, without
    scores, to the first in the stack. Instance k gets id k + 1 (and may vanish if fully covered).
    """
    stack = _stack(instances, "instances")
    order = np.arange(len(stack)) if scores is None else np.argsort(-np.asarray(scores), kind="stable")
    if len(stack) == 0:
        return np.zeros(stack.shape[1:], np.int32)
    ranked = stack[order]
    first = ranked.argmax(0)  # the best-ranked mask covering each pixel
    return np.where(ranked.any(0), order[first] + 1, 0).astype(np.int32)
