"""Box arithmetic on (y1, x1, y2, x2) boxes in absolute pixels on pixel edges (pure, jittable).

A box around pixel rows 3..5 has y1 = 3 and y2 = 6, so its height is y2 - y1 = 3 and its area counts
pixels. Every function takes boxes in the last axis and broadcasts over leading axes.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

# Matterport's RPN_BBOX_STD_DEV / BBOX_STD_DEV (and Detectron's BBOX_REG_WEIGHTS 10, 10, 5, 5): dividing
# the deltas by these brings the regression targets to roughly unit variance.
BOX_STD = (0.1, 0.1, 0.2, 0.2)
# Detectron's BBOX_XFORM_CLIP: the largest log scale a decoded box may take, so exp() cannot overflow.
LOG_SIZE_CLIP = math.log(1000.0 / 16.0)


def box_area(boxes):
    """Areas of float (..., 4) yxyx boxes as (...,); inverted boxes have area 0."""
    y1, x1, y2, x2 = jnp.moveaxis(boxes, -1, 0)
    return jnp.maximum(y2 - y1, 0.0) * jnp.maximum(x2 - x1, 0.0)


def pairwise_iou(boxes_a, boxes_b):
    """Intersection over union of every pair: float (N, 4) and (M, 4) yxyx -> float32 (N, M).

    A pair whose union is empty (two zero-area boxes) has IoU 0. Computed from the four coordinate
    columns, (N, 1) against (1, M), so that every step is an elementwise op over the (N, M) plane: the
    same arithmetic as slicing (N, M, 2) corner pairs, bit for bit, but vectorised along M (with NMS's
    major-axis reduction, NMS went from 1.5x keras-hub's time to 0.6x: experiments/results/ops.md).
    """
    boxes_a, boxes_b = boxes_a.astype(jnp.float32), boxes_b.astype(jnp.float32)
    ay1, ax1, ay2, ax2 = (c[:, None] for c in jnp.moveaxis(boxes_a, -1, 0))
    by1, bx1, by2, bx2 = (c[None, :] for c in jnp.moveaxis(boxes_b, -1, 0))
    inter = jnp.maximum(jnp.minimum(ay2, by2) - jnp.maximum(ay1, by1), 0.0) * jnp.maximum(
        jnp.minimum(ax2, bx2) - jnp.maximum(ax1, bx1), 0.0
    )
    union = box_area(boxes_a)[:, None] + box_area(boxes_b)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes, height, width):
    """Clips float (..., 4) yxyx boxes to the image [0, height] x [0, width]."""
    limits = jnp.asarray([height, width, height, width], boxes.dtype)
    return jnp.clip(boxes, 0.0, limits)


def boxes_from_masks(masks):
    """Tight boxes of binary masks: bool (N, H, W) -> float32 (N, 4) yxyx on pixel edges.

    An empty mask gets the box (0, 0, 0, 0).
    """
    masks = masks.astype(bool)
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)

    def extent(hit):
        n = hit.shape[-1]
        first = jnp.argmax(hit, axis=-1)
        last = n - jnp.argmax(hit[:, ::-1], axis=-1)
        present = hit.any(axis=-1)
        return jnp.where(present, first, 0), jnp.where(present, last, 0)

    y1, y2 = extent(rows)
    x1, x2 = extent(cols)
    return jnp.stack([y1, x1, y2, x2], axis=-1).astype(jnp.float32)


def _centre_size(boxes):
    size = boxes[..., 2:] - boxes[..., :2]
    return boxes[..., :2] + 0.5 * size, size


def encode_boxes(boxes, anchors, std=BOX_STD):
    """Regression targets that move ``anchors`` onto ``boxes`` (Mask R-CNN's box coding).

    Args:
      boxes, anchors: float (..., 4) yxyx with positive sizes (the anchors' sizes divide).
      std: per-coordinate divisors of (dy, dx, log dh, log dw).

    Returns:
      float32 (..., 4): ((y - ya) / ha, (x - xa) / wa, log(h / ha), log(w / wa)) / std, with (y, x) box
      centres and (h, w) sizes.
    """
    centre, size = _centre_size(boxes.astype(jnp.float32))
    a_centre, a_size = _centre_size(anchors.astype(jnp.float32))
    deltas = jnp.concatenate([(centre - a_centre) / a_size, jnp.log(size / a_size)], axis=-1)
    return deltas / jnp.asarray(std, jnp.float32)


def decode_boxes(deltas, anchors, std=BOX_STD, log_size_clip=LOG_SIZE_CLIP):
    """Inverse of :func:`encode_boxes`: float (..., 4) deltas applied to (..., 4) anchors -> float32 boxes.

    The log-size deltas are clamped at ``log_size_clip`` so that a wild prediction cannot overflow.
    """
    deltas = deltas.astype(jnp.float32) * jnp.asarray(std, jnp.float32)
    a_centre, a_size = _centre_size(anchors.astype(jnp.float32))
    centre = a_centre + deltas[..., :2] * a_size
    size = a_size * jnp.exp(jnp.minimum(deltas[..., 2:], log_size_clip))
    return jnp.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=-1)
