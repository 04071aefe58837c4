"""Opening slides (real-format fixtures and slides made here), their resolution, tiles, thumbnail, tissue."""

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from maskrcnn.slides import ModelResolution, Slide, SlideError, is_slide
from maskrcnn.slides.reader import read_thumbnail
from maskrcnn.slides.tissue import tiles_with_tissue, tissue_mask
from tests.slides.helpers import EOSIN, GLASS, aperio_description, downsample, write_pyramid

WSI = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "wsi")
needs_fixtures = pytest.mark.skipif(not os.path.isdir(WSI), reason="../shared/data/wsi is not here")


def smooth_image(height, width):
    """uint8 (height, width, 3) smooth colour ramps (resampling errors stay small)."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    return np.stack(
        [100 + 100 * yy / height, 60 + 150 * xx / width, 120 + 60 * np.sin(yy / 40) * np.cos(xx / 50)], -1
    ).astype(np.uint8)


@needs_fixtures
def test_real_format_fixtures():
    svs = Slide(os.path.join(WSI, "small.svs"))
    assert svs.vendor == "aperio" and svs.size == (16, 16) and svs.mpp == pytest.approx(0.499)
    assert svs.read(0, 0, 0, 16, 16).shape == (16, 16, 3)
    with pytest.raises(SlideError, match=r"unopenable.tiff: OpenSlide cannot open it"):
        Slide(os.path.join(WSI, "unopenable.tiff"))
    bad = Slide(os.path.join(WSI, "unreadable.svs"))  # the header is fine, a tile is corrupt
    with pytest.raises(SlideError, match=r"unreadable.svs: reading level 0 .* the file is damaged"):
        bad.read(0, 0, 0, 16, 16)
    # boxes.tiff carries TIFF's default 72 dpi: not a microscope's resolution, so --mpp is asked for.
    with pytest.raises(SlideError, match=r"boxes.tiff reports 352.8 microns per pixel.*pass --mpp"):
        Slide(os.path.join(WSI, "boxes.tiff"))
    boxes = Slide(os.path.join(WSI, "boxes.tiff"), mpp=0.5)
    assert boxes.mpp == 0.5 and len(boxes.level_downsamples) == 4 and boxes.size == (250, 300)
    assert all(is_slide(os.path.join(WSI, f)) for f in os.listdir(WSI) if not f.endswith(".md"))


def test_slides_and_plain_images_are_told_apart(tmp_path):
    image = smooth_image(300, 300)
    tifffile.imwrite(tmp_path / "strips.tif", image)  # a plain TIFF: predict's image path
    write_pyramid(str(tmp_path / "pyramid.tif"), image, 0.25)
    Image.fromarray(image).save(tmp_path / "a.png")
    assert not is_slide(str(tmp_path / "strips.tif")) and not is_slide(str(tmp_path / "a.png"))
    assert is_slide(str(tmp_path / "pyramid.tif")) and is_slide(str(tmp_path / "missing.svs"))


def test_resolution_from_the_metadata_or_mpp(tmp_path):
    image = smooth_image(300, 400)
    write_pyramid(str(tmp_path / "none.tif"), image, None)
    with pytest.raises(SlideError, match=r"none.tif has no microns-per-pixel in its metadata; pass --mpp"):
        Slide(str(tmp_path / "none.tif"))
    assert Slide(str(tmp_path / "none.tif"), mpp=0.25).mpp == 0.25
    with pytest.raises(SlideError, match=r"--mpp 100"):
        Slide(str(tmp_path / "none.tif"), mpp=100)
    path = str(tmp_path / "aperio.svs")
    write_pyramid(path, image, None, description=aperio_description(400, 300, 0.4952))
    slide = Slide(path)
    assert slide.vendor == "aperio" and slide.mpp == pytest.approx(0.4952)
    assert Slide(path, mpp=0.25).mpp == 0.25  # --mpp overrides the metadata


def test_the_level_nearest_above_the_model_resolution_is_read(tmp_path):
    image = smooth_image(1024, 768)
    path = str(tmp_path / "s.tif")
    write_pyramid(path, image, 0.125, levels=3)  # 80x: levels at 0.125, 0.25, 0.5 um/px
    res = ModelResolution(Slide(path), 0.25)
    assert (res.scale, res.level, res.factor, res.size) == (2.0, 1, 1.0, (512, 384))
    np.testing.assert_array_equal(res.read_tile(100, 50, 256), downsample(image, 2)[100:356, 50:306])
    res = ModelResolution(Slide(path), 0.3)  # between levels: level 1 (0.25), resampled by 1.2
    assert res.level == 1 and res.factor == pytest.approx(1.2)
    # A 20x slide for a 40x model: level 0, upsampled 2x; tiles past the edge are white.
    write_pyramid(path, image, 0.5, levels=2)
    res = ModelResolution(Slide(path), 0.25)
    assert (res.scale, res.level, res.factor, res.size) == (0.5, 0, 0.5, (2048, 1536))
    tile = res.read_tile(400, 600, 256).astype(int)
    expected = np.asarray(Image.fromarray(image[200:328, 300:428]).resize((256, 256), Image.BILINEAR))
    assert np.abs(tile[8:-8, 8:-8] - expected[8:-8, 8:-8]).mean() < 2
    assert (res.read_tile(2000, 1500, 256)[100:, 100:] == 255).all()


def test_thumbnail_is_read_in_blocks_without_seams(tmp_path):
    image = smooth_image(700, 900)
    path = str(tmp_path / "s.tif")
    write_pyramid(path, image, 0.25, levels=2)
    slide = Slide(path)
    thumb = read_thumbnail(slide, 3.0, block=128)  # level 1 (2x) reduced by 1.5, in 128 px blocks
    assert thumb.shape == (234, 300, 3)
    expected = np.asarray(Image.fromarray(image).resize((300, 234), Image.BOX)).astype(int)
    assert np.abs(thumb.astype(int) - expected)[:-2, :-2].max() < 12
    single = read_thumbnail(slide, 3.0, block=4096)
    assert np.abs(thumb.astype(int) - single).max() <= 2


def test_tissue_mask_finds_stained_tissue_not_glass():
    rng = np.random.default_rng(0)
    thumb = np.empty((100, 120, 3), np.uint8)
    thumb[:] = GLASS
    thumb[20:50, 30:80] = EOSIN
    thumb = np.clip(thumb + rng.normal(0, 3, thumb.shape), 0, 255).astype(np.uint8)
    mask = tissue_mask(thumb)
    assert mask[20:50, 30:80].all() and not mask[:18].any() and not mask[:, 82:].any()
    assert not tissue_mask(np.full((50, 50, 3), 255, np.uint8)).any()  # all glass
    assert tissue_mask(np.broadcast_to(np.uint8(EOSIN), (50, 50, 3)).copy()).all()  # all tissue
    assert not tissue_mask(np.zeros((20, 20, 3), np.uint8)).any()  # out-of-scan black


def test_tiles_with_tissue():
    mask = np.zeros((40, 40), bool)
    mask[10, 30] = True  # model pixels [40, 44) x [120, 124) at 4 model px per mask pixel
    keep = tiles_with_tissue(mask, 4.0, [0, 30, 60, 90], [0, 50, 100], 32)
    assert keep.sum() == 1 and keep[1, 2]
