"""Panoptic quality of instance segmentation (Kirillov et al. 2019) as the PanNuke protocol computes it.

The numbers are those of ``get_fast_pq`` published with HoVer-Net (Graham et al. 2019) and PanNuke
(Gamper et al. 2020): a predicted and a true instance pair when their IoU is above the threshold (above
0.5 such pairs are unique); DQ = TP / (TP + FP / 2 + FN / 2); SQ = sum of paired IoUs / (TP + 1e-6);
PQ = DQ * SQ. The 1e-6 is theirs and kept so that results compare to the digit. Pure numpy; the pairwise
intersections come from one ``np.bincount`` instead of a loop over instances.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

_SQ_EPS = 1e-6  # get_fast_pq's guard in SQ = sum(IoU) / (TP + 1e-6)


class PQ(NamedTuple):
    """Panoptic quality of one image: dq, sq, pq (floats) and the tp, fp, fn counts."""

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int


def relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumbers an instance label map to 1..n in increasing order of the old ids.

    Args:
      labels: integer (H, W) label map, 0 background, any ids (also above 2**16).

    Returns:
      (int64 (H, W) map with ids 1..n, int (n,) the old id of each new id - 1).
    """
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids.size and ids[0] == 0:
        return inverse.astype(np.int64), ids[1:]
    return inverse.astype(np.int64) + 1, ids


def pairwise_instance_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every true instance with every predicted instance.

    Args:
      true, pred: integer (H, W) instance label maps (0 background, any ids).

    Returns:
      float64 (n_true, n_pred), rows and columns in increasing order of the ids.
    """
    t, t_ids = relabel(_check_map(true, "true"))
    p, p_ids = relabel(_check_map(pred, "pred"))
    if t.shape != p.shape:
        raise ValueError(f"true and pred label maps differ in shape: {t.shape} vs {p.shape}")
    n_t, n_p = len(t_ids), len(p_ids)
    counts = np.bincount((t * (n_p + 1) + p).ravel(), minlength=(n_t + 1) * (n_p + 1))
    counts = counts.reshape(n_t + 1, n_p + 1)
    inter = counts[1:, 1:].astype(np.float64)
    union = counts[1:].sum(1)[:, None] + counts[:, 1:].sum(0)[None, :] - inter
    return inter / np.maximum(union, 1)


def panoptic_quality(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> PQ:
    """Panoptic quality of a predicted instance label map against the true one.

    Args:
      true, pred: integer (H, W) instance label maps; 0 is background, ids need not be contiguous.
      iou_threshold: pairs need IoU above this. At 0.5 or more each instance has at most one partner;
        below 0.5 the pairing maximises total IoU (Hungarian), as get_fast_pq does.

    Returns:
      :class:`PQ`. With no true and no predicted instance the quality is undefined: dq, sq and pq are
      NaN (get_fast_pq divides by zero there; the PanNuke protocol skips such images). With no pair,
      dq = sq = pq = 0.
    """
    if iou_threshold < 0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    iou = pairwise_instance_iou(true, pred)
    n_true, n_pred = iou.shape
    if iou_threshold >= 0.5:
        paired = iou[iou > iou_threshold]
    else:
        rows, cols = linear_sum_assignment(-iou)
        paired = iou[rows, cols]
        paired = paired[paired > iou_threshold]
    tp = int(paired.size)
    fp, fn = n_pred - tp, n_true - tp
    if tp + fp + fn == 0:
        return PQ(float("nan"), float("nan"), float("nan"), 0, 0, 0)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(paired.sum()) / (tp + _SQ_EPS)
    return PQ(dq, sq, dq * sq, tp, fp, fn)


def _check_map(labels, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        if (
            labels.ndim == 2
            and np.issubdtype(labels.dtype, np.floating)
            and np.all(labels == np.round(labels))
        ):
            return labels.astype(np.int64)
        raise ValueError(
            f"{name} must be an integer (H, W) instance label map, got {labels.dtype} {labels.shape}"
        )
    return labels
