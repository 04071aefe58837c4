"""Streaming stitching equals predict.segment_large's; nucleus outlines are valid polygons."""

import numpy as np
import pytest
import shapely
from scipy import ndimage

from maskrcnn.slides import Stitcher, TileGrid, outline
from maskrcnn.tiling import TILE, segment_large


def coordinate_image(height, width):
    """uint8 (H, W, 3) whose pixel (y, x) spells its own coordinates (up to 4096 px)."""
    yy, xx = np.mgrid[:height, :width]
    return np.stack([yy & 255, xx & 255, ((yy >> 8) << 4) | (xx >> 8)], -1).astype(np.uint8)


def clumsy_model(tile):
    """A deterministic 'model' whose detections depend on where the tile is and disagree between
    overlapping tiles, so that nuclei kept by neighbouring tiles overlap (the first keeps the pixels)."""
    y = int(tile[0, 0, 0]) | (int(tile[0, 0, 2]) >> 4) << 8
    x = int(tile[0, 0, 1]) | (int(tile[0, 0, 2]) & 15) << 8
    rng = np.random.default_rng(y * 4096 + x)
    labels = np.zeros((TILE, TILE), np.int32)
    yy, xx = np.mgrid[:TILE, :TILE]
    count = int(rng.integers(20, 80))
    for d in range(count):
        r = rng.uniform(3, 14)
        cy, cx = rng.uniform(-5, TILE + 5, 2)
        labels[((yy - cy) ** 2 + ((xx - cx) / rng.uniform(0.6, 1.6)) ** 2 <= r * r) & (labels == 0)] = d + 1
    return labels, rng.uniform(0.3, 1, count), rng.integers(1, 4, count)


def predict_tiles(tiles):
    return [clumsy_model(t) for t in tiles]


@pytest.mark.parametrize("shape,overlap", [((700, 530), 64), ((256, 900), 100), ((600, 600), 0)])
def test_streamed_nuclei_equal_segment_large(shape, overlap):
    image = coordinate_image(*shape)
    expected, instances = segment_large(image, predict_tiles, overlap=overlap, batch=3)
    grid = TileGrid(shape, overlap)
    stitcher = Stitcher(grid)
    got = np.zeros(shape, np.int32)
    nuclei = []
    for row in range(len(grid.ys)):
        for col in range(len(grid.xs)):
            y, x = grid.origin(row, col)
            tile = image[y : y + TILE, x : x + TILE]
            for n in stitcher.add(row, col, *clumsy_model(tile)):
                region = got[n.y0 : n.y0 + n.mask.shape[0], n.x0 : n.x0 + n.mask.shape[1]]
                assert not (region[n.mask] > 0).any(), "stitched nuclei never overlap"
                region[n.mask] = n.id
                nuclei.append(n)
    kept = [r for r in instances if (expected == r["id"]).any()]
    assert len(nuclei) == len(kept) > 50
    for n, r in zip(nuclei, kept, strict=True):  # same order, pixels, class and score
        np.testing.assert_array_equal(got == n.id, expected == r["id"])
        assert (n.cls, n.score) == (r["class"], r["score"])
    if overlap:  # neighbours' nuclei overlapped, so the first-come rule was exercised
        assert sum(n.area for n in nuclei) < sum(owned_area(image, grid))
    # Only the last rows' border nuclei are still remembered: memory is about one row of tiles.
    assert {r for r, _ in stitcher._claims} <= set(range(len(grid.ys) - 1 - stitcher._reach, len(grid.ys)))


def owned_area(image, grid):
    """Pixels of every owned detection before overlaps are resolved."""
    from maskrcnn.tiling import owned_ids

    for row in range(len(grid.ys)):
        for col in range(len(grid.xs)):
            y, x = grid.origin(row, col)
            labels = clumsy_model(image[y : y + TILE, x : x + TILE])[0]
            for ident in owned_ids(labels, (y, x), grid.y_cores[row], grid.x_cores[col]):
                yield int((labels == ident).sum())


def test_an_earlier_nucleus_keeps_the_pixels_it_shares():
    grid = TileGrid((256, 448), 64)  # two tiles: x 0 and 192, cores split at x = 224
    first = np.zeros((TILE, TILE), np.int32)
    first[100:120, 200:223] = 1  # centroid x 211: owned by tile 0
    second = np.zeros((TILE, TILE), np.int32)
    second[100:120, 20:45] = 1  # global x 212..236, centroid 224: owned by tile 1, overlaps the first
    stitcher = Stitcher(grid)
    (a,) = stitcher.add(0, 0, first, [0.9], [1])
    (b,) = stitcher.add(0, 1, second, [0.8], [2])
    assert (a.area, b.area) == (20 * 23, 20 * 14)  # the second lost x 212..222
    assert b.x0 == 223 and b.box == (100, 223, 120, 237)
    assert b.centroid == (110.0, 230.0)
    with pytest.raises(ValueError, match="raster order"):
        stitcher.add(0, 0, first, [0.9], [1])


def masks():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:30, :30]
    out = [np.ones((1, 1), bool), np.ones((3, 7), bool), np.eye(4, dtype=bool)]
    l_shape = np.zeros((10, 10), bool)
    l_shape[:, :3] = l_shape[7:, :] = True
    out.append(l_shape)
    for _ in range(12):
        cy, cx, a, b = rng.uniform(8, 22), rng.uniform(8, 22), rng.uniform(1, 8), rng.uniform(1, 8)
        blob = ((yy + 0.5 - cy) / a) ** 2 + ((xx + 0.5 - cx) / b) ** 2 <= 1 + 0.3 * rng.standard_normal(
            (30, 30)
        )
        out.append(blob)
    return out


@pytest.mark.parametrize("mask", masks())
def test_outline_is_a_valid_ring_around_the_largest_part(mask):
    if not mask.any():
        pytest.skip("empty draw")
    ring = outline(mask)
    assert ring.shape[1] == 2 and (ring[0] == ring[-1]).all() and len(ring) >= 4
    polygon = shapely.Polygon(ring)
    assert polygon.is_valid and polygon.area > 0
    # RFC 7946: exterior counter-clockwise by the shoelace sign on the raw (x, y) numbers.
    x, y = ring[:, 0], ring[:, 1]
    assert np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) > 0
    parts, count = ndimage.label(mask)
    largest = parts == 1 + np.argmax(ndimage.sum(mask, parts, range(1, count + 1)))
    filled = ndimage.binary_fill_holes(largest)
    rows, cols = np.nonzero(np.ones_like(mask))
    inside = shapely.contains_xy(polygon, cols + 0.5, rows + 0.5).reshape(mask.shape)
    np.testing.assert_array_equal(inside, filled)  # every pixel centre of the part in, every other out
