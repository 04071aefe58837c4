"""Core-ownership stitching of tile predictions as they stream in, without a label map of the slide.

The tile grid and the ownership rule are :func:`maskrcnn.tiling.segment_large`'s: a tile keeps the nuclei
whose centroid lies in its core (:func:`maskrcnn.tiling.owned_ids`), and where a kept nucleus overlaps
one kept earlier (in raster order) the earlier one keeps the pixels. ``segment_large`` looks that up in
a full label map; here each kept nucleus that reaches into the footprint of a later tile is remembered
(its mask crop) until the raster has moved past it, so memory holds about one row of tiles' border
nuclei, and a nucleus is final as soon as its tile is done. Fed the same tiles in the same order, the
nuclei are exactly ``segment_large``'s.

Coordinates here are model pixels (see :mod:`maskrcnn.slides.reader`), on pixel edges.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from maskrcnn.tiling import TILE, owned_ids, tile_cores, tile_origins


@dataclasses.dataclass(frozen=True)
class Nucleus:
    """One stitched nucleus: ``mask`` bool (h, w) is its tight crop whose top-left pixel is (y0, x0)."""

    id: int
    cls: int  # 1..K
    score: float
    y0: int
    x0: int
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(y1, x1, y2, x2) on pixel edges."""
        return self.y0, self.x0, self.y0 + self.mask.shape[0], self.x0 + self.mask.shape[1]

    @property
    def centroid(self) -> tuple[float, float]:
        """(y, x) mean of the pixel centres, on pixel edges (pixel (0, 0)'s centre is (0.5, 0.5))."""
        ys, xs = np.nonzero(self.mask)
        return float(ys.mean()) + self.y0 + 0.5, float(xs.mean()) + self.x0 + 0.5


class TileGrid:
    """``segment_large``'s tiles of a (height, width) image in model pixels (padded to at least a tile).

    ``ys``/``xs`` are tile origins, ``y_cores``/``x_cores`` the ``[lo, hi)`` each tile owns.
    """

    def __init__(self, size: tuple[int, int], overlap: int, tile: int = TILE):
        self.tile = tile
        self.height, self.width = max(size[0], tile), max(size[1], tile)
        self.ys, self.xs = tile_origins(self.height, tile, overlap), tile_origins(self.width, tile, overlap)
        self.y_cores = tile_cores(self.ys, tile, self.height)
        self.x_cores = tile_cores(self.xs, tile, self.width)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of tiles."""
        return len(self.ys), len(self.xs)

    def origin(self, row: int, col: int) -> tuple[int, int]:
        return self.ys[row], self.xs[col]


def _crop(mask: np.ndarray, y: int, x: int) -> tuple[int, int, np.ndarray] | None:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if not len(rows):
        return None
    return y + rows[0], x + cols[0], mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


class Stitcher:
    """Turns per-tile predictions, fed in raster order, into final nuclei (ids 1, 2, ...)."""

    def __init__(self, grid: TileGrid):
        self.grid = grid
        stride = min(
            [b - a for a, b in zip(grid.ys, grid.ys[1:], strict=False)]
            + [b - a for a, b in zip(grid.xs, grid.xs[1:], strict=False)]
            + [grid.tile]
        )
        self._reach = math.ceil(grid.tile / max(stride, 1))  # tiles this far apart may overlap
        self._claims: dict[tuple[int, int], list[tuple[int, int, np.ndarray]]] = {}
        self._last = (-1, -1)
        self._row = -1
        self.next_id = 1

    def add(self, row: int, col: int, tile_labels, scores, classes) -> list[Nucleus]:
        """The nuclei tile (row, col) owns, minus pixels of earlier nuclei.

        Args:
          tile_labels: int (TILE, TILE), detection d is label d + 1; scores, classes: (D,).
        """
        row, col = int(row), int(col)
        if (row, col) <= self._last:
            raise ValueError(f"tile {(row, col)} after {self._last}: tiles must come in raster order")
        self._last = (row, col)
        y, x = self.grid.origin(row, col)
        tile = self.grid.tile
        if row != self._row:  # the raster has moved past the rows above reach: forget their nuclei
            self._row = row
            for key in [k for k in self._claims if k[0] < row - self._reach]:
                del self._claims[key]
        near = [
            claim
            for r in range(row - self._reach, row + 1)
            for c in range(col - self._reach, col + self._reach + 1)
            for claim in self._claims.get((r, c), ())
        ]
        tile_labels = np.asarray(tile_labels)
        out, claims = [], []
        for ident in owned_ids(tile_labels, (y, x), self.grid.y_cores[row], self.grid.x_cores[col]):
            mask = tile_labels == ident
            for cy, cx, cmask in near:
                ya, xa = max(cy, y), max(cx, x)
                yb, xb = min(cy + cmask.shape[0], y + tile), min(cx + cmask.shape[1], x + tile)
                if ya < yb and xa < xb:
                    mask[ya - y : yb - y, xa - x : xb - x] &= ~cmask[ya - cy : yb - cy, xa - cx : xb - cx]
            cropped = _crop(mask, y, x)
            if cropped is None:
                continue  # every pixel was an earlier nucleus's
            y0, x0, crop = cropped
            out.append(
                Nucleus(
                    self.next_id, int(classes[ident - 1]), float(scores[ident - 1]), int(y0), int(x0), crop
                )
            )
            self.next_id += 1
            later_row = row + 1 < len(self.grid.ys) and y0 + crop.shape[0] > self.grid.ys[row + 1]
            later_col = col + 1 < len(self.grid.xs) and x0 + crop.shape[1] > self.grid.xs[col + 1]
            if later_row or later_col:  # a later tile may hold a nucleus overlapping this one
                claims.append((int(y0), int(x0), crop))
        if claims:
            self._claims[(row, col)] = claims
        return out


def outline(mask: np.ndarray) -> np.ndarray:
    """float64 (K, 2) closed ring (first point = last) of (x, y) points around a bool (h, w) mask.

    The marching-squares contour at 0.5 (through the midpoints of the edges between inside and outside
    pixel centres), in the mask's pixel-edge coordinates (pixel (0, 0) spans [0, 1)), of its largest
    part; holes are left out. Collinear points are dropped; the ring is counter-clockwise by the shoelace
    sign on (x, y) (RFC 7946's rule for exterior rings) and never crosses itself.
    """
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.float32), 1)
    rings = find_contours(padded, 0.5)
    best, best_area = None, -1.0
    for ring in rings:
        if len(ring) < 4:
            continue
        area = abs(_signed_area(ring[:, 1], ring[:, 0]))
        if area > best_area:
            best, best_area = ring, area
    if best is None:  # cannot happen for a non-empty mask; kept for a clear error
        raise ValueError(f"no outline for a mask of {int(mask.sum())} pixels")
    points = best[:, ::-1] - 0.5  # (x, y) in padded index -> pixel-edge coordinates of the mask
    points = _drop_collinear(points)
    if _signed_area(points[:, 0], points[:, 1]) < 0:
        points = points[::-1]
    return points


def _signed_area(x: np.ndarray, y: np.ndarray) -> float:
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """A closed ring without its points that lie on the line through their neighbours."""
    core = ring[:-1]
    before, after = np.roll(core, 1, axis=0), np.roll(core, -1, axis=0)
    cross = (core[:, 0] - before[:, 0]) * (after[:, 1] - core[:, 1]) - (core[:, 1] - before[:, 1]) * (
        after[:, 0] - core[:, 0]
    )
    kept = core[np.abs(cross) > 1e-9]
    return np.concatenate([kept, kept[:1]])
