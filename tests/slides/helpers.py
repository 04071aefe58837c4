"""Slides the tests make themselves, and an oracle tile predictor that reads the nuclei off the pixels.

The synthetic slides are H&E-coloured: pink eosin stroma in tissue patches, white glass elsewhere, and
nuclei drawn as separated discs in two haematoxylin shades (class 1 purple, class 2 blue). Written
losslessly (deflate), so the oracle, which labels the dark pixels' connected parts and tells the class by
colour, is a perfect model whatever the tile or batch it is given.
"""

from __future__ import annotations

import numpy as np
import tifffile
from scipy import ndimage

from maskrcnn.slides import TileModel

GLASS = (250, 250, 250)
EOSIN = (236, 170, 205)
NUCLEUS = {1: (90, 40, 140), 2: (40, 50, 170)}
CLASS_NAMES = ("neoplastic", "inflammatory")


def draw_tissue(rng, height: int, width: int, count: int, radius=(4.0, 11.0), margin: int = 0):
    """A patch of tissue with nuclei: uint8 (height, width, 3), int32 truth labels (ids 1..n), and the
    class (1 or 2) of each id (dict). Discs are at least 2 px apart and ``margin`` px inside the patch."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = EOSIN
    labels = np.zeros((height, width), np.int32)
    classes = {}
    grown = np.zeros((height, width), bool)  # the discs grown by 2.5 px: new discs keep out of it
    for _ in range(count * 20):
        if len(classes) == count:
            break
        r = rng.uniform(*radius)
        cy = rng.uniform(r + margin, height - r - margin)
        cx = rng.uniform(r + margin, width - r - margin)
        y0, x0 = max(0, int(cy - r - 4)), max(0, int(cx - r - 4))
        y1, x1 = min(height, int(cy + r + 5)), min(width, int(cx + r + 5))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        distance = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2
        disc = distance <= r * r
        if grown[y0:y1, x0:x1][disc].any():
            continue
        ident = len(classes) + 1
        classes[ident] = int(rng.integers(1, 3))
        labels[y0:y1, x0:x1][disc] = ident
        image[y0:y1, x0:x1][disc] = NUCLEUS[classes[ident]]
        grown[y0:y1, x0:x1] |= distance <= (r + 2.5) ** 2
    return image, labels, classes


def oracle_labels(tile: np.ndarray):
    """What a perfect model predicts for one uint8 (H, W, 3) tile: labels, scores, classes."""
    dark = tile.astype(np.int16).sum(-1) < 400
    labels, count = ndimage.label(dark)
    if count == 0:
        return labels, np.zeros(0, np.float32), np.zeros(0, np.int32)
    ids = np.arange(1, count + 1)
    blue = ndimage.mean(tile[..., 2].astype(np.float32) - tile[..., 0], labels, ids)
    classes = np.where(np.asarray(blue) > 90, 2, 1).astype(np.int32)
    areas = ndimage.sum(np.ones_like(labels), labels, ids)
    scores = (0.5 + (np.asarray(areas) % 50) / 100).astype(np.float32)
    return labels, scores, classes


class PixelOracle:
    """A tile predictor: :func:`oracle_labels` per tile. Records what it was sent (``tiles_seen``, the
    number of tiles, and ``blank_tiles``, those with no coloured pixel)."""

    def __init__(self):
        self.tiles_seen = 0
        self.blank_tiles = 0
        self.calls = 0

    def __call__(self, tiles):
        self.calls += 1
        out = []
        for tile in tiles:
            self.tiles_seen += 1
            if (tile.max(-1).astype(int) - tile.min(-1) < 10).all():
                self.blank_tiles += 1
            out.append(oracle_labels(tile))
        return out


def oracle_model() -> TileModel:
    """A picklable model factory for cohorts and cluster workers."""
    return TileModel(PixelOracle(), CLASS_NAMES, 0.25)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """uint8 image reduced by an integer ``factor`` with box averaging (PIL's reduce)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).reduce(factor)) if factor > 1 else image


def write_pyramid(
    path: str, image: np.ndarray, mpp: float | None, *, tile: int = 256, levels: int = 3, description=None
):
    """A tiled, deflate-compressed pyramidal TIFF: level k is ``image`` reduced 2**k (separate pages, as
    OpenSlide's generic-tiff and Aperio readers take them), resolution tags in pixels per centimetre."""
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k in range(levels):
            level = downsample(image, 2**k)
            extra = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * 2**k),) * 2, "resolutionunit": "CENTIMETER"}
            tw.write(
                level,
                tile=(tile, tile),
                compression="zlib",
                photometric="rgb",
                subfiletype=1 if k else 0,
                description=description if k == 0 else None,
                metadata=None,
                **extra,
            )


def aperio_description(width: int, height: int, mpp: float) -> str:
    """An Aperio ImageDescription (OpenSlide recognises .svs files by it and reads ``MPP``)."""
    return (
        f"Aperio Image Library v12.0.15 \n{width}x{height} [0,0 {width}x{height}] (256x256) -> "
        f"{width}x{height} RAW|AppMag = {round(10 / mpp)}|MPP = {mpp}|ScanScope ID = TEST"
    )


def write_sparse_slide(path: str, size: int, patches, mpp: float = 0.25, *, tile: int = 512, levels: int = 5):
    """A ``size`` x ``size`` pyramidal TIFF of white glass with ``patches`` [(y, x, uint8 (h, w, 3))]
    pasted in, written tile by tile (memory does not depend on ``size``). Tiles are deflated here and
    handed to tifffile encoded: the glass tile, the same every time, is compressed once."""
    import zlib

    white = np.full((tile, tile, 3), 255, np.uint8)
    white_bytes = zlib.compress(white.tobytes())

    def tiles(k):
        f = 2**k
        scaled = [(y // f, x // f, downsample(p, f)) for y, x, p in patches]
        h = w = -(-size // f)
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                out = None
                for y, x, p in scaled:
                    ya, xa = max(y, ty), max(x, tx)
                    yb, xb = min(y + p.shape[0], ty + tile), min(x + p.shape[1], tx + tile)
                    if ya < yb and xa < xb:
                        out = white.copy() if out is None else out
                        out[ya - ty : yb - ty, xa - tx : xb - tx] = p[ya - y : yb - y, xa - x : xb - x]
                yield white_bytes if out is None else zlib.compress(out.tobytes())

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k in range(levels):
            side = -(-size // 2**k)
            tw.write(
                tiles(k),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="zlib",
                photometric="rgb",
                subfiletype=1 if k else 0,
                resolution=(1e4 / (mpp * 2**k),) * 2,
                resolutionunit="CENTIMETER",
                metadata=None,
            )
