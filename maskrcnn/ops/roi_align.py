"""ROIAlign (He et al., Mask R-CNN, 2017) on one feature map or on an FPN pyramid.

The numbers are those of the standard definition as torchvision's ``roi_align`` computes it for
``sampling_ratio > 0``: the box is mapped to feature cells (minus half a cell when ``aligned``), cut into
``output_size`` bins, each bin sampled on a ``sampling_ratio`` x ``sampling_ratio`` grid at sub-bin
centres, each sample bilinearly interpolated (zero when more than one cell outside the map, clamped to
the border otherwise), and the samples averaged.

Two exact forms compute it. The gather form (``_align_flat``) gathers the 4 g^2 cells each bin reads, for
every bin: 784 cells a 7x7 box at g = 2, whatever its size. The window form (``_window_align``) cuts one
``window`` x ``window`` block of cells where the box starts and contracts it with a (bins, window) weight
matrix on each axis: 256 cells at window 16, and two small matrix products. A box fits the window when
every sample's bilinear corners fall inside it, so on its level it spans at most ``window - 2`` cells;
nuclei do, on P2. The few boxes that do not fit are pooled by the gather form in a fixed number of spare
slots, and a batch with more of them than slots takes the gather form for every box (``lax.cond``): every
box gets the definition's numbers whichever form pooled it, up to the rounding of the sums (float32,
1e-6). On a GPU, XLA may copy the condition to the host to pick the branch, a wait per pooling; not yet
measured there (``model.roi_window=0`` keeps the gather form alone).

All levels of a pyramid are flattened into one table, so one gather serves every box whatever its level.
Gradients flow to the features, not to the boxes (as in Matterport).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The window form's block side in cells: boxes up to 14 cells on their level (56 px on P2) fit.
WINDOW = 16
# Share of a batch's boxes the gather form pools again when they do not fit the window form's block.
SPARE_SLOTS = 0.125


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


def _level_samples(boxes, level, shapes, scales, output_size, sampling_ratio, aligned):
    """Each box's level height and width (R,) and its samples on each axis (:func:`_axis_samples`)."""
    oh, ow = output_size
    heights = jnp.asarray([h for h, _ in shapes], jnp.int32)[level]
    widths = jnp.asarray([w for _, w in shapes], jnp.int32)[level]
    b = boxes.astype(jnp.float32) * jnp.asarray(scales, jnp.float32)[level][:, None]
    y = _axis_samples(b[:, 0], b[:, 2], oh, sampling_ratio, heights, aligned)
    x = _axis_samples(b[:, 1], b[:, 3], ow, sampling_ratio, widths, aligned)
    return heights, widths, y, x


def _align_flat(table, boxes, level, shapes, scales, output_size, sampling_ratio, aligned, base=0):
    """The gather form: ROIAlign of boxes (R, 4) on levels (R,) flattened into ``table`` (L, C).

    ``base`` (int or (R,)) is added to every box's cell index: the first row of its image when ``table``
    holds several images' levels one after the other.
    """
    oh, ow = output_size
    offsets = jnp.asarray(np.cumsum([0] + [h * w for h, w in shapes])[:-1], jnp.int32)[level] + base
    _, widths, (y_lo, y_hi, wy_lo, wy_hi), (x_lo, x_hi, wx_lo, wx_hi) = _level_samples(
        boxes, level, shapes, scales, output_size, sampling_ratio, aligned
    )

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


def _window_weights(low, high, w_low, w_high, bins: int, grid: int, length, window: int):
    """One axis of the window form: where each box's window starts, whether its samples fit, and weights.

    Args:
      low, high, w_low, w_high: (R, bins * grid) from :func:`_axis_samples`; length: int (R,).

    Returns:
      start int32 (R,), the window's first cell; fits bool (R,); weights float32 (R, bins, window), the
      bilinear weights of each bin's samples on the window's cells, averaged over the grid.
    """
    start = jnp.clip(jnp.min(low, axis=1), 0, jnp.maximum(length - window, 0))
    fits = jnp.max(high, axis=1) - start < window
    cells = jnp.arange(window, dtype=jnp.int32)
    weights = ((low - start[:, None])[..., None] == cells) * w_low[..., None] + (
        (high - start[:, None])[..., None] == cells
    ) * w_high[..., None]
    return start, fits, weights.reshape(low.shape[0], bins, grid, window).sum(axis=2) / grid


def _window_geometry(boxes, level, shapes, scales, output_size, sampling_ratio, aligned, window):
    """Where each box's block starts on its level (row, column: int32 (N,)), the weights of each axis
    ((N, oh, window) and (N, ow, window), :func:`_window_weights`) and whether the box fits (bool (N,))."""
    oh, ow = output_size
    heights, widths, y, x = _level_samples(boxes, level, shapes, scales, output_size, sampling_ratio, aligned)
    y0, fit_y, w_y = _window_weights(*y, oh, sampling_ratio, heights, window)
    x0, fit_x, w_x = _window_weights(*x, ow, sampling_ratio, widths, window)
    return y0, x0, w_y, w_x, fit_y & fit_x


def _window_align(grid_table, first_row, first_col, w_y, w_x, window: int):
    """The window form: blocks of ``grid_table`` (rows, width, C) at (first_row, first_col) (N,) contracted
    with the axis weights w_y (N, oh, window) and w_x (N, ow, window). Returns (N, oh, ow, C)."""
    channels = grid_table.shape[-1]
    blocks = jax.vmap(lambda r, c: jax.lax.dynamic_slice(grid_table, (r, c, 0), (window, window, channels)))(
        first_row, first_col
    ).astype(jnp.float32)  # (N, window, window, C)
    # Rows, then columns; both products keep (N, oh, ow, C) order, so no transpose feeds the next layer.
    out = jnp.matmul(w_x[:, None], jnp.einsum("npi,nijc->npjc", w_y, blocks))
    return out.astype(grid_table.dtype)


def _pyramid_align(features_list, boxes, levels, scales, output_size, sampling_ratio, aligned, window):
    _check(features_list, boxes, sampling_ratio)
    if window is not None and window < 2:
        raise ValueError(f"window must be None or at least 2 cells, got {window}")
    shapes = [tuple(f.shape[1:3]) for f in features_list]
    size = _pair(output_size)
    batch, count, channels = boxes.shape[0], boxes.shape[1], features_list[0].shape[-1]
    boxes, levels = jax.lax.stop_gradient(jnp.asarray(boxes)), jnp.asarray(levels)
    table = jnp.concatenate([f.reshape(batch, -1, channels) for f in features_list], axis=1)

    def gather_form():
        def one(t, b, lvl):
            return _align_flat(t, b, lvl, shapes, scales, size, sampling_ratio, aligned)

        return jax.vmap(one)(table, boxes, levels)

    if window is None or count == 0:
        return gather_form()

    n = batch * count
    flat_boxes, flat_levels = boxes.reshape(n, 4), levels.reshape(n)
    y0, x0, w_y, w_x, fits = _window_geometry(
        flat_boxes, flat_levels, shapes, scales, size, sampling_ratio, aligned, window
    )
    spare = max(1, math.ceil(n * SPARE_SLOTS))

    def window_form():
        # Each image's levels stacked top to bottom, zero-padded to one width and followed by `window`
        # zero rows, so that every block lies inside the table.
        width = max(max(w for _, w in shapes), window)
        rows = sum(h for h, _ in shapes) + window
        grid_table = jnp.concatenate(
            [jnp.pad(f, ((0, 0), (0, 0), (0, width - f.shape[2]), (0, 0))) for f in features_list]
            + [jnp.zeros((batch, window, width, channels), features_list[0].dtype)],
            axis=1,
        ).reshape(batch * rows, width, channels)
        image = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), count)
        level_row = jnp.asarray(np.cumsum([0] + [h for h, _ in shapes])[:-1], jnp.int32)[flat_levels]
        out = _window_align(grid_table, image * rows + level_row + y0, x0, w_y, w_x, window)

        # The boxes that do not fit (top_k puts them first), pooled again by the gather form.
        _, worst = jax.lax.top_k((~fits).astype(jnp.int32), spare)
        redo = _align_flat(
            table.reshape(batch * table.shape[1], channels),
            flat_boxes[worst],
            flat_levels[worst],
            shapes,
            scales,
            size,
            sampling_ratio,
            aligned,
            base=image[worst] * table.shape[1],
        )
        keep = fits[worst][:, None, None, None]
        return out.at[worst].set(jnp.where(keep, out[worst], redo)).reshape(batch, count, *size, channels)

    return jax.lax.cond(jnp.sum(~fits) <= spare, window_form, gather_form)


def roi_align(
    features,
    boxes,
    output_size,
    *,
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned=True,
    window: int | None = WINDOW,
):
    """ROIAlign on one feature map.

    Args:
      features: float (B, H, W, C).
      boxes: float (B, R, 4) yxyx in input-image pixels.
      output_size: int or (oh, ow).
      spatial_scale: feature cells per image pixel (1 / stride).
      sampling_ratio: samples per bin along each axis (> 0).
      aligned: shift the box by half a cell so that sample positions match pixel centres (Detectron2,
        torchvision ``aligned=True``); False reproduces the original Mask R-CNN code.
      window: side in cells of the block the window form cuts at each box (module docstring); None
        pools every box with the gather form. Either way the same numbers.

    Returns:
      (B, R, oh, ow, C) in the dtype of ``features``.
    """
    levels = jnp.zeros(boxes.shape[:2], jnp.int32)
    return _pyramid_align(
        [features], boxes, levels, [spatial_scale], output_size, sampling_ratio, aligned, window
    )


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
    window: int | None = WINDOW,
):
    """ROIAlign of each box on the FPN level :func:`assign_fpn_levels` picks for it.

    Args:
      pyramid: list of float (B, H_l, W_l, C), finest first (P2, P3, ...), with ``strides`` (4, 8, ...).
      boxes: float (B, R, 4) yxyx in input-image pixels.
      canonical_size, canonical_level: the FPN rule's constants (224 and 4 in the FPN paper; scale the
        size down with the objects, e.g. for nuclei).
      sampling_ratio, aligned, window: as in :func:`roi_align`.

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
    return _pyramid_align(list(pyramid), boxes, levels, scales, output_size, sampling_ratio, aligned, window)
