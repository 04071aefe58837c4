"""From a label map to fixed-size instance targets (boxes, classes, mini-masks, padding), and one example
prepared for the model."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from maskrcnn.augment import color_jitter
from maskrcnn.config import DataConfig
from maskrcnn.input_pipeline.geometry import augment, resize


def _contiguous(instances: np.ndarray, classes: np.ndarray):
    """Relabels ids to 1..K in id order; returns the int32 map and the class of each label (K + 1,)."""
    flat = instances.ravel()
    top = int(flat.max(initial=0))
    if flat.size and flat.min() < 0:
        raise ValueError(f"instance ids must be >= 0 (0 is background), got {flat.min()}")
    if top < 1 << 22:  # a lookup table: faster than np.unique
        ids = np.flatnonzero(np.bincount(flat, minlength=top + 1)[1:]) + 1
        table = np.zeros(top + 1, np.int32)
        table[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        labels = table[instances]
    else:
        ids, inverse = np.unique(flat, return_inverse=True)
        labels = (inverse.reshape(instances.shape) + (ids[0] != 0)).astype(np.int32)
        ids = ids[ids > 0]
    class_of = np.zeros(len(ids) + 1, np.int32)
    class_of[labels] = classes  # an instance has one class (maskrcnn.pannuke.instance_and_class_maps)
    class_of[0] = 0
    return labels, class_of


def instance_targets(
    instances,
    classes,
    max_instances: int,
    mini_mask_size: int | None,
    class_of: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> dict:
    """Boxes, classes and (mini-)masks of the instances of one label map, padded to ``max_instances``.

    Args:
      instances: int (S, S) label map (any ids, 0 background); classes: (S, S) class map (c + 1 for
        class c); with ``class_of`` given, ``instances`` must hold labels 0..K and ``class_of`` (K + 1,)
        their classes, and ``classes`` is ignored.
      rng: picks which instances keep a slot when there are more than ``max_instances``; None: a fixed
        seeded pick. Either way the pick does not depend on size (keeping the largest would teach the
        smallest nuclei as background).

    Returns:
      dict of boxes float32 (M, 4) yxyx on pixel edges, classes int32 (M,), masks uint8 (M, m, m) or
      (M, S, S), valid bool (M,), num_truncated int32: instances beyond M left out, ignore_boxes
      float32 (M, 4) and ignore_valid bool (M,): the first M left-out instances' boxes. Kept instances
      are in label order.
    """
    if class_of is None:
        instances, class_of = _contiguous(np.asarray(instances), np.asarray(classes))
    count = len(class_of) - 1
    areas = np.bincount(instances.ravel(), minlength=count + 1)[1:]
    present = np.flatnonzero(areas) + 1
    keep, dropped = present, present[:0]
    if len(present) > max_instances:
        pick = (rng if rng is not None else np.random.default_rng(0)).permutation(len(present))
        keep, dropped = np.sort(present[pick[:max_instances]]), np.sort(present[pick[max_instances:]])
    n = len(keep)
    slices = ndimage.find_objects(instances, max_label=count)

    def edges_of(labels):
        return np.array(
            [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in (slices[k - 1] for k in labels)]
        )

    edges = edges_of(keep)
    boxes = np.zeros((max_instances, 4), np.float32)
    out_classes = np.zeros(max_instances, np.int32)
    ignore_boxes = np.zeros((max_instances, 4), np.float32)
    num_ignored = min(len(dropped), max_instances)
    if n:
        boxes[:n] = edges
        out_classes[:n] = class_of[keep]
    if num_ignored:
        ignore_boxes[:num_ignored] = edges_of(dropped[:num_ignored])
    if mini_mask_size is None:
        masks = np.zeros((max_instances, *instances.shape), np.uint8)
        masks[:n] = instances[None] == keep[:, None, None]
    else:
        m = mini_mask_size
        masks = np.zeros((max_instances, m, m), np.uint8)
        if n:
            y1, x1, y2, x2 = (edges[:, i : i + 1] for i in range(4))
            centres = np.arange(m) + 0.5
            # The same float64 expression as the reference, so the same pixels are picked at exact ties.
            rows = (y1 + centres * (y2 - y1) / m).astype(np.int64)  # (n, m)
            cols = (x1 + centres * (x2 - x1) / m).astype(np.int64)
            masks[:n] = instances[rows[:, :, None], cols[:, None, :]] == keep[:, None, None]
    return {
        "boxes": boxes,
        "classes": out_classes,
        "masks": masks,
        "valid": np.arange(max_instances) < n,
        "num_truncated": np.int32(len(present) - n),
        "ignore_boxes": ignore_boxes,
        "ignore_valid": np.arange(max_instances) < num_ignored,
    }


def prepare(example: dict, data: DataConfig, rng: np.random.Generator | None = None) -> dict:
    """One example as model inputs and targets; ``rng`` given: with augmentation (if ``data.augment``).

    Returns the batch entries of one example (see the module docstring) without the batch axis.
    """
    image = np.asarray(example["image"], np.uint8)
    instances = np.asarray(example["instances"])
    classes = np.asarray(example["classes"])
    if image.shape[:2] != instances.shape or instances.shape != classes.shape:
        raise ValueError(
            f"example {example.get('fold')}/{example.get('index')}: image {image.shape}, instances "
            f"{instances.shape} and classes {classes.shape} must share (H, W)"
        )
    labels, class_of = _contiguous(instances, classes)
    if rng is not None and data.augment:
        image, labels, _ = augment(image, labels, None, rng, data.max_rotation_degrees)
        image = color_jitter(
            image,
            rng,
            hed=data.hed_jitter,
            brightness=data.brightness,
            contrast=data.contrast,
            saturation=data.saturation,
        )
    scale = data.image_size / image.shape[0]
    image, labels, _ = resize(image, labels, None, data.image_size)
    targets = instance_targets(
        labels, None, data.max_instances, data.mini_mask_size, class_of=class_of, rng=rng
    )
    return {
        "image": image,
        **targets,
        "tissue": np.int32(example["tissue"]),
        "fold": np.int32(example["fold"]),
        "index": np.int32(example["index"]),
        "scale": np.float32(scale),
    }
