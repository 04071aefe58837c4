"""One slide through the model: tissue mask -> tiles read ahead by threads -> batched prediction ->
stitching and outputs in a thread of their own.

Three stages run at once, joined by bounded queues, so the device never waits on the host and memory is
bounded by the batches in flight, not by the slide: reader threads decode and resample the tiles of the
next batches; this thread sends each batch to the tile predictor (the jitted model; it releases the GIL
while the device computes); a writer thread stitches the nuclei of finished tiles and streams them to the
outputs. Tiles that hold no tissue on the low-resolution mask are never read at full resolution.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from maskrcnn.config import DataConfig
from maskrcnn.slides.reader import ModelResolution, Slide, read_thumbnail
from maskrcnn.slides.stitch import Stitcher, TileGrid
from maskrcnn.slides.tissue import tiles_with_tissue, tissue_mask
from maskrcnn.slides.writers import SlideWriter
from maskrcnn.tiling import TILE

# PanNuke's patches are 40x scans at about 0.25 um/px (Gamper et al. 2020): the default resolution of
# TileModel; a trained run's is its config's ``data.mpp`` (the same by default).
PANNUKE_MPP = DataConfig.mpp
THUMBNAIL_SIZE = 2048  # longest side of the low-resolution image used for tissue and the thumbnail
THUMBNAIL_MIN_DOWNSAMPLE = 4  # model pixels per thumbnail pixel, at least (small slides)

TilePredictor = Callable[[np.ndarray], Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class TileModel:
    """What the slide pipeline needs of a model.

    ``predict_tiles``: uint8 (N, TILE, TILE, 3) -> per tile (labels int (TILE, TILE), scores (D,),
    classes (D,) in 1..K), label d + 1 being detection d (:func:`maskrcnn.tiling.make_tile_predictor`).
    ``class_names``: names of classes 1..K. ``mpp``: microns per pixel the model was trained at.
    """

    predict_tiles: TilePredictor
    class_names: tuple[str, ...]
    mpp: float = PANNUKE_MPP


@functools.cache
def load_tile_model(workdir: str, overrides: tuple[str, ...] = ()) -> TileModel:
    """The model trained in ``workdir`` as a :class:`TileModel`, loaded once per process (a cluster
    worker keeps its compiled model for every slide it is given); ``overrides`` are ``KEY=VALUE``
    inference settings (``maskrcnn predict --set``), refused if they would not fit the weights."""
    from maskrcnn.tiling import make_tile_predictor
    from maskrcnn.train.workdir import load_trained

    config, model = load_trained(workdir, overrides)
    return TileModel(make_tile_predictor(config, model), tuple(config.data.class_names), config.data.mpp)


@dataclasses.dataclass(frozen=True)
class SlideOptions:
    """How slides are read and predicted (``maskrcnn predict``'s slide options)."""

    mpp: float | None = None  # level-0 microns per pixel; overrides the slide's metadata
    tissue_mask: bool = True  # False: every tile goes to the model (--no-tissue-mask)
    labels: bool = False  # also write the level-0 instance label map (zarr)
    overlap: int = 64  # pixels shared by neighbouring tiles (predict's --overlap)
    batch: int = 8  # tiles per model call
    read_threads: int = 4  # threads reading and resampling tiles
    ahead: int = 2  # batches read ahead of the one the model is on
    progress: bool = True

    def check(self):
        """Raises ValueError naming the option when one is out of range (before any model is built)."""
        if self.mpp is not None and not self.mpp > 0:
            raise ValueError(f"--mpp {self.mpp}: must be positive (microns per pixel of level 0)")
        if not 0 <= self.overlap < TILE:
            raise ValueError(f"--overlap {self.overlap}: must be in [0, {TILE})")
        for name in ("batch", "read_threads", "ahead"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")


def stream_batches(
    jobs: Sequence,
    read: Callable[[object], np.ndarray],
    predict_tiles: TilePredictor,
    consume: Callable[[object, tuple], None],
    *,
    batch: int,
    threads: int,
    ahead: int = 2,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Runs ``predict_tiles`` over ``read(job)`` for every job, with reading and consuming in threads.

    Args:
      jobs: anything ``read`` and ``consume`` understand (tile indices).
      read: job -> uint8 (TILE, TILE, 3); run by ``threads`` threads, up to ``ahead`` batches ahead.
      predict_tiles: run in the calling thread on uint8 (batch, TILE, TILE, 3); the last batch is padded
        to ``batch`` by repeating its last tile (the copies' predictions are dropped), so that a jitted
        model is compiled for one shape only.
      consume: (job, prediction of its tile), called in job order in one writer thread.
      on_batch: called with the number of tiles of each batch once consumed (progress).

    Returns:
      timings in seconds: ``model`` (in predict_tiles), ``waiting_for_tiles`` (the model idle because
      tiles were not read yet), ``total``.

    Raises:
      the first error of any stage; the others are stopped.
    """
    start = time.perf_counter()
    count = -(-len(jobs) // batch)

    def chunk(i):
        return jobs[i * batch : (i + 1) * batch]

    done: queue.Queue = queue.Queue(maxsize=ahead)
    failure: list[BaseException] = []
    stop = threading.Event()

    def writer():
        while True:
            item = done.get()
            if item is None:
                return
            if failure:
                continue  # drain, so that the producer never blocks
            chunk, predictions = item
            try:
                for job, prediction in zip(chunk, predictions, strict=True):
                    consume(job, prediction)
                if on_batch is not None:
                    on_batch(len(chunk))
            except BaseException as error:  # handed to the calling thread
                failure.append(error)
                stop.set()

    timings = {"model": 0.0, "waiting_for_tiles": 0.0}
    thread = threading.Thread(target=writer, name="slide-writer", daemon=True)
    thread.start()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="slide-reader")
    pending: collections.deque = collections.deque()
    try:
        submitted = 0
        for index in range(count):
            while submitted < count and len(pending) <= ahead:
                pending.append([pool.submit(read, job) for job in chunk(submitted)])
                submitted += 1
            futures = pending.popleft()
            waited = time.perf_counter()
            tiles = [f.result() for f in futures]
            timings["waiting_for_tiles"] += time.perf_counter() - waited
            if stop.is_set():
                break
            n = len(tiles)
            if n < batch:  # repeat the last tile (not a blank one: no background goes to the model)
                tiles += [tiles[-1]] * (batch - n)
            began = time.perf_counter()
            predictions = list(predict_tiles(np.stack(tiles)))[:n]
            timings["model"] += time.perf_counter() - began
            while not stop.is_set():
                try:
                    done.put((chunk(index), predictions), timeout=0.1)
                    break
                except queue.Full:
                    continue
    except BaseException:
        stop.set()
        raise
    finally:
        for futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        done.put(None)
        thread.join()
    if failure:
        raise failure[0]
    timings["total"] = time.perf_counter() - start
    return timings


def segment_slide(path: str, name: str, out_dir: str, model: TileModel, options: SlideOptions) -> dict:
    """Segments the nuclei of one slide and writes its outputs (:mod:`maskrcnn.slides.writers`).

    Returns:
      the summary (also written as ``<name>_summary.json``).

    Raises:
      SlideError when the slide cannot be opened or read, or has no resolution; nothing is left behind.
    """
    from tqdm.auto import tqdm

    begin = time.perf_counter()
    with Slide(path, options.mpp) as slide:
        res = ModelResolution(slide, model.mpp)
        grid = TileGrid(res.size, options.overlap)
        thumb_ds = max(max(slide.size) / THUMBNAIL_SIZE, res.scale * THUMBNAIL_MIN_DOWNSAMPLE)
        thumbnail = read_thumbnail(slide, thumb_ds)
        if options.tissue_mask:
            mask = tissue_mask(thumbnail)
            keep = tiles_with_tissue(mask, thumb_ds / res.scale, grid.ys, grid.xs, TILE)
        else:
            mask, keep = None, np.ones(grid.shape, bool)
        jobs = np.argwhere(keep).astype(np.int32)  # (row, col) of the tiles to read, in raster order
        writer = SlideWriter(
            out_dir,
            name,
            scale=res.scale,
            model_mpp=model.mpp,
            class_names=model.class_names,
            thumbnail=thumbnail,
            thumbnail_downsample=thumb_ds,
            labels_size=slide.size if options.labels else None,
        )
        try:
            stitcher = Stitcher(grid)

            def read(job):
                y, x = grid.origin(int(job[0]), int(job[1]))
                return res.read_tile(y, x, TILE)

            def consume(job, prediction):
                writer.write(stitcher.add(*job, *prediction))

            with tqdm(
                total=len(jobs), desc=name, unit="tile", disable=not options.progress, dynamic_ncols=True
            ) as bar:
                timings = stream_batches(
                    jobs,
                    read,
                    model.predict_tiles,
                    consume,
                    batch=options.batch,
                    threads=options.read_threads,
                    ahead=options.ahead,
                    on_batch=bar.update,
                )
            seconds = time.perf_counter() - begin
            summary = {
                "slide": path,
                "name": name,
                "vendor": slide.vendor,
                "level0_size": {"height": slide.size[0], "width": slide.size[1]},
                "slide_mpp": slide.mpp,
                "model_mpp": model.mpp,
                "level_read": res.level,
                "level0_px_per_model_px": res.scale,
                "tiles": int(keep.size),
                "tiles_read": len(jobs),
                "tiles_skipped_background": int(keep.size - len(jobs)),
                "tissue_mask": options.tissue_mask,
                "tissue_fraction": None if mask is None else round(float(mask.mean()), 4),
                "nuclei": writer.count,
                "nuclei_per_class": dict(sorted(writer.per_class.items())),
                "seconds": round(seconds, 3),
                "tiles_per_second": round(len(jobs) / seconds, 3) if seconds > 0 else None,
                "seconds_in_model": round(timings["model"], 3),
                "seconds_model_waited_for_tiles": round(timings["waiting_for_tiles"], 3),
                "overlap": options.overlap,
                "batch": options.batch,
            }
            writer.finish(summary, slide.mpp)
        except BaseException:
            writer.abort()
            raise
    return summary
