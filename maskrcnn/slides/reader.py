"""Reading whole-slide images through OpenSlide: the pyramid, its resolution, tiles at the model's resolution.

Coordinates: *level-0 pixels* are the slide's full-resolution pixels (what QuPath shows); *model pixels*
are pixels of the slide resampled to the resolution the model was trained at (``model_mpp``, PanNuke's
0.25 um/px at 40x). ``scale`` = level-0 pixels per model pixel = ``model_mpp / slide_mpp``; a point
(y, x) in model pixels is (y * scale, x * scale) in level-0 pixels. Both are on pixel edges: pixel row 3
spans [3, 4).
"""

from __future__ import annotations

import math
import os

import numpy as np

# Whole-slide formats (OpenSlide's): files with these suffixes are slides. TIFFs are slides when
# OpenSlide recognises them (tiled TIFFs: Aperio, generic pyramidal, ...); strip TIFFs stay plain images
# (:func:`is_slide`).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
TIFF_SUFFIXES = (".tif", ".tiff")
# A level-0 resolution outside this range is not a microscope's (a TIFF's 72-dpi default reads as 352.8
# um/px): it is treated as unknown. 0.05 um/px is past any scanner's 100x; 16 um/px is a 0.6x overview.
PLAUSIBLE_MPP = (0.05, 16.0)
# OpenSlide's decoded-tile cache per open slide. Model tiles overlap, so a cache of a few rows of
# OpenSlide tiles saves decoding them twice; it is the reader's only memory that is not per batch.
CACHE_BYTES = 32 * 2**20


class SlideError(ValueError):
    """A slide that cannot be used (unreadable, no resolution, ...), with the file named and the fix."""


def is_slide(path: str) -> bool:
    """Whether ``path`` is read as a whole-slide image (else it is a plain image for ``predict``)."""
    lower = path.lower()
    if lower.endswith(SLIDE_SUFFIXES):
        return True
    if lower.endswith(TIFF_SUFFIXES):
        import openslide

        try:
            return openslide.OpenSlide.detect_format(path) is not None
        except Exception:  # unreadable header: left to the image reader, which names the file
            return False
    return False


def _to_rgb(region) -> np.ndarray:
    """uint8 (h, w, 3) from an OpenSlide RGBA region (not premultiplied), transparent parts white."""
    rgba = np.asarray(region)
    alpha = rgba[..., 3:4]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    return ((rgba[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class Slide:
    """An open slide: its pyramid, the level-0 resolution, and region reads as uint8 RGB.

    Args:
      path: a file OpenSlide reads.
      mpp: level-0 microns per pixel; overrides the slide's metadata (for slides that lack it).

    Raises:
      SlideError when OpenSlide cannot open the file, or neither the metadata nor ``mpp`` gives a
      plausible resolution.
    """

    def __init__(self, path: str, mpp: float | None = None):
        import openslide

        self.path = path
        self.name = os.path.basename(path)
        try:
            self._slide = openslide.OpenSlide(path)
        except Exception as error:  # OpenSlideError, OpenSlideUnsupportedFormatError, OSError
            raise SlideError(
                f"{path}: OpenSlide cannot open it ({type(error).__name__}: {error}); is it a whole slide "
                "in a format OpenSlide reads (.svs, tiled pyramidal .tif, .ndpi, .mrxs, .scn, ...)?"
            ) from None
        self.set_cache(CACHE_BYTES)
        self.dimensions = tuple(int(v) for v in self._slide.dimensions)  # (width, height) of level 0
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        self.vendor = self._slide.properties.get("openslide.vendor")
        self.mpp = self._resolution(mpp)

    def _resolution(self, mpp: float | None) -> float:
        if mpp is not None:
            if not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
                raise SlideError(f"--mpp {mpp}: must be in {PLAUSIBLE_MPP} microns per pixel")
            return float(mpp)
        props = self._slide.properties
        values = []
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            try:
                values.append(float(props[key]))
            except (KeyError, ValueError):
                pass
        if not values:
            raise SlideError(
                f"{self.path} has no microns-per-pixel in its metadata; pass --mpp (0.25 for a 40x scan, "
                "0.5 for 20x)"
            )
        value = sum(values) / len(values)
        if not PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]:
            raise SlideError(
                f"{self.path} reports {value:.4g} microns per pixel, which is no microscope's resolution (a "
                "TIFF's default 72 dpi reads as 352.8); pass --mpp with the scan's real resolution"
            )
        return value

    def set_cache(self, capacity: int):
        """Gives OpenSlide a fresh decoded-tile cache of ``capacity`` bytes (the old one is freed)."""
        import openslide

        if hasattr(openslide, "OpenSlideCache"):  # OpenSlide >= 4.0
            self._slide.set_cache(openslide.OpenSlideCache(capacity))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return self.dimensions[1], self.dimensions[0]

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """uint8 (height, width, 3) of ``level`` from its pixel (y, x); outside the slide is white.

        Raises:
          SlideError naming the slide when OpenSlide fails to decode the region (a corrupt tile).
        """
        ds = self.level_downsamples[level]
        location = (int(round(x * ds)), int(round(y * ds)))
        try:
            region = self._slide.read_region(location, level, (int(width), int(height)))
        except Exception as error:
            raise SlideError(
                f"{self.path}: reading level {level} at level-0 ({location[1]}, {location[0]}) failed "
                f"({type(error).__name__}: {error}); the file is damaged"
            ) from None
        return _to_rgb(region)

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (1e-3 relative slack)."""
        fits = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-3)]
        return max(fits, key=lambda i: self.level_downsamples[i]) if fits else 0

    def close(self):
        self._slide.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ModelResolution:
    """Tiles of a slide at the model's resolution, from the pyramid level nearest above it.

    ``scale`` is level-0 pixels per model pixel; ``level`` the level read, ``factor`` its pixels per model
    pixel (1 when the level is at the model's resolution; below 1 when the slide is coarser than the
    model, e.g. 0.5 for a 20x slide and a 40x model). ``size`` is (height, width) of the slide in model
    pixels.
    """

    def __init__(self, slide: Slide, model_mpp: float):
        self.slide = slide
        self.scale = model_mpp / slide.mpp
        self.level = slide.best_level(self.scale)
        self.factor = self.scale / slide.level_downsamples[self.level]
        if abs(self.factor - 1) < 1e-3:
            self.factor = 1.0
        height, width = slide.size
        self.size = (
            max(1, math.ceil(height / self.scale - 1e-6)),
            max(1, math.ceil(width / self.scale - 1e-6)),
        )

    def read_tile(self, y: int, x: int, tile: int) -> np.ndarray:
        """uint8 (tile, tile, 3): model pixels [y, y + tile) x [x, x + tile), resampled bilinearly."""
        f = self.factor
        if f == 1.0:
            return self.slide.read(self.level, y, x, tile, tile)
        from PIL import Image

        y0, x0 = math.floor(y * f) - 1, math.floor(x * f) - 1
        y1, x1 = math.ceil((y + tile) * f) + 1, math.ceil((x + tile) * f) + 1
        region = Image.fromarray(self.slide.read(self.level, y0, x0, y1 - y0, x1 - x0))
        box = (x * f - x0, y * f - y0, (x + tile) * f - x0, (y + tile) * f - y0)
        return np.asarray(region.resize((tile, tile), Image.Resampling.BILINEAR, box=box))


def read_thumbnail(slide: Slide, downsample: float, block: int = 1024) -> np.ndarray:
    """uint8 (ceil(H / downsample), ceil(W / downsample), 3): the slide at ``downsample`` level-0 pixels
    per pixel (H, W: level 0), read from the coarsest level at least that fine in blocks of about
    ``block`` level pixels, so that a slide without a pyramid is never read whole into memory. Each tile
    of that level is decoded once, so OpenSlide's cache is off meanwhile (it would only fill with them).
    """
    slide.set_cache(0)
    thumbnail = _read_thumbnail(slide, downsample, block)  # after an OpenSlide error the slide is done for
    slide.set_cache(CACHE_BYTES)
    return thumbnail


def _read_thumbnail(slide: Slide, downsample: float, block: int) -> np.ndarray:
    from PIL import Image

    level = slide.best_level(downsample)
    s = slide.level_downsamples[level] / downsample  # thumbnail pixels per level pixel, <= 1
    height, width = slide.size
    out_h, out_w = max(1, math.ceil(height / downsample)), max(1, math.ceil(width / downsample))
    thumb = np.full((out_h, out_w, 3), 255, np.uint8)
    step = max(1, math.floor(block * s))  # thumbnail pixels per block
    for ty0 in range(0, out_h, step):
        ty1 = min(out_h, ty0 + step)
        ry0, ry1 = math.floor(ty0 / s), math.ceil(ty1 / s)
        for tx0 in range(0, out_w, step):
            tx1 = min(out_w, tx0 + step)
            rx0, rx1 = math.floor(tx0 / s), math.ceil(tx1 / s)
            region = Image.fromarray(slide.read(level, ry0, rx0, ry1 - ry0, rx1 - rx0))
            box = (tx0 / s - rx0, ty0 / s - ry0, tx1 / s - rx0, ty1 / s - ry0)
            thumb[ty0:ty1, tx0:tx1] = np.asarray(
                region.resize((tx1 - tx0, ty1 - ty0), Image.Resampling.BOX, box=box)
            )
    return thumb
