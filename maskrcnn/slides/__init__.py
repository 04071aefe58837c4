"""Whole-slide images: a gigapixel slide streamed through the model, nuclei written as QuPath GeoJSON.

slide file (OpenSlide) -> tissue mask on a low level (:mod:`.tissue`) -> tiles at the model's resolution
read ahead by threads (:mod:`.reader`) -> jitted batch prediction -> nuclei kept by the tile that owns
their centre (:mod:`.stitch`) -> polygons and rows streamed to GeoJSON / CSV (:mod:`.writers`), all at
once (:mod:`.pipeline`); a cohort runs slide after slide or on a Dask cluster (:mod:`.cohort`).
"""

from maskrcnn.slides.cohort import SlideResult, run_cohort, run_slide
from maskrcnn.slides.pipeline import PANNUKE_MPP, SlideOptions, TileModel, load_tile_model, segment_slide
from maskrcnn.slides.reader import SLIDE_SUFFIXES, ModelResolution, Slide, SlideError, is_slide
from maskrcnn.slides.stitch import Nucleus, Stitcher, TileGrid, outline
from maskrcnn.slides.writers import output_paths

__all__ = [
    "PANNUKE_MPP",
    "SLIDE_SUFFIXES",
    "ModelResolution",
    "Nucleus",
    "Slide",
    "SlideError",
    "SlideOptions",
    "SlideResult",
    "Stitcher",
    "TileGrid",
    "TileModel",
    "is_slide",
    "load_tile_model",
    "outline",
    "output_paths",
    "run_cohort",
    "run_slide",
    "segment_slide",
]
