"""The official PanNuke evaluation (Gamper et al. 2020, TissueImageAnalytics/PanNuke-metrics ``run.py``).

Per image: binary PQ (bPQ) of all nuclei pooled into one instance map, and the PQ of each class. Per
tissue: the mean over its images (of bPQ; and of mPQ, each image's mean over its classes). Then the mean
over tissues. Wherever the ground truth of an image has no nucleus (of a class), that image is left out of
that mean (NaN, nanmean), so predictions on images without nuclei are not penalised: that is the protocol.

Where this departs from reference code, on purpose:
- The seed paper averaged bPQ over images instead of tissues: reported here separately as
  ``bpq_image_mean``; ``bpq`` is the protocol's mean over tissues.
- PanNuke-metrics ``binarize`` numbers the (channel, id) pairs 1, 2, ... and lets a later channel overwrite
  an earlier one; when a nucleus is entirely covered its number disappears, and ``run.py`` then hands the
  gapped map to ``get_fast_pq`` without ``remap_label``, which indexes its mask list by id and so compares
  the wrong masks (or fails). Here the pooled map is compared by its ids whatever the gaps.
- Its ``class_stats.csv`` writes the connective PQ in the inflammatory row (commit c00014d); the printed
  figures, which we follow, are right.

Everything per image is vectorised: one bincount over the pixels of the pooled maps gives bPQ and, when
no pixel holds two nuclei (as in PanNuke), every class PQ too; otherwise a second bincount over all
channels gives the class intersection matrices as diagonal blocks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from maskrcnn.evaluation.pq import _SQ_EPS, _compact, _iou, _overlaps, check_label_map, pq_from_iou
from maskrcnn.pannuke import PANNUKE_CLASSES, PANNUKE_TISSUES  # noqa: F401 (PANNUKE_TISSUES: re-exported)

# The 19 tissues of PanNuke, as spelled in its types.npy, in PanNuke-metrics run.py's order.


def _channels(classes: Sequence[str]) -> list[int]:
    unknown = [c for c in classes if c not in PANNUKE_CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes must be a non-empty subset of {PANNUKE_CLASSES}, got {tuple(classes)}")
    return [PANNUKE_CLASSES.index(c) for c in classes]


def _class_ids(mask, channels: Sequence[int], name: str) -> np.ndarray:
    """int64 (C, H, W) instance ids of the chosen channels of one (H, W, >=5) PanNuke mask, validated."""
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.shape[-1] <= max(channels):
        raise ValueError(f"{name} must be an (H, W, 6) PanNuke mask, got shape {mask.shape}")
    ids = np.empty((len(channels), *mask.shape[:2]), np.int64)  # planes: fast per-channel work later
    with np.errstate(invalid="ignore"):  # NaN and inf cast to garbage, caught just below
        for k, c in enumerate(channels):
            ids[k] = mask[..., c]
    bad = ids.min(initial=0) < 0
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):  # floats must be whole numbers
        bad = bad or not all(np.array_equal(i, mask[..., c]) for i, c in zip(ids, channels, strict=True))
    if bad:
        for c in channels:
            check_label_map(mask[..., c], f"{name} channel {c}")  # raises, naming the channel
    return ids


def _keys(ids: np.ndarray) -> int:
    """Makes the ids of a (C, H, W) stack unique across channels, in place: id -> id + channel * stride.

    Ids must stay below 2**63 / (C + 1). Later channels get larger keys, and sorted keys follow
    ``binarize``'s numbering (channel by channel, ids increasing). Returns the stride; the channel of
    key k is (k - 1) // stride.
    """
    stride = int(ids.max(initial=0)) + 1
    for c in range(1, len(ids)):
        np.add(ids[c], c * stride, out=ids[c], where=ids[c] > 0)
    return stride


def combine_channels(mask, classes: Sequence[str] = PANNUKE_CLASSES) -> np.ndarray:
    """One instance label map from the class channels of a PanNuke mask (PanNuke-metrics ``binarize``).

    Each (channel, id) pair becomes its own instance, numbered channel by channel in increasing id order;
    where channels overlap the later channel wins. A nucleus covered entirely leaves a gap in the ids.

    Args:
      mask: (H, W, 6) (or at least 5 channels) PanNuke mask, channels 0-4 instance ids (any numeric dtype).
      classes: the class channels to pool (names from ``PANNUKE_CLASSES``).

    Returns:
      int32 (H, W).
    """
    ids = _class_ids(mask, _channels(classes), "mask")
    _keys(ids)
    compact, _ = _compact(ids)
    return compact.max(0).astype(np.int32)  # later channels hold larger numbers, so max = the later one


def pannuke_to_instances(mask, classes: Sequence[str] = PANNUKE_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """A PanNuke mask as an instance label map and the class of each instance.

    Args:
      mask: (H, W, 6) PanNuke mask (channels 0-4 instance ids, any numeric dtype).
      classes: the class channels to read.

    Returns:
      (int32 (H, W) label map with ids 1..n, int32 (n,) class index of id k + 1 into ``classes``).
      Where channels overlap the later channel wins, and a nucleus covered entirely is dropped.
    """
    ids = _class_ids(mask, _channels(classes), "mask")
    stride = _keys(ids)
    labels, keys = _compact(ids.max(0))  # later channels hold larger keys, so max = the later one
    return labels.astype(np.int32), ((keys - 1) // stride).astype(np.int32)


def instances_to_pannuke(labels, classes, num_classes: int = len(PANNUKE_CLASSES)) -> np.ndarray:
    """The PanNuke mask of an instance label map and per-instance classes (inverse of the above).

    Args:
      labels: integer (H, W) label map, ids 1..n (not all need be present), 0 background.
      classes: int (n,) class channel of id k + 1 (0 neoplastic, 1 inflammatory, ...).
      num_classes: class channels in the output (5 in PanNuke).

    Returns:
      float64 (H, W, num_classes + 1) like PanNuke's masks.npy: channel c holds the ids of the instances
      of class c, the last channel is 1 on background.
    """
    labels = check_label_map(labels, "labels")
    classes = np.asarray(classes, np.int64).reshape(-1)
    if labels.max(initial=0) > len(classes):
        raise ValueError(f"labels has id {labels.max()} but only {len(classes)} classes were given")
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"classes must lie in [0, {num_classes}), got {classes.min()}..{classes.max()}")
    class_map = np.concatenate([[-1], classes]).take(labels)  # -1 on background
    out = np.zeros((*labels.shape, num_classes + 1), np.float64)
    for c in range(num_classes):
        out[..., c] = np.where(class_map == c, labels, 0)
    out[..., num_classes] = labels == 0
    return out


def image_scores(true, pred, classes: Sequence[str] = PANNUKE_CLASSES) -> tuple[float, np.ndarray]:
    """bPQ and the class PQs of one image, by the PanNuke protocol.

    Args:
      true, pred: (H, W, 6) PanNuke masks (channels 0-4 instance ids, whole-number floats accepted).
      classes: the classes that take part (all five; or e.g. ``("neoplastic",)`` for a binary model).

    Returns:
      (bPQ float, float64 (len(classes),) class PQs); NaN where the truth has no nucleus (of that class).
    """
    channels = _channels(classes)
    t, p = _class_ids(true, channels, "true"), _class_ids(pred, channels, "pred")
    if t.shape != p.shape:
        raise ValueError(f"true and pred differ in shape: {np.shape(true)} vs {np.shape(pred)}")
    t_stride, p_stride = _keys(t), _keys(p)
    # bPQ on the pooled maps: where channels overlap the later one wins, which holds the larger keys.
    t_pool, t_keys = _compact(t.max(0))
    p_pool, p_keys = _compact(p.max(0))
    if len(t_keys) == 0:
        return float("nan"), np.full(len(channels), np.nan)
    inter, t_area, p_area = _overlaps(t_pool, len(t_keys), p_pool, len(p_keys))
    bpq = pq_from_iou(_iou(inter, t_area, p_area)).pq

    # Class PQs. Usually no pixel holds two nuclei, and each class's intersections are those of the
    # pooled maps between instances of that class. Otherwise one bincount over all channels gives every
    # class's intersection matrix as a diagonal block (keys are unique across channels).
    if np.count_nonzero(t) == np.count_nonzero(t_pool) and np.count_nonzero(p) == np.count_nonzero(p_pool):
        t_class, p_class = (t_keys - 1) // t_stride, (p_keys - 1) // p_stride
        iou = _iou(np.where(t_class[:, None] == p_class[None, :], inter, 0), t_area, p_area)
    else:
        (t, t_keys), (p, p_keys) = _compact(t), _compact(p)
        t_class, p_class = (t_keys - 1) // t_stride, (p_keys - 1) // p_stride
        iou = _iou(*_overlaps(t, len(t_keys), p, len(p_keys)))
    rows, cols = np.nonzero(iou > 0.5)  # get_fast_pq's match_iou=0.5; above 0.5 pairs are unique
    tp = np.bincount(t_class[rows], minlength=len(channels))
    sum_iou = np.bincount(t_class[rows], weights=iou[rows, cols], minlength=len(channels))
    t_counts = np.bincount(t_class, minlength=len(channels))
    fp, fn = np.bincount(p_class, minlength=len(channels)) - tp, t_counts - tp
    with np.errstate(invalid="ignore", divide="ignore"):  # classes absent from the truth: NaN on purpose
        class_pq = (tp / (tp + 0.5 * fp + 0.5 * fn)) * (sum_iou / (tp + _SQ_EPS))  # dq * sq
    return bpq, np.where(t_counts > 0, class_pq, np.nan)


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a mean over nothing is NaN, on purpose
        return float(np.nanmean(values)) if values.size else float("nan")


def pannuke_metrics(
    true_masks,
    pred_masks,
    tissue_types: Sequence[str],
    *,
    classes: Sequence[str] = PANNUKE_CLASSES,
    progress: bool = False,
) -> dict:
    """bPQ and mPQ by the official PanNuke protocol.

    Args:
      true_masks, pred_masks: (N, H, W, 6) PanNuke-format masks (numpy arrays or memmaps, any numeric
        dtype holding whole numbers): channels 0-4 hold instance ids of the classes neoplastic,
        inflammatory, connective, dead, epithelial; channel 5 (background) is ignored.
      tissue_types: (N,) tissue name of each image.
      classes: the classes that take part, default all five. A model of neoplastic nuclei only should pass
        ``("neoplastic",)``: then bPQ compares the neoplastic nuclei alone (the seed paper's binary
        setting) and mPQ equals the neoplastic PQ. With the default, a prediction that fills channel 0 only
        scores every other true nucleus as missed in bPQ and gets PQ 0 for the other classes.
      progress: show a tqdm progress bar over the images.

    Returns:
      dict with
        ``bpq``, ``mpq``: means over tissues (the protocol);
        ``bpq_image_mean``, ``mpq_image_mean``: means over images (the seed paper's way, not the protocol);
        ``per_tissue``: tissue -> {"bpq", "mpq", "images"}, PanNuke's tissue order first, then others;
        ``per_class``: class name -> PQ (mean over the images whose truth has the class);
        ``per_image``: {"bpq": (N,), "mpq": (N,), "class_pq": (N, len(classes))} float64, NaN = skipped.
    """
    if len(np.shape(true_masks)) != 4 or np.shape(true_masks) != np.shape(pred_masks):
        raise ValueError(
            "true_masks and pred_masks must be (N, H, W, 6) PanNuke masks of equal size, got "
            f"{np.shape(true_masks)} and {np.shape(pred_masks)}"
        )
    tissue_types = [str(t) for t in np.asarray(tissue_types).ravel()]
    if len(tissue_types) != len(true_masks):
        raise ValueError(f"got {len(tissue_types)} tissue types for {len(true_masks)} images")
    indices = range(len(true_masks))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="PanNuke metrics", unit="image")
    scores = [image_scores(true_masks[i], pred_masks[i], classes) for i in indices]
    bpq = np.array([s[0] for s in scores], np.float64)
    class_pq = np.array([s[1] for s in scores], np.float64).reshape(-1, len(classes))
    mpq = np.array([_nanmean(row) for row in class_pq])

    names = np.array(tissue_types)
    present = [t for t in PANNUKE_TISSUES if t in tissue_types]
    present += sorted(set(tissue_types) - set(present))
    per_tissue = {
        t: {
            "bpq": _nanmean(bpq[names == t]),
            "mpq": _nanmean(mpq[names == t]),
            "images": int(np.sum(names == t)),
        }
        for t in present
    }
    return {
        "bpq": _nanmean([v["bpq"] for v in per_tissue.values()]),
        "mpq": _nanmean([v["mpq"] for v in per_tissue.values()]),
        "bpq_image_mean": _nanmean(bpq),
        "mpq_image_mean": _nanmean(mpq),
        "per_tissue": per_tissue,
        "per_class": {name: _nanmean(class_pq[:, k]) for k, name in enumerate(classes)},
        "per_image": {"bpq": bpq, "mpq": mpq, "class_pq": class_pq},
    }
