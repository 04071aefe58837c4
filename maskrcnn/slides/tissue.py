"""Tissue detection on a slide's thumbnail, and the tiles of the model grid that hold tissue.

Glass is white or grey, stained tissue is coloured: Otsu's threshold on the HSV saturation of the
thumbnail separates them (the approach of HoVer-Net's and tiatoolbox's WSI tissue masks, on saturation
rather than grey level so that pale eosin still counts). The threshold is clamped to
:data:`SATURATION_RANGE`, so that a slide that is all glass or all tissue is not split in two by a
threshold drawn through a one-sided histogram.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Otsu's threshold on saturation (0-1) is clamped to this range: clean glass is below 0.03, H&E-stained
# tissue, even pale stroma, above 0.15.
SATURATION_RANGE = (0.03, 0.15)
DARK = 25  # pixels whose brightest channel is below this are no tissue (out-of-scan black, slide edges)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W) HSV saturation, 255 * (max - min) / max, of uint8 (H, W, 3) RGB; 0 where max is 0."""
    high = rgb.max(-1).astype(np.uint16)
    spread = high - rgb.min(-1)
    spread *= 255
    spread //= np.maximum(high, 1)
    return spread.astype(np.uint8)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """bool (H, W): tissue pixels of a thumbnail, uint8 (H, W, 3), grown by one pixel so that the rim of
    a tissue fragment is kept."""
    from skimage.filters import threshold_otsu

    sat = saturation(rgb)
    bright = rgb.max(-1) >= DARK
    values = sat[bright]
    low, high = (round(255 * v) for v in SATURATION_RANGE)
    if values.size and values.min() < values.max():
        threshold = int(np.clip(threshold_otsu(values), low, high))
    else:  # one colour: tissue if it is coloured at all
        threshold = low
    mask = (sat > threshold) & bright
    mask = ndimage.binary_closing(mask, np.ones((3, 3), bool), border_value=0) | mask
    return ndimage.binary_dilation(mask, np.ones((3, 3), bool))


def tiles_with_tissue(
    mask: np.ndarray,
    downsample: float,
    ys: list[int],
    xs: list[int],
    tile: int,
) -> np.ndarray:
    """bool (len(ys), len(xs)): which tiles of the model grid overlap tissue.

    Args:
      mask: bool (h, w) tissue mask; mask pixel (i, j) covers model pixels [i, i + 1) * downsample.
      downsample: model pixels per mask pixel.
      ys, xs: tile origins in model pixels; tiles are ``tile`` px square.
    """
    # A summed-area table answers "any tissue in this rectangle" for every tile at once.
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int32)  # counts up to 2**31: 46k px square
    np.cumsum(np.cumsum(mask, 0, dtype=np.int32), 1, out=table[1:, 1:])

    def spans(origins, size):
        starts = np.clip(np.floor(np.asarray(origins) / downsample).astype(int), 0, size)
        stops = np.clip(np.ceil((np.asarray(origins) + tile) / downsample).astype(int), 0, size)
        return starts, np.maximum(stops, starts)

    y0, y1 = spans(ys, mask.shape[0])
    x0, x1 = spans(xs, mask.shape[1])
    counts = (
        table[y1[:, None], x1[None, :]]
        - table[y0[:, None], x1[None, :]]
        - table[y1[:, None], x0[None, :]]
        + table[y0[:, None], x0[None, :]]
    )
    return counts > 0
