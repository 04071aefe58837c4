"""One slide end to end with an oracle model: the nuclei, the outputs, background skipping, the pipeline."""

import csv
import json
import os
import threading
import time

import numpy as np
import pytest
import shapely
import zarr
from PIL import Image

from maskrcnn.slides import ModelResolution, SlideError, SlideOptions, TileModel, output_paths, segment_slide
from maskrcnn.slides.pipeline import stream_batches
from maskrcnn.tiling import TILE, segment_large
from tests.slides.helpers import (
    CLASS_NAMES,
    GLASS,
    PixelOracle,
    aperio_description,
    draw_tissue,
    write_pyramid,
)

OPTIONS = SlideOptions(progress=False, batch=4)
PATCHES = ((100, 150, 500, 700), (700, 900, 380, 330))  # tissue at (y, x, height, width), level 0


def make_slide(seed=0, size=(1100, 1300), patches=PATCHES, radius=(4.0, 11.0), count=120):
    """uint8 image, int32 truth and the class of each truth id, of glass with tissue ``patches``."""
    rng = np.random.default_rng(seed)
    image = np.empty((*size, 3), np.uint8)
    image[:] = GLASS
    truth = np.zeros(size, np.int32)
    classes = {}
    for y, x, h, w in patches:
        tissue, labels, cls = draw_tissue(rng, h, w, count, radius, margin=2)
        image[y : y + h, x : x + w] = tissue
        offset = truth.max()
        truth[y : y + h, x : x + w] = np.where(labels > 0, labels + offset, 0)
        classes.update({k + offset: v for k, v in cls.items()})
    return image, truth, classes


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    image, truth, classes = make_slide()
    path = str(tmp_path_factory.mktemp("slides") / "s1.tif")
    write_pyramid(path, image, 0.25, levels=3)
    return path, image, truth, classes


def bijection(a, b):
    """Whether label maps ``a`` and ``b`` hold the same regions (ids aside)."""
    pairs = {(int(p), int(q)) for p, q in zip(a.ravel(), b.ravel(), strict=True) if p or q}
    return all(p and q for p, q in pairs) and len(pairs) == len({p for p, _ in pairs}) == len(
        {q for _, q in pairs}
    )


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_nuclei_equal_predict_on_the_region_held_in_memory(slide, tmp_path):
    path, image, truth, classes = slide
    oracle = PixelOracle()
    summary = segment_slide(
        path, "s1", str(tmp_path), TileModel(oracle, CLASS_NAMES), SlideOptions(progress=False, labels=True)
    )
    labels = zarr.open_group(output_paths(str(tmp_path), "s1")["labels"], mode="r")["0"][:]
    in_memory, _ = segment_large(image, PixelOracle(), overlap=64)
    assert labels.shape == truth.shape
    assert bijection(labels, in_memory)  # the same nuclei as predict
    assert bijection(labels, truth)  # every nucleus once and whole, across tile and batch borders
    rows = read_csv(output_paths(str(tmp_path), "s1")["csv"])
    assert summary["nuclei"] == len(rows) == truth.max()
    for row in rows:  # classes follow the truth
        true_id = np.bincount(truth[labels == int(row["id"])]).argmax()
        assert row["class"] == CLASS_NAMES[classes[true_id] - 1]
    counts = {n: sum(c == i + 1 for c in classes.values()) for i, n in enumerate(CLASS_NAMES)}
    assert summary["nuclei_per_class"] == counts
    # The pyramid of the label map: each level half the last, OME-Zarr multiscales.
    group = zarr.open_group(output_paths(str(tmp_path), "s1")["labels"], mode="r")
    assert group["1"].shape == (550, 650) and (group["1"][:] == labels[::2, ::2]).all()
    assert [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]] == ["0", "1", "2"]
    assert summary["tiles_read"] + summary["tiles_skipped_background"] == summary["tiles"]
    assert oracle.tiles_seen == -(-summary["tiles_read"] // 8) * 8  # the last batch padded with its own tiles


def test_geojson_parses_and_each_polygon_is_valid_and_matches_its_csv_row(slide, tmp_path):
    path, *_ = slide
    segment_slide(path, "s1", str(tmp_path), TileModel(PixelOracle(), CLASS_NAMES), OPTIONS)
    paths = output_paths(str(tmp_path), "s1")
    with open(paths["geojson"]) as f:
        collection = json.load(f)
    rows = read_csv(paths["csv"])
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == len(rows) > 100
    ids = set()
    for feature, row in zip(collection["features"], rows, strict=True):
        props = feature["properties"]
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert props["objectType"] == "detection" and props["nucleus_id"] == int(row["id"])
        assert props["classification"]["name"] == row["class"] and len(props["classification"]["color"]) == 3
        assert props["measurements"]["score"] == float(row["score"])
        assert props["measurements"]["area_um2"] == pytest.approx(float(row["area_um2"]))
        assert float(row["area_um2"]) == pytest.approx(float(row["area_px"]) * 0.25**2, abs=1e-3)
        ids.add(feature["id"])
        polygon = shapely.Polygon(feature["geometry"]["coordinates"][0])
        assert polygon.is_valid
        area = float(row["area_px"])
        # The outline runs through the edge midpoints between inside and outside pixel centres.
        assert area - polygon.length / 2 <= polygon.area <= area
        assert polygon.centroid.x == pytest.approx(float(row["centroid_x"]), abs=0.3)
        assert polygon.centroid.y == pytest.approx(float(row["centroid_y"]), abs=0.3)
        x1, y1, x2, y2 = polygon.bounds
        assert (
            float(row["x1"]) <= x1
            and x2 <= float(row["x2"])
            and float(row["y1"]) <= y1 <= y2 <= float(row["y2"])
        )
    assert len(ids) == len(rows)  # QuPath object ids are unique
    thumb = np.asarray(Image.open(paths["thumbnail"]))
    assert thumb.shape == (275, 325, 3) and ((thumb == (255, 0, 0)).all(-1)).any()  # neoplastic in red


def test_background_tiles_are_never_read_nor_sent_to_the_model(slide, tmp_path, monkeypatch):
    path, *_ = slide
    reads = []
    original = ModelResolution.read_tile

    def spy(self, y, x, tile):
        reads.append((y, x))
        return original(self, y, x, tile)

    monkeypatch.setattr(ModelResolution, "read_tile", spy)
    oracle = PixelOracle()
    summary = segment_slide(path, "s1", str(tmp_path), TileModel(oracle, CLASS_NAMES), OPTIONS)
    margin = 16  # the tissue mask's resolution (4 px) and its one-pixel growth, with room
    near = [
        (y, x)
        for y, x in reads
        if any(
            py - margin < y + TILE and y < py + h + margin and px - margin < x + TILE and x < px + w + margin
            for py, px, h, w in PATCHES
        )
    ]
    assert len(reads) == len(near) == summary["tiles_read"]
    assert oracle.tiles_seen == -(-summary["tiles_read"] // OPTIONS.batch) * OPTIONS.batch
    assert summary["tiles_skipped_background"] >= 10 and oracle.blank_tiles == 0
    everything = segment_slide(
        path,
        "all",
        str(tmp_path),
        TileModel(PixelOracle(), CLASS_NAMES),
        SlideOptions(progress=False, tissue_mask=False),
    )
    assert everything["tiles_read"] == everything["tiles"] == summary["tiles"]
    assert everything["nuclei"] == summary["nuclei"]


def test_a_20x_aperio_slide_is_upsampled_to_the_model_and_mapped_back(tmp_path):
    image, truth, _ = make_slide(1, (600, 700), ((50, 60, 450, 560),), radius=(2.5, 5.5), count=90)
    path = str(tmp_path / "scan.svs")
    write_pyramid(path, image, None, levels=2, description=aperio_description(700, 600, 0.5))
    summary = segment_slide(path, "scan", str(tmp_path), TileModel(PixelOracle(), CLASS_NAMES), OPTIONS)
    assert summary["vendor"] == "aperio" and summary["level0_px_per_model_px"] == 0.5
    rows = read_csv(output_paths(str(tmp_path), "scan")["csv"])
    assert len(rows) == truth.max()
    true = {}
    for ident in range(1, truth.max() + 1):
        ys, xs = np.nonzero(truth == ident)
        true[ident] = (xs.mean() + 0.5, ys.mean() + 0.5, len(ys))
    for row in rows:  # level-0 coordinates: each row is one true nucleus, where it is and as large
        cx, cy, area = float(row["centroid_x"]), float(row["centroid_y"]), float(row["area_px"])
        best = min(true.values(), key=lambda t: (t[0] - cx) ** 2 + (t[1] - cy) ** 2)
        assert (
            abs(best[0] - cx) < 0.5 and abs(best[1] - cy) < 0.5 and abs(best[2] - area) <= 0.25 * best[2] + 3
        )
        assert float(row["area_um2"]) == pytest.approx(area * 0.5**2, rel=1e-3, abs=1e-3)


class Failing:
    def __init__(self, after):
        self.after, self.calls = after, 0

    def __call__(self, tiles):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("device lost")
        return PixelOracle()(tiles)


def test_a_slide_that_fails_half_way_leaves_nothing_that_looks_finished(slide, tmp_path):
    path, *_ = slide
    with pytest.raises(RuntimeError, match="device lost"):
        segment_slide(path, "s1", str(tmp_path), TileModel(Failing(2), CLASS_NAMES), OPTIONS)
    assert os.listdir(tmp_path) == []
    # A run killed outright leaves its .partial folder; the next run removes it and finishes.
    os.makedirs(tmp_path / ".s1.partial")
    (tmp_path / ".s1.partial" / "s1.geojson").write_text('{"type": "FeatureCollection", "features": [')
    segment_slide(path, "s1", str(tmp_path), TileModel(PixelOracle(), CLASS_NAMES), OPTIONS)
    assert sorted(os.listdir(tmp_path)) == [
        "s1.geojson",
        "s1_nuclei.csv",
        "s1_summary.json",
        "s1_thumbnail.png",
    ]
    with pytest.raises(SlideError, match="no microns-per-pixel"):
        write_pyramid(str(tmp_path / "bare.tif"), np.full((300, 300, 3), 200, np.uint8), None)
        segment_slide(
            str(tmp_path / "bare.tif"), "bare", str(tmp_path), TileModel(PixelOracle(), CLASS_NAMES), OPTIONS
        )


def test_stages_run_at_once_and_in_flight_tiles_are_bounded():
    tiles_out, peak, lock = [0], [0], threading.Lock()
    spans = {"read": [], "model": [], "write": []}  # (start, end) of every call of each stage

    def timed(stage, seconds):
        start = time.perf_counter()
        time.sleep(seconds)
        spans[stage].append((start, time.perf_counter()))

    def read(job):
        timed("read", 0.01)
        with lock:
            tiles_out[0] += 1
            peak[0] = max(peak[0], tiles_out[0])
        return np.full((TILE, TILE, 3), job % 256, np.uint8)

    def predict(tiles):
        timed("model", 0.04)
        return [(t[0, 0, 0],) for t in tiles]

    seen = []

    def consume(job, prediction):
        timed("write", 0.01)
        assert prediction == (job % 256,)
        seen.append(job)
        with lock:
            tiles_out[0] -= 1

    timings = stream_batches(list(range(42)), read, predict, consume, batch=4, threads=4, ahead=2)
    assert seen == list(range(42))  # in order, every job once, the padded tiles dropped
    assert len(spans["model"]) == 11 and timings["model"] >= 11 * 0.04

    def overlap(stage):  # how many calls of `stage` ran while the model ran: none, one stage at a time
        return sum(a < d and c < b for a, b in spans[stage] for c, d in spans["model"])

    # Tiles are read and written while the model runs (a wall-clock bound flaked on a busy machine).
    assert overlap("read") > 0 and overlap("write") > 0
    assert peak[0] <= (2 + 1) * 4 + 2 * 4 + 4  # read ahead, the model's batch, the queue, the writer's


@pytest.mark.parametrize("stage", ["read", "predict", "consume"])
def test_an_error_in_any_stage_stops_the_slide(stage):
    def read(job):
        if stage == "read" and job == 9:
            raise SlideError("s.svs: reading level 0 failed")
        return np.zeros((TILE, TILE, 3), np.uint8)

    def predict(tiles):
        if stage == "predict":
            raise RuntimeError("out of memory")
        return [None] * len(tiles)

    def consume(job, prediction):
        if stage == "consume" and job == 5:
            raise ValueError("disk full")

    with pytest.raises((SlideError, RuntimeError, ValueError)):
        stream_batches(list(range(40)), read, predict, consume, batch=4, threads=2)
