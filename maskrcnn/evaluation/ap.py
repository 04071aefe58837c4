"""Mask average precision at an IoU threshold, per image (the ``compute_ap`` of Matterport's Mask R-CNN).

Predictions are visited in descending score; each takes the unmatched ground-truth instance it overlaps
most if their mask IoU is at least the threshold. Precision and recall along that list give the AP by
all-point interpolation (VOC 2010+): the area under the precision envelope. Unlike Matterport's
``compute_matches`` a ground-truth instance is matched at most once (there, one matched by the top-scoring
prediction could be matched again, so AP could exceed 1).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """IoU of boolean mask stacks: (Na, H, W) and (Nb, H, W) -> float64 (Na, Nb); empty unions give 0."""
    a = masks_a.reshape(len(masks_a), -1).astype(np.float32)
    b = masks_b.reshape(len(masks_b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


def match_predictions(true_instances, pred_instances, pred_scores, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy one-to-one matching: int (Np,) index of the matched true instance, -1 if none, in score order.

    The returned array follows the predictions sorted by descending score (ties: lower index first).
    """
    order = np.argsort(-np.asarray(pred_scores, np.float64), kind="stable")
    iou = mask_iou(np.asarray(pred_instances, bool)[order], np.asarray(true_instances, bool))
    matched = np.full(len(order), -1)
    taken = np.zeros(iou.shape[1], bool)
    for i, row in enumerate(iou):
        row = np.where(taken, -1.0, row)
        if row.size and row.max() >= iou_threshold:
            j = int(np.argmax(row))
            matched[i], taken[j] = j, True
    return matched


def average_precision(true_instances, pred_instances, pred_scores, iou_threshold: float = 0.5) -> float:
    """Mask AP of one image.

    Args:
      true_instances: bool (Ng, H, W); pred_instances: bool (Np, H, W) (may overlap); pred_scores: (Np,).

    Returns:
      AP in [0, 1]. No true and no predicted instance: NaN (nothing to measure; means skip it). No true
      instance but predictions: 0 (every prediction is false). True instances but no prediction: 0.
    """
    n_true, n_pred = len(true_instances), len(pred_instances)
    if len(pred_scores) != n_pred:
        raise ValueError(f"got {len(pred_scores)} scores for {n_pred} predicted masks")
    if n_true == 0:
        return float("nan") if n_pred == 0 else 0.0
    if n_pred == 0:
        return 0.0
    hits = match_predictions(true_instances, pred_instances, pred_scores, iou_threshold) >= 0
    tp = np.cumsum(hits)
    precision = np.concatenate([[0.0], tp / np.arange(1, n_pred + 1), [0.0]])
    recall = np.concatenate([[0.0], tp / n_true, [1.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def mean_average_precision(images: Iterable[tuple], iou_threshold: float = 0.5) -> float:
    """Mean of :func:`average_precision` over images given as (true, pred, scores) tuples (NaNs skipped)."""
    values = [average_precision(t, p, s, iou_threshold) for t, p, s in images]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def instances_from_label_map(labels: np.ndarray) -> np.ndarray:
    """Boolean (N, H, W) stack of the instances of an (H, W) label map, in increasing id order."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    return labels[None] == ids[:, None, None]
