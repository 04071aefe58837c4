"""Anchors for every FPN level, computed once per image size with numpy (static inside jit)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def feature_size(image_size: int, stride: int) -> int:
    """Side of a feature map of ``stride`` for an image side (the backbone's 'same' padding rounds up)."""
    return math.ceil(image_size / stride)


def generate_anchors(
    image_size: tuple[int, int],
    *,
    strides: Sequence[int],
    scales: Sequence[float],
    ratios: Sequence[float],
    octaves: Sequence[float] = (1.0,),
) -> np.ndarray:
    """All anchors of an FPN pyramid, one base scale per level (Matterport's ``generate_pyramid_anchors``;
    with several ``octaves``, RetinaNet's scales per level).

    Level ``l`` has a feature map of ceil(H / stride_l) x ceil(W / stride_l) cells. Each cell holds one
    anchor per (octave, ratio), centred on the cell centre ((i + 0.5) * stride in image pixels; Matterport
    puts it at the cell's corner, i * stride, which shifts every anchor by half a stride), with area
    (scale_l * octave) ** 2 and width / height = ratio.

    Args:
      image_size: (H, W) of the image the model sees.
      strides, scales: one per level, P2 first. ratios: width / height of the anchors at every cell.
      octaves: multipliers of each level's scale (RetinaNet: 1, 2 ** (1/3), 2 ** (2/3)).

    Returns:
      float32 (A, 4) yxyx pixels, ordered level, then row, then column, then octave, then ratio: the
      order in which the RPN head flattens its (B, H, W, octaves * ratios * k) outputs.
    """
    if len(strides) != len(scales):
        raise ValueError(f"need one anchor scale per stride, got strides={strides} and scales={scales}")
    ratios = np.asarray(ratios, np.float64)
    sizes = np.asarray(octaves, np.float64)[:, None] * np.ones_like(ratios)[None, :]  # (octave, ratio)
    sizes, per_ratio = sizes.ravel(), np.tile(ratios, len(octaves))
    levels = []
    for stride, scale in zip(strides, scales, strict=True):
        heights = scale * sizes / np.sqrt(per_ratio)
        widths = scale * sizes * np.sqrt(per_ratio)
        cy = (np.arange(feature_size(image_size[0], stride)) + 0.5) * stride
        cx = (np.arange(feature_size(image_size[1], stride)) + 0.5) * stride
        cy, cx, r = (a.ravel() for a in np.meshgrid(cy, cx, np.arange(len(sizes)), indexing="ij"))
        h, w = heights[r], widths[r]
        levels.append(np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1))
    return np.concatenate(levels).astype(np.float32)


def anchors_per_level(image_size: tuple[int, int], strides: Sequence[int], per_location: int) -> list[int]:
    """How many anchors each level of :func:`generate_anchors` holds (they are stored level by level)."""
    return [feature_size(image_size[0], s) * feature_size(image_size[1], s) * per_location for s in strides]
