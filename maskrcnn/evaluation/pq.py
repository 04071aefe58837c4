"""Panoptic quality (Kirillov et al. 2019) and AJI of instance label maps, as the nuclei papers compute them.

The numbers are those of ``get_fast_pq`` published with HoVer-Net (Graham et al. 2019,
vqdang/hover_net ``metrics/stats_utils.py``) and PanNuke (Gamper et al. 2020,
TissueImageAnalytics/PanNuke-metrics ``utils.py``): a true and a predicted instance pair when their IoU is
above the threshold (above 0.5 such pairs are unique, so no assignment is needed); then
DQ = TP / (TP + FP / 2 + FN / 2), SQ = sum of paired IoUs / (TP + 1e-6), PQ = DQ * SQ. The 1e-6 is
theirs, kept so that results compare to the digit. ``aji`` and ``aji_plus`` are their ``get_fast_aji``
(MoNuSeg's AJI) and ``get_fast_aji_plus``.

Pure numpy and fast: every pairwise intersection comes from one ``np.bincount`` over the pixels (the pair
of compact ids of each pixel), not from comparing every true mask with every predicted mask.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

_SQ_EPS = 1e-6  # get_fast_pq: sq = paired_iou.sum() / (tp + 1.0e-6)
_AJI_EPS = 1e-6  # get_fast_aji(_plus): pairwise_iou = inter / (union + 1.0e-6), only used to pick pairs


class PQ(NamedTuple):
    """Panoptic quality of one image: dq, sq, pq (floats) and the tp, fp, fn counts (ints)."""

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int


def check_label_map(labels, name: str = "labels") -> np.ndarray:
    """Validates an instance label map and returns it as int64 (H, W).

    Accepts any integer or bool dtype, and floats that hold whole numbers (PanNuke stores its masks as
    float64). Raises ValueError, naming ``name``, for another rank, non-integer or non-finite values, or
    negative ids.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) instance label map, got shape {arr.shape}")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.int64, copy=False)
    elif np.issubdtype(arr.dtype, np.floating):
        with np.errstate(invalid="ignore"):  # NaN and inf cast to garbage, caught just below
            out = arr.astype(np.int64)
        if not np.array_equal(out, arr):  # also catches NaN and inf
            raise ValueError(
                f"{name} must hold whole-number instance ids, got non-integer {arr.dtype} values"
            )
    else:
        raise ValueError(f"{name} must be an integer (H, W) instance label map, got dtype {arr.dtype}")
    if out.size and out.min() < 0:
        raise ValueError(f"{name} must hold ids >= 0 (0 is background), got {out.min()}")
    return out


def relabel(labels) -> tuple[np.ndarray, np.ndarray]:
    """Renumbers an instance label map to 1..n in increasing order of the old ids (``remap_label``).

    Args:
      labels: integer (H, W) label map, 0 background, any ids >= 0 (also above 2**16 and 2**31).

    Returns:
      (int64 (H, W) map with ids 1..n and 0 kept as background, int64 (n,) the old id of each new id - 1).
    """
    return _compact(check_label_map(labels))


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`relabel` of a validated int64 array of any shape (no copy of the checks)."""
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 65536:  # a lookup table indexed by id: linear time, no sort
        present = np.bincount(flat, minlength=top + 1).astype(bool)
        present[0] = False
        return np.cumsum(present).take(labels), np.flatnonzero(present)
    ids, inverse = np.unique(flat, return_inverse=True)  # huge ids: sort instead
    if ids[0] == 0:
        return inverse.reshape(labels.shape), ids[1:]
    return inverse.reshape(labels.shape) + 1, ids


def overlaps(true, pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts shared by every true and every predicted instance, from one bincount.

    Args:
      true, pred: integer (H, W) instance label maps of the same shape (0 background, any ids).

    Returns:
      (int64 (n_true, n_pred) intersections, int64 (n_true,) true areas, int64 (n_pred,) predicted areas),
      rows and columns in increasing order of the ids.
    """
    t, t_ids = relabel(check_label_map(true, "true"))
    p, p_ids = relabel(check_label_map(pred, "pred"))
    if t.shape != p.shape:
        raise ValueError(f"true and pred label maps differ in shape: {t.shape} vs {p.shape}")
    return _overlaps(t, len(t_ids), p, len(p_ids))


def _overlaps(t: np.ndarray, n_t: int, p: np.ndarray, n_p: int):
    """As :func:`overlaps`, for compact maps (ids 1..n_t and 1..n_p)."""
    counts = np.bincount((t * (n_p + 1) + p).ravel(), minlength=(n_t + 1) * (n_p + 1))
    counts = counts.reshape(n_t + 1, n_p + 1)
    return counts[1:, 1:], counts[1:].sum(1), counts[:, 1:].sum(0)


def _iou(inter: np.ndarray, true_area: np.ndarray, pred_area: np.ndarray) -> np.ndarray:
    union = true_area[:, None] + pred_area[None, :] - inter
    return inter / np.maximum(union, 1)  # union >= every area >= 1; the max only guards empty shapes


def pairwise_instance_iou(true, pred) -> np.ndarray:
    """IoU of every true instance with every predicted instance.

    Args:
      true, pred: integer (H, W) instance label maps (0 background, any ids).

    Returns:
      float64 (n_true, n_pred), rows and columns in increasing order of the ids.
    """
    return _iou(*overlaps(true, pred))


def pq_from_iou(iou: np.ndarray, iou_threshold: float = 0.5) -> PQ:
    """Panoptic quality from a float (n_true, n_pred) IoU matrix; see :func:`panoptic_quality`."""
    if iou_threshold < 0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    n_true, n_pred = iou.shape
    if iou_threshold >= 0.5:  # IoU > 0.5 pairs are unique, and so maximal (Kirillov et al. 2019, Thm. 1)
        paired = iou[iou > iou_threshold]
    else:  # get_fast_pq: Munkres on -IoU, then keep the pairs above the threshold
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


def panoptic_quality(true, pred, iou_threshold: float = 0.5) -> PQ:
    """Panoptic quality of a predicted instance label map against the true one (``get_fast_pq``).

    Args:
      true, pred: integer (H, W) instance label maps of the same shape; 0 is background, ids need not be
        contiguous (whole-number floats are accepted; negative or fractional ids raise ValueError).
      iou_threshold: a pair needs IoU strictly above it (IoU exactly 0.5 is not a pair at 0.5). At 0.5 or
        more each instance has at most one partner; below 0.5 the pairing maximises the total IoU
        (Hungarian), as get_fast_pq does.

    Returns:
      :class:`PQ` (dq, sq, pq, tp, fp, fn). No true and no predicted instance: dq = sq = pq = NaN and
      tp = fp = fn = 0 (undefined: get_fast_pq divides 0 by 0 and raises ZeroDivisionError there; the
      PanNuke protocol never asks, as it skips images whose truth is empty). Instances but no pair:
      dq = sq = pq = 0, as get_fast_pq.
    """
    return pq_from_iou(pairwise_instance_iou(true, pred), iou_threshold)


def aji(true, pred) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017, MoNuSeg), as HoVer-Net's ``get_fast_aji``.

    Each true instance takes the predicted instance of highest IoU (a prediction may serve several);
    AJI = sum of their intersections / (sum of their unions + areas of true instances overlapping no
    prediction + areas of predictions taken by no true instance).

    Args:
      true, pred: integer (H, W) instance label maps (0 background, any ids).

    Returns:
      float in [0, 1]; NaN when both maps are empty (0 / 0, as the reference), 0 when one is.
    """
    inter, t_area, p_area = overlaps(true, pred)
    if inter.shape[1] == 0:  # the reference's argmax fails here; nothing overlaps, AJI is 0 (or 0/0)
        return float("nan") if inter.shape[0] == 0 else 0.0
    union, iou = _aji_union_iou(inter, t_area, p_area)
    best = iou.argmax(1)  # ties: the lowest pred id, as np.argmax in the reference
    rows = np.flatnonzero(iou[np.arange(len(best)), best] > 0)
    cols = best[rows]
    return _aji_score(inter, union, t_area, p_area, rows, cols)


def aji_plus(true, pred) -> float:
    """AJI+ (Graham et al. 2019), as HoVer-Net's ``get_fast_aji_plus``: AJI with a unique pairing.

    True and predicted instances pair one to one maximising the total IoU (Hungarian; pairs with no
    overlap are dropped); the unpaired ones add their areas to the union. Shapes and empty cases as
    :func:`aji`.
    """
    inter, t_area, p_area = overlaps(true, pred)
    if inter.size == 0:
        return float("nan") if inter.shape == (0, 0) else 0.0
    union, iou = _aji_union_iou(inter, t_area, p_area)
    rows, cols = linear_sum_assignment(-iou)
    keep = iou[rows, cols] > 0
    return _aji_score(inter, union, t_area, p_area, rows[keep], cols[keep])


def _aji_union_iou(inter, t_area, p_area):
    union = np.where(inter > 0, t_area[:, None] + p_area[None, :] - inter, 0)
    return union, inter / (union + _AJI_EPS)


def _aji_score(inter, union, t_area, p_area, rows, cols) -> float:
    total_inter = inter[rows, cols].sum()
    total_union = union[rows, cols].sum()
    total_union += t_area.sum() - t_area[np.unique(rows)].sum()
    total_union += p_area.sum() - p_area[np.unique(cols)].sum()
    return float(total_inter / total_union) if total_union else float("nan")
