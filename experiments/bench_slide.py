"""Tiles per second through the whole slide path against the model alone on the same tiles.

    make bench-slide                                   # tiny preset, writes experiments/results/slide.md
    python experiments/bench_slide.py --config fast --size 8192
    python experiments/bench_slide.py --quick          # a check that it runs; writes nothing

A synthetic H&E slide (maskrcnn.synthetic's patches mosaicked into a tiled, deflate-compressed pyramidal
TIFF at 0.25 um/px, tissue everywhere) goes through ``segment_slide`` (reader threads, the jitted batch
prediction, stitching, polygons, GeoJSON and CSV) with a randomly initialised model of the preset; then
the same tiles, read into memory beforehand, go through the same jitted predictor alone. The goal: the
whole path within 10% of the model alone, i.e. the device never waits on the host. Runs unchanged on a
GPU (the device is printed and recorded); each device's figures replace only its own block of the results.

``--stub`` measures the host side alone: an instant model that returns ready label maps (``--nuclei``
nuclei a tile, discs of 4-11 px radius), so the figure is the reading, stitching, outline tracing and
writing that must keep up with a GPU's model (about 1,000 tiles a second), by reader threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time

import harness

RESULTS = os.path.join(harness.RESULTS, "slide.md")


def make_slide(path: str, size: int, seed: int = 0):
    """A size x size slide of synthetic H&E patches (256 px each), three pyramid levels."""
    import numpy as np
    import tifffile

    from maskrcnn.synthetic import make_image

    rng = np.random.default_rng(seed)
    patches = [make_image(rng, 256)[0].astype(np.uint8) for _ in range(16)]
    image = np.empty((size, size, 3), np.uint8)
    for i, y in enumerate(range(0, size, 256)):
        for j, x in enumerate(range(0, size, 256)):
            patch = patches[(i * 7 + j * 3) % len(patches)]
            image[y : y + 256, x : x + 256] = patch[: size - y, : size - x]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k in range(3):
            level = image[:: 2**k, :: 2**k]
            tw.write(
                level,
                tile=(256, 256),
                compression="zlib",
                photometric="rgb",
                subfiletype=1 if k else 0,
                resolution=(1e4 / (0.25 * 2**k),) * 2,
                resolutionunit="CENTIMETER",
                metadata=None,
            )


def build(config_name: str, min_confidence: float | None, batch: int):
    from maskrcnn.config import load_config
    from maskrcnn.model import build_model
    from maskrcnn.slides import PANNUKE_MPP, TileModel
    from maskrcnn.tiling import make_tile_predictor

    config = load_config(config_name)
    if min_confidence is not None:
        model_config = dataclasses.replace(config.model, detection_min_confidence=min_confidence)
        config = dataclasses.replace(config, model=model_config)
    model = build_model(
        config.model, config.data.image_size, mini_masks=config.data.mini_mask_size is not None
    )
    return config, TileModel(make_tile_predictor(config, model), tuple(config.data.class_names), PANNUKE_MPP)


class StubTiles:
    """An instant tile predictor: ready label maps of ``nuclei`` discs each, handed out in turn."""

    def __init__(self, nuclei: int, variants: int = 8, seed: int = 0):
        import numpy as np

        from maskrcnn.tiling import TILE

        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:TILE, :TILE]
        self.maps = []
        for _ in range(variants):
            labels = np.zeros((TILE, TILE), np.int32)
            placed = 0
            for _ in range(nuclei * 30):
                if placed == nuclei:
                    break
                r = rng.uniform(4, 11)
                cy, cx = rng.uniform(r, TILE - r, 2)
                disc = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
                if labels[disc].any():
                    continue
                placed += 1
                labels[disc] = placed
            self.maps.append((labels, np.full(placed, 0.9, np.float32), np.ones(placed, np.int32)))
        self.calls = 0

    def __call__(self, tiles):
        out = []
        for _ in range(len(tiles)):
            out.append(self.maps[self.calls % len(self.maps)])
            self.calls += 1
        return out


def host_side(size: int, nuclei: int, batch: int, threads: list[int], repeats: int) -> str:
    """Tiles per second of the whole slide path with :class:`StubTiles` as the model, by reader threads."""
    from maskrcnn.slides import PANNUKE_MPP, SlideOptions, TileModel, segment_slide

    work = tempfile.mkdtemp(prefix="bench-slide-host-")
    lines = [
        "| reader threads | tiles | nuclei per tile | tiles/s (instant model) | tiles/s per core |",
        "|---:|---:|---:|---:|---:|",
    ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        path = os.path.join(work, "bench.tif")
        make_slide(path, size)
        for count in threads:
            model = TileModel(StubTiles(nuclei), ("nucleus",), PANNUKE_MPP)
            options = SlideOptions(tissue_mask=False, batch=batch, read_threads=count, progress=False)
            best, summary = float("inf"), None
            for i in range(repeats):
                started = time.perf_counter()
                summary = segment_slide(path, f"host{i}", os.path.join(work, "out"), model, options)
                best = min(best, time.perf_counter() - started)
            rate = summary["tiles"] / best
            lines.append(
                f"| {count} | {summary['tiles']} | {summary['nuclei'] / summary['tiles']:.0f} "
                f"| {rate:.1f} | {rate / cores:.1f} |"
            )
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return "\n".join(lines)


def model_alone(model, tiles, batch: int) -> float:
    """Seconds for the predictor on every tile in batches (the last padded as the slide path pads it)."""
    import numpy as np

    start = time.perf_counter()
    for i in range(0, len(tiles), batch):
        chunk = tiles[i : i + batch]
        chunk = chunk + [chunk[-1]] * (batch - len(chunk))
        model.predict_tiles(np.stack(chunk))
    return time.perf_counter() - start


MEMORY_CHILD = """
import json, resource, sys
from maskrcnn.slides import SlideOptions, TileModel, segment_slide
from tests.slides.helpers import CLASS_NAMES, PixelOracle
options = SlideOptions(progress=False, labels=sys.argv[4] == "labels")
s = segment_slide(sys.argv[1], "s", sys.argv[2] + sys.argv[3], TileModel(PixelOracle(), CLASS_NAMES), options)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
print(json.dumps({"peak": peak, **{k: s[k] for k in ("tiles", "tiles_read", "nuclei", "seconds")}}))
"""


def memory(sizes: list[int]) -> str:
    """Peak resident memory of the slide path on square slides of ``sizes`` px, the same tissue in each.

    The slides (tests/slides/helpers.py) are glass with three 1,024 px tissue patches; each runs in a
    child process with the tests' oracle model, so the figure is the slide path's, not a network's.
    """
    import json
    import subprocess

    import numpy as np

    from tests.slides.helpers import draw_tissue, write_sparse_slide

    rng = np.random.default_rng(0)
    places = ((1000, 1000), (3000, 6000), (7000, 2500))
    patches = [(y, x, draw_tissue(rng, 1024, 1024, 300, margin=2)[0]) for y, x in places]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = [
        "| slide (px) | tiles | tiles read | nuclei | peak RSS (MiB) | with --labels (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    work = tempfile.mkdtemp(prefix="bench-slide-memory-")
    try:
        for size in sizes:
            path = os.path.join(work, f"{size}.tif")
            write_sparse_slide(path, size, patches, levels=max(1, int(np.log2(size / 1000)) + 1))
            runs = []
            for labels in ("-", "labels"):
                done = subprocess.run(
                    [sys.executable, "-c", MEMORY_CHILD, path, os.path.join(work, "out"), str(size), labels],
                    capture_output=True,
                    text=True,
                    cwd=root,
                    env={**os.environ, "PYTHONPATH": root},
                    check=True,
                )
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            plain, labelled = runs
            lines.append(
                f"| {size:,} | {plain['tiles']:,} | {plain['tiles_read']} | {plain['nuclei']} | "
                f"{plain['peak']:.1f} | {labelled['peak']:.1f} |"
            )
            print(lines[-1], flush=True)
            os.remove(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return "\n".join(lines)


def write_block(tag: str, block: str):
    """Replaces the ``<!-- tag -->`` ... ``<!-- /tag -->`` block of the results (or appends it)."""
    block = f"<!-- {tag} -->\n{block}\n<!-- /{tag} -->"
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Whole-slide inference\n"
    pattern = re.compile(rf"<!-- {re.escape(tag)} -->.*?<!-- /{re.escape(tag)} -->", re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    with open(RESULTS, "w") as f:
        f.write(text)
    print(f"written to {RESULTS}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="preset (tiny, fast, ...), random weights")
    p.add_argument("--size", type=int, help="slide side in pixels (default 2048 on a CPU, 8192 on a GPU)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--read-threads", type=int, default=4)
    p.add_argument(
        "--min-confidence",
        type=float,
        help="detection confidence (default: the preset's); 0 fills every detection slot (the host's worst "
        "case)",
    )
    p.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest counts")
    p.add_argument("--quick", action="store_true", help="a 768 px slide, one run, nothing written")
    p.add_argument("--stub", action="store_true", help="instead: the host side alone, an instant model")
    p.add_argument("--nuclei", type=int, default=40, help="--stub: nuclei per tile")
    p.add_argument(
        "--memory",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="instead: peak memory of the slide path on slides of these sizes (e.g. 10000 50000 100000)",
    )
    args = p.parse_args(argv)
    command = f"python experiments/bench_slide.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    if args.memory:
        write_block("bench-slide memory", f"{harness.header(command)}\n\n{memory(args.memory)}")
        return 0
    if args.stub:
        threads = sorted({1, 2, args.read_threads})
        table = host_side(args.size or 4096, args.nuclei, args.batch, threads, args.repeats)
        write_block("bench-slide host", f"{harness.header(command)}\n\n{table}")
        return 0

    import jax

    from maskrcnn.slides import ModelResolution, Slide, SlideOptions, TileGrid, segment_slide
    from maskrcnn.tiling import TILE

    device = jax.devices()[0]
    kind = f"{device.platform}: {getattr(device, 'device_kind', device.platform)}"
    on_gpu = device.platform not in ("cpu",)
    size = 768 if args.quick else args.size or (8192 if on_gpu else 2048)
    repeats = 1 if args.quick else args.repeats
    print(f"device {kind} ({len(jax.devices())} visible), {os.cpu_count()} CPU cores, jax {jax.__version__}")
    work = tempfile.mkdtemp(prefix="bench-slide-")
    try:
        path = os.path.join(work, "bench.tif")
        make_slide(path, size)
        config, model = build(args.config, args.min_confidence, args.batch)
        options = SlideOptions(
            tissue_mask=False, batch=args.batch, read_threads=args.read_threads, progress=not args.quick
        )
        with Slide(path) as slide:
            res = ModelResolution(slide, model.mpp)
            grid = TileGrid(res.size, options.overlap)
            tiles = [
                res.read_tile(*grid.origin(r, c), TILE)
                for r in range(grid.shape[0])
                for c in range(grid.shape[1])
            ]
        started = time.perf_counter()
        model_alone(model, tiles[: args.batch], args.batch)  # the compile
        compile_s = time.perf_counter() - started
        alone = min(model_alone(model, tiles, args.batch) for _ in range(repeats))
        whole, summary = float("inf"), None
        for i in range(repeats):
            started = time.perf_counter()
            summary = segment_slide(path, f"bench{i}", os.path.join(work, "out"), model, options)
            whole = min(whole, time.perf_counter() - started)
        n = len(tiles)
        assert summary["tiles_read"] == n
        row = {
            "device": kind,
            "config": config.name,
            "slide": f"{size} px",
            "tiles": n,
            "batch": args.batch,
            "nuclei per tile": round(summary["nuclei"] / n, 1),
            "model alone (tiles/s)": round(n / alone, 2),
            "whole path (tiles/s)": round(n / whole, 2),
            "whole / alone": f"{alone / whole:.1%}",
            "model waited for tiles (s)": summary["seconds_model_waited_for_tiles"],
            "compile (s)": round(compile_s, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = "| " + " | ".join(row) + " |\n|" + "---|" * len(row)
    line = "| " + " | ".join(str(v) for v in row.values()) + " |"
    print(header + "\n" + line)
    if args.quick:
        print("(--quick: nothing written)")
        return 0
    write_block(
        f"bench-slide {device.platform}",
        f"{harness.header(command)} {args.read_threads} reader threads.\n\n{header}\n{line}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
