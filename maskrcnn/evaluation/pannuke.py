"""The official PanNuke evaluation (Gamper et al. 2020, TissueImageAnalytics/PanNuke-metrics ``run.py``).

Per image: binary PQ (bPQ) of all nuclei pooled into one instance map, and the PQ of each of the five
classes. Per tissue: the mean over its images (bPQ; and mPQ, each image's mean over its classes). Then
the mean over tissues. Wherever the ground truth of an image has no nucleus (of a class), that image is
left out of that mean (NaN, nanmean), so predictions on empty images are not penalised: that is the
protocol. Pure numpy.

Two mistakes of reference code that are not copied: the seed paper averaged bPQ over images instead of
tissues (reported here separately as ``bpq_image_mean``), and the published ``run.py`` appends a stale
class PQ where it means NaN (here: NaN, as its comment says).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from maskrcnn.config import PANNUKE_CLASSES
from maskrcnn.evaluation.pq import panoptic_quality

# The 19 tissues of PanNuke, as spelled in its types.npy (PanNuke-metrics run.py).
PANNUKE_TISSUES = (
    "Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus", "HeadNeck", "Kidney",
    "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin", "Stomach", "Testis", "Thyroid", "Uterus",
)  # fmt: skip


def combine_channels(masks: np.ndarray) -> np.ndarray:
    """One instance label map from the five class channels of a PanNuke mask.

    Each (channel, id) pair becomes its own instance, numbered channel by channel in increasing id
    order; where channels overlap the later channel wins (PanNuke-metrics ``binarize``).

    Args:
      masks: (H, W, 6) or (H, W, 5) PanNuke mask, channels 0-4 instance ids (any numeric dtype).

    Returns:
      int32 (H, W).
    """
    out = np.zeros(masks.shape[:2], np.int32)
    offset = 0
    for c in range(len(PANNUKE_CLASSES)):
        channel = masks[..., c].astype(np.int64)
        ids, inverse = np.unique(channel, return_inverse=True)
        inverse = inverse.reshape(channel.shape)
        if ids[0] == 0:
            ids, inverse = ids[1:], inverse - 1
        out = np.where(channel > 0, offset + inverse + 1, out)
        offset += len(ids)
    return out.astype(np.int32)


def _nanmean(values) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a mean over nothing is NaN, on purpose
        return float(np.nanmean(np.asarray(values, np.float64))) if len(values) else float("nan")


def image_scores(true: np.ndarray, pred: np.ndarray) -> tuple[float, np.ndarray]:
    """bPQ and the five class PQs of one image: (float, float64 (5,)), NaN where the truth is empty."""
    true_bin = combine_channels(true)
    bpq = panoptic_quality(true_bin, combine_channels(pred)).pq if true_bin.any() else float("nan")
    per_class = np.full(len(PANNUKE_CLASSES), np.nan)
    for c in range(len(PANNUKE_CLASSES)):
        t = true[..., c].astype(np.int64)
        if t.any():
            per_class[c] = panoptic_quality(t, pred[..., c].astype(np.int64)).pq
    return bpq, per_class


def pannuke_metrics(true_masks, pred_masks, tissue_types: Sequence[str]) -> dict:
    """bPQ and mPQ by the official PanNuke protocol.

    Args:
      true_masks, pred_masks: (N, H, W, 6) (or 5 channels) PanNuke-format masks: channels 0-4 hold
        instance ids of the classes neoplastic, inflammatory, connective, dead, epithelial.
      tissue_types: (N,) tissue name of each image.

    Returns:
      dict with ``bpq`` and ``mpq`` (means over tissues), ``per_tissue`` (tissue -> {"bpq", "mpq",
      "images"}, in PanNuke's tissue order, then any other name), ``per_class`` (class -> PQ, mean over
      the images that have the class), ``bpq_image_mean`` (bPQ averaged over images: the seed paper's
      figure, not the protocol's) and ``per_image`` ({"bpq": (N,), "mpq": (N,), "class_pq": (N, 5)}).
    """
    true_masks, pred_masks = np.asarray(true_masks), np.asarray(pred_masks)
    if true_masks.shape[:3] != pred_masks.shape[:3] or true_masks.ndim != 4 or true_masks.shape[-1] < 5:
        raise ValueError(
            f"true and pred must be (N, H, W, 6) PanNuke masks of equal size, got {true_masks.shape} "
            f"and {pred_masks.shape}"
        )
    tissue_types = [str(t) for t in np.asarray(tissue_types).ravel()]
    if len(tissue_types) != len(true_masks):
        raise ValueError(f"got {len(tissue_types)} tissue types for {len(true_masks)} images")
    scores = [image_scores(t, p) for t, p in zip(true_masks, pred_masks, strict=True)]
    bpq = np.array([s[0] for s in scores], np.float64)
    class_pq = np.array([s[1] for s in scores], np.float64).reshape(-1, len(PANNUKE_CLASSES))
    mpq = np.array([_nanmean(row) for row in class_pq])

    present = [t for t in PANNUKE_TISSUES if t in tissue_types]
    present += sorted(set(tissue_types) - set(present))
    per_tissue = {}
    for tissue in present:
        rows = [i for i, t in enumerate(tissue_types) if t == tissue]
        per_tissue[tissue] = {"bpq": _nanmean(bpq[rows]), "mpq": _nanmean(mpq[rows]), "images": len(rows)}
    return {
        "bpq": _nanmean([v["bpq"] for v in per_tissue.values()]),
        "mpq": _nanmean([v["mpq"] for v in per_tissue.values()]),
        "per_tissue": per_tissue,
        "per_class": {name: _nanmean(class_pq[:, c]) for c, name in enumerate(PANNUKE_CLASSES)},
        "bpq_image_mean": _nanmean(bpq),
        "per_image": {"bpq": bpq, "mpq": mpq, "class_pq": class_pq},
    }
