"""``maskrcnn predict``: instance segmentation of whole images of any size, tile by tile.

An image is read (PNG, JPEG, TIFF; RGB, RGBA, greyscale, 8 or 16 bit), optionally rescaled to PanNuke's
40x resolution, cut into overlapping 256 px tiles and segmented tile by tile, each nucleus kept by the tile
that owns its centre (:mod:`maskrcnn.tiling`). Outputs: the label map (TIFF), a CSV of instances and an
overlay picture.

Whole-slide images (.svs, tiled pyramidal TIFF, the other formats OpenSlide reads) take the streaming
path of :mod:`maskrcnn.slides` instead, with the same tiles and ownership rule.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
from scipy import ndimage

from maskrcnn.slides.reader import SLIDE_SUFFIXES
from maskrcnn.tiling import TILE, segment_large

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ImageError(ValueError):
    """An input image that cannot be used, with the file named."""


def read_image(path: str) -> np.ndarray:
    """Reads an image as uint8 RGB (H, W, 3).

    RGBA loses its alpha, greyscale is replicated to three channels, 16-bit images are scaled from their
    full range (0-65535) to 0-255, float images are taken as 0-1 if their maximum is at most 1, else 0-255.
    """
    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                array = np.asarray(im.convert("RGBA") if im.mode == "P" else im)
    except Exception as error:  # PIL and tifffile raise many types for unreadable files
        raise ImageError(f"{path}: cannot read the image ({type(error).__name__}: {error})") from error
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first TIFF
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or min(array.shape[:2]) == 0:
        raise ImageError(f"{path}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    if array.shape[-1] in (1, 2):  # grey (with alpha)
        array = np.repeat(array[..., :1], 3, axis=-1)
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return np.rint(array / 65535.0 * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        top = 1.0 if np.nanmax(array) <= 1.0 else 255.0
        return np.clip(np.rint(np.nan_to_num(array) / top * 255.0), 0, 255).astype(np.uint8)
    raise ImageError(f"{path}: unsupported pixel type {array.dtype}; expected 8 or 16 bit integers or floats")


def instance_table(labels: np.ndarray, instances: list[dict], class_names) -> list[dict]:
    """Rows for the CSV: id, class, score, area, centroid and box (y1, x1, y2, x2 on pixel edges)."""
    if not instances:
        return []
    ids = [r["id"] for r in instances]
    slices = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel(), minlength=max(ids) + 1)
    centres = ndimage.center_of_mass(np.ones_like(labels), labels, ids)
    rows = []
    for r, (cy, cx) in zip(instances, centres, strict=True):
        sl = slices[r["id"] - 1] if r["id"] - 1 < len(slices) else None
        if sl is None or areas[r["id"]] == 0:
            continue
        rows.append(
            {
                "id": r["id"],
                "class": class_names[r["class"] - 1] if 0 < r["class"] <= len(class_names) else r["class"],
                "score": round(r["score"], 4),
                "area": int(areas[r["id"]]),
                "centroid_y": round(float(cy), 2),
                "centroid_x": round(float(cx), 2),
                "y1": sl[0].start,
                "x1": sl[1].start,
                "y2": sl[0].stop,
                "x2": sl[1].stop,
            }
        )
    return rows


def resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label map resampled to ``shape`` by nearest pixel centre."""
    rows = np.minimum(
        ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(int), labels.shape[0] - 1
    )
    cols = np.minimum(
        ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(int), labels.shape[1] - 1
    )
    return labels[np.ix_(rows, cols)]


def write_outputs(out_dir: str, name: str, image, labels, rows, label_format: str = "tif") -> dict:
    """Writes ``<name>_labels.tif`` (or .png/.npy), ``<name>_instances.csv`` and ``<name>_overlay.png``."""
    from PIL import Image

    from maskrcnn.evaluation.report import overlay

    os.makedirs(out_dir, exist_ok=True)
    paths = {"labels": os.path.join(out_dir, f"{name}_labels.{label_format}")}
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    if label_format == "npy":
        np.save(paths["labels"], labels.astype(np.int32))
    elif label_format == "png":
        if dtype != np.uint16:
            raise ValueError(f"{name}: {labels.max()} instances do not fit a 16-bit PNG; use --format tif")
        Image.fromarray(labels.astype(np.uint16)).save(paths["labels"])
    else:
        import tifffile

        tifffile.imwrite(paths["labels"], labels.astype(dtype), compression="zlib")
    paths["csv"] = os.path.join(out_dir, f"{name}_instances.csv")
    fields = ["id", "class", "score", "area", "centroid_y", "centroid_x", "y1", "x1", "y2", "x2"]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    paths["overlay"] = os.path.join(out_dir, f"{name}_overlay.png")
    Image.fromarray(overlay(image, None, labels)).save(paths["overlay"])
    return paths


def list_inputs(inputs: list[str]) -> list[str]:
    """The image and slide files named or inside the named folders, in sorted order."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_SUFFIXES + SLIDE_SUFFIXES)
                and os.path.isfile(os.path.join(item, f))
            )
        elif os.path.exists(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def output_names(paths: list[str]) -> list[str]:
    """The name each input's outputs are written under: its file name without the suffix, or with the
    suffix (``a_png``, ``a_jpg``) where two inputs would otherwise share one.

    Raises:
      ValueError when two inputs still share a name (the same file name in two folders).
    """
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = [
        stem if stems.count(stem) == 1 else os.path.basename(path).replace(".", "_")
        for stem, path in zip(stems, paths, strict=True)
    ]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        same = [p for p, n in zip(paths, names, strict=True) if n in clashes]
        raise ValueError(
            f"inputs {', '.join(same)} would write the same output files ({', '.join(clashes)}_*); "
            "predict them into separate --out folders"
        )
    return names


def check_arguments(inputs: list[str], out_dir: str, overlap: int) -> list[tuple[str, str]]:
    """Checks what ``predict_files`` was given before any model is built; returns (path, name) pairs."""
    if not 0 <= overlap < TILE:
        raise ValueError(f"--overlap {overlap}: must be in [0, {TILE}) (pixels shared by {TILE} px tiles)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"--out {out_dir} is a file; give a folder for the outputs")
    paths = list_inputs(inputs)
    if not paths:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) or slides ({', '.join(SLIDE_SUFFIXES)}) in "
            + ", ".join(inputs)
        )
    return list(zip(paths, output_names(paths), strict=True))


def predict_files(
    workdir: str,
    inputs: list[str],
    out_dir: str,
    *,
    scale: float = 1.0,
    overlap: int = 64,
    label_format: str = "tif",
    progress: bool = True,
    slides=None,
    resume: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    overrides: tuple[str, ...] = (),
) -> list[str]:
    """Runs the model trained in ``workdir`` on every image and slide; returns the files that failed
    (each reported). ``overrides``: ``KEY=VALUE`` inference settings (``--set``) applied to the run's config.

    Images go through :func:`segment_large`; whole-slide images (:func:`maskrcnn.slides.is_slide`)
    through :func:`maskrcnn.slides.run_cohort` with ``slides`` (a :class:`maskrcnn.slides.SlideOptions`),
    ``resume`` (skip slides already finished), and ``workers`` / ``scheduler`` (a Dask cluster).
    """
    import functools

    from tqdm.auto import tqdm

    from maskrcnn.slides import SlideOptions, is_slide, load_tile_model, run_cohort

    jobs = check_arguments(inputs, out_dir, overlap)
    slide_options = dataclasses.replace(slides or SlideOptions(), overlap=overlap, progress=progress)
    slide_options.check()
    if workers < 0:
        raise ValueError(f"--workers {workers}: must be at least 1 (or 0 to run here)")
    slide_jobs = [(p, n) for p, n in jobs if is_slide(p)]
    image_jobs = [(p, n) for p, n in jobs if not is_slide(p)]
    failed = []
    load = functools.partial(load_tile_model, os.path.abspath(workdir), tuple(overrides))
    # Loaded here (once: cached for the images and in-process slides), a bad --set fails before any file.
    model = load() if image_jobs or not workers else None
    if image_jobs:
        for path, name in tqdm(image_jobs, desc="predict", disable=not progress, dynamic_ncols=True):
            try:
                image = read_image(path)
            except ImageError as error:
                print(f"skipped: {error}")
                failed.append(path)
                continue
            work = image
            if scale != 1.0:
                size = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
                work = np.clip(
                    ndimage.zoom(
                        image.astype(np.float32),
                        (size[0] / image.shape[0], size[1] / image.shape[1], 1),
                        order=1,
                        grid_mode=True,
                        mode="nearest",
                    ),
                    0,
                    255,
                ).astype(np.uint8)
            labels, instances = segment_large(work, model.predict_tiles, overlap=overlap)
            if scale != 1.0:
                labels = resize_nearest(labels, image.shape[:2])
            rows = instance_table(labels, instances, model.class_names)
            write_outputs(out_dir, name, image, labels, rows, label_format)
    if slide_jobs:
        results = run_cohort(
            slide_jobs,
            out_dir,
            load,
            slide_options,
            resume=resume,
            workers=workers,
            scheduler=scheduler,
        )
        failed += [r.path for r in results if r.status == "failed"]
    return failed
