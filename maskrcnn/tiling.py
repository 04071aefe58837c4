"""Images of any size through a model that takes fixed tiles: the tile grid, which tile owns each nucleus,
and stitching, shared by ``maskrcnn predict`` (:mod:`maskrcnn.predict`) and the slide path
(:mod:`maskrcnn.slides`).

Tiles are ``TILE`` px (PanNuke's patch) at the training resolution (``data.mpp``); the model resizes
each by ``data.scale``. Each tile keeps only the nuclei whose centroid lies in its *core*: the tile minus
half the overlap on every side that borders another tile. The cores partition the image, so every nucleus
is kept by exactly one tile, and a nucleus smaller than half the overlap is whole in that tile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage

from maskrcnn.pannuke import PATCH_SIZE

TILE = PATCH_SIZE  # PanNuke's patch: tiles are cut at data.mpp, then resized by data.scale


def tile_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` px covering [0, size) with at least ``overlap`` px between neighbours."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(size - tile) // stride) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def tile_cores(origins: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """The part ``[lo, hi)`` of each tile that it owns: halfway into every overlap with a neighbour.

    The cores of :func:`tile_origins`' tiles partition ``[0, size)``.
    """
    bounds = []
    for i, start in enumerate(origins):
        lo = 0 if i == 0 else (origins[i - 1] + tile + start) // 2
        hi = size if i == len(origins) - 1 else (start + tile + origins[i + 1]) // 2
        bounds.append((lo, hi))
    return bounds


def owned_ids(
    tile_labels: np.ndarray, origin: tuple[int, int], y_core: tuple[int, int], x_core: tuple[int, int]
) -> np.ndarray:
    """The instance ids of one tile that the tile owns: those whose centroid lies in its core.

    Args:
      tile_labels: int (TILE, TILE) label map of the tile (0 background).
      origin: (y, x) of the tile's top-left pixel in the image.
      y_core, x_core: the tile's core ``[lo, hi)`` along each axis, in image pixels (:func:`tile_cores`).

    Returns:
      int (n,) the owned ids, ascending.
    """
    ids = np.unique(tile_labels)
    ids = ids[ids > 0]
    if not len(ids):
        return ids
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(tile_labels), tile_labels, ids)).reshape(-1, 2)
    gy, gx = centres[:, 0] + origin[0], centres[:, 1] + origin[1]
    inside = (y_core[0] <= gy) & (gy < y_core[1]) & (x_core[0] <= gx) & (gx < x_core[1])
    return ids[inside]


def segment_large(
    image: np.ndarray,
    predict_tiles: Callable[[np.ndarray], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    *,
    overlap: int = 64,
    batch: int = 8,
) -> tuple[np.ndarray, list[dict]]:
    """Segments an image of any size with a tile predictor and stitches the nuclei.

    Args:
      image: uint8 (H, W, 3) at the model's resolution (smaller images are padded with white).
      predict_tiles: uint8 (N, TILE, TILE, 3) -> per tile (labels int (TILE, TILE), scores (D,), classes
        (D,)) where label d + 1 is detection d.
      overlap: pixels shared by neighbouring tiles; nuclei up to half of it across are never cut.

    Returns:
      int32 (H, W) label map (ids 1..n) and one dict per instance: id, class, score.
    """
    height, width = image.shape[:2]
    padded_h, padded_w = max(height, TILE), max(width, TILE)
    canvas = np.full((padded_h, padded_w, 3), 255, np.uint8)
    canvas[:height, :width] = image
    ys, xs = tile_origins(padded_h, TILE, overlap), tile_origins(padded_w, TILE, overlap)
    y_cores, x_cores = tile_cores(ys, TILE, padded_h), tile_cores(xs, TILE, padded_w)
    jobs = [
        (y, x, yc, xc) for y, yc in zip(ys, y_cores, strict=True) for x, xc in zip(xs, x_cores, strict=True)
    ]
    labels = np.zeros((padded_h, padded_w), np.int32)
    instances = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        tiles = np.stack([canvas[y : y + TILE, x : x + TILE] for y, x, _, _ in chunk])
        for (y, x, (y_lo, y_hi), (x_lo, x_hi)), (tile_labels, scores, classes) in zip(
            chunk, predict_tiles(tiles), strict=True
        ):
            for ident in owned_ids(tile_labels, (y, x), (y_lo, y_hi), (x_lo, x_hi)):
                where = (tile_labels == ident) & (labels[y : y + TILE, x : x + TILE] == 0)
                new_id = len(instances) + 1
                labels[y : y + TILE, x : x + TILE][where] = new_id
                instances.append(
                    {"id": new_id, "class": int(classes[ident - 1]), "score": float(scores[ident - 1])}
                )
    return labels[:height, :width], instances


def make_tile_predictor(config, model):
    """A ``predict_tiles`` for :func:`segment_large` from a trained model and its config."""
    from maskrcnn import input_pipeline
    from maskrcnn.inference import make_predict_fn

    size = config.data.image_size  # TILE * data.scale
    predict = make_predict_fn(model, (TILE, TILE), config.data.scale, config.model.mask_threshold)

    def predict_tiles(tiles):
        if size != TILE:
            tiles = np.stack([input_pipeline.resize(t, t[..., 0], t[..., 0], size)[0] for t in tiles])
        out = predict(tiles)
        return [
            (out["labels"][i], out["scores"][i], np.where(out["valid"][i], out["classes"][i], 0))
            for i in range(len(tiles))
        ]

    return predict_tiles
