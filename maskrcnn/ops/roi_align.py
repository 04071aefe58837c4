"""ROIAlign (He et al., Mask R-CNN, 2017) on one feature map or on an FPN pyramid.

The numbers are those of the standard definition as torchvision's ``roi_align`` computes it for
``sampling_ratio > 0``: the box is mapped to feature cells (minus half a cell when ``aligned``), cut into
``output_size`` bins, each bin sampled on a ``sampling_ratio`` x ``sampling_ratio`` grid at sub-bin
centres, each sample bilinearly interpolated (zero when more than one cell outside the map, clamped to
the border otherwise), and the samples averaged.

All levels of a pyramid are flattened into one (sum H*W, C) table, so one gather serves every box
whatever its level. Gradients flow to the features, not to the boxes (as in Matterport).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _axis_samples(lo, hi, bins: int, grid: int, length, aligned: bool):
    """Sample positions along one axis and their bilinear corners and weights.

    Args:
      lo, hi: float (R,) box edges in feature cells; length: int (R,) the map's extent on this axis.

    Returns:
      low, high int32 (R, bins * grid) corner indices; w_low, w_high float32 (R, bins * grid) weights that
      are zero for samples more than one cell outside the map.
    """
    if aligned:
        lo, hi = lo - 0.5, hi - 0.5
        extent = hi - lo
    else:
        extent = jnp.maximum(hi - lo, 1.0)  # torchvision's legacy rule: boxes at least one cell wide
    step = extent / (bins * grid)
    pos = lo[:, None] + (jnp.arange(bins * grid, dtype=jnp.float32) + 0.5)[None, :] * step[:, None]
    length = length[:, None].astype(jnp.float32)
    inside = (pos >= -1.0) & (pos <= length)
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos)
    at_end = low >= length - 1.0
    low = jnp.where(at_end, length - 1.0, low)
    pos = jnp.where(at_end, low, pos)
    frac = pos - low
    high = jnp.where(at_end, low, low + 1.0)
    mask = inside.astype(jnp.float32)
    return low.astype(jnp.int32), high.astype(jnp.int32), (1.0 - frac) * mask, frac * mask


def _align_flat(table, boxes, level, shapes, scales, output_size, sampling_ratio, aligned):
    """ROIAlign of one image whose levels are flattened into ``table`` (L, C); boxes (R, 4); level (R,)."""
    oh, ow = output_size
    heights = jnp.asarray([h for h, _ in shapes], jnp.int32)[level]
    widths = jnp.asarray([w for _, w in shapes], jnp.int32)[level]
    offsets = jnp.asarray(np.cumsum([0] + [h * w for h, w in shapes])[:-1], jnp.int32)[level]
    scale = jnp.asarray(scales, jnp.float32)[level]
    b = boxes.astype(jnp.float32) * scale[:, None]
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(b[:, 0], b[:, 2], oh, sampling_ratio, heights, aligned)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(b[:, 1], b[:, 3], ow, sampling_ratio, widths, aligned)

    # Every bin is a weighted sum of 4 g^2 cells (g x g samples, 4 bilinear corners each): gather them
    # once and contract, rather than gathering each corner's (R, oh*g, ow*g, C) samples, adding and
    # averaging. Same sums; 3.4-3.8x faster forward + backward on the CPU (experiments/results/forms.md).
    r, g = boxes.shape[0], sampling_ratio
    rows = jnp.stack([y_lo, y_hi], -1).reshape(r, oh, 1, 2 * g, 1)
    w_rows = jnp.stack([wy_lo, wy_hi], -1).reshape(r, oh, 1, 2 * g, 1)
    cols = jnp.stack([x_lo, x_hi], -1).reshape(r, 1, ow, 1, 2 * g)
    w_cols = jnp.stack([wx_lo, wx_hi], -1).reshape(r, 1, ow, 1, 2 * g)
    index = (offsets[:, None, None, None, None] + rows * widths[:, None, None, None, None] + cols).reshape(
        r, oh, ow, 4 * g * g
    )
    weight = (w_rows * w_cols).reshape(r, oh, ow, 4 * g * g) / (g * g)
    samples = table[index].astype(jnp.float32)  # (R, oh, ow, 4 g^2, C)
    return jnp.einsum("rpqk,rpqkc->rpqc", weight, samples).astype(table.dtype)


def _check(features_list, boxes, sampling_ratio):
    if sampling_ratio <= 0:
        raise ValueError(
            f"sampling_ratio must be a positive int (static shapes need a fixed grid), got {sampling_ratio}"
        )
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, R, 4) yxyx, got shape {boxes.shape}")
    for f in features_list:
        if f.ndim != 4 or f.shape[0] != boxes.shape[0]:
            raise ValueError(f"features must be (B, H, W, C) with B = {boxes.shape[0]}, got shape {f.shape}")


def _pyramid_align(features_list, boxes, levels, scales, output_size, sampling_ratio, aligned):
    _check(features_list, boxes, sampling_ratio)
    shapes = [tuple(f.shape[1:3]) for f in features_list]
    batch, channels = boxes.shape[0], features_list[0].shape[-1]
    table = jnp.concatenate([f.reshape(batch, -1, channels) for f in features_list], axis=1)
    boxes = jax.lax.stop_gradient(boxes)

    def one(t, b, lvl):
        return _align_flat(t, b, lvl, shapes, scales, _pair(output_size), sampling_ratio, aligned)

    return jax.vmap(one)(table, boxes, levels)


def roi_align(features, boxes, output_size, *, spatial_scale: float, sampling_ratio: int = 2, aligned=True):
    """ROIAlign on one feature map.

    Args:
      features: float (B, H, W, C).
      boxes: float (B, R, 4) yxyx in input-image pixels.
      output_size: int or (oh, ow).
      spatial_scale: feature cells per image pixel (1 / stride).
      sampling_ratio: samples per bin along each axis (> 0).
      aligned: shift the box by half a cell so that sample positions match pixel centres (Detectron2,
        torchvision ``aligned=True``); False reproduces the original Mask R-CNN code.

    Returns:
      (B, R, oh, ow, C) in the dtype of ``features``.
    """
    levels = jnp.zeros(boxes.shape[:2], jnp.int32)
    return _pyramid_align([features], boxes, levels, [spatial_scale], output_size, sampling_ratio, aligned)


def assign_fpn_levels(boxes, *, num_levels: int, min_level: int = 2, canonical_size=224, canonical_level=4):
    """FPN level index of each box: Eq. 1 of Lin et al. (2017), clamped to the pyramid.

    k = floor(canonical_level + log2(sqrt(h * w) / canonical_size)), so a box of the ImageNet size 224 goes
    to P4; the result is k - min_level, clamped to [0, num_levels - 1].

    Args:
      boxes: float (..., 4) yxyx pixels.

    Returns:
      int32 (...,) index into the pyramid list.
    """
    size = jnp.sqrt(jnp.maximum((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]), 1e-12))
    k = jnp.floor(canonical_level + jnp.log2(size / canonical_size) + 1e-6)
    return jnp.clip(k - min_level, 0, num_levels - 1).astype(jnp.int32)


def multilevel_roi_align(
    pyramid: Sequence,
    boxes,
    output_size,
    *,
    strides: Sequence[int],
    canonical_size=224,
    canonical_level: int = 4,
    sampling_ratio: int = 2,
    aligned: bool = True,
):
    """ROIAlign of each box on the FPN level :func:`assign_fpn_levels` picks for it.

    Args:
      pyramid: list of float (B, H_l, W_l, C), finest first (P2, P3, ...), with ``strides`` (4, 8, ...).
      boxes: float (B, R, 4) yxyx in input-image pixels.
      canonical_size, canonical_level: the FPN rule's constants (224 and 4 in the FPN paper; scale the
        size down with the objects, e.g. for nuclei).

    Returns:
      (B, R, oh, ow, C), crops in the boxes' order.
    """
    if len(pyramid) != len(strides):
        raise ValueError(
            f"need one stride per pyramid level, got {len(pyramid)} levels and strides={strides}"
        )
    min_level = int(round(math.log2(strides[0])))
    levels = assign_fpn_levels(
        jax.lax.stop_gradient(boxes),
        num_levels=len(pyramid),
        min_level=min_level,
        canonical_size=canonical_size,
        canonical_level=canonical_level,
    )
    scales = [1.0 / s for s in strides]
    return _pyramid_align(list(pyramid), boxes, levels, scales, output_size, sampling_ratio, aligned)
