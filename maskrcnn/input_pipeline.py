"""From PanNuke examples to fixed-shape numpy batches: augment, resize, boxes, mini-masks, padding.

An example is a dict: ``image`` uint8 (256, 256, 3), ``instances`` int32 (256, 256) instance label map,
``classes`` uint8 (256, 256) class map (0 background, c + 1 for class c), ``tissue``, ``fold`` and
``index`` ints. It comes from the tfds dataset ``pannuke/<variant>`` (built with ``make data``; read by
random access through ``tfds.data_source``) or, with ``data.builder="synthetic"``, from folds generated
in memory by :mod:`maskrcnn.synthetic` through the same PanNuke functions.

A batch (all numpy, leading axis B) holds:
  image uint8 (B, S, S, 3) with S = ``data.image_size``;
  boxes float32 (B, M, 4) (y1, x1, y2, x2) on pixel edges of the S-pixel image, M = ``data.max_instances``;
  classes int32 (B, M) in 1..num_classes, 0 on padding; valid bool (B, M);
  masks uint8 (B, M, m, m) mini-masks (m = ``data.mini_mask_size``): pixel (u, v) is the instance's mask
    at the centre of cell (u, v) of an m x m grid over its box; or (B, M, S, S) full masks if m is None;
  num_truncated int32 (B,) instances beyond M left out (the M largest are kept);
  tissue, fold, index int32 (B,); scale float32 (B,) = S / 256.
Evaluation batches also hold the original ``instances`` int32 (B, 256, 256), ``class_map`` uint8 and
``example_valid`` bool (B,) (False on the padding of the last batch).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from maskrcnn import pannuke
from maskrcnn.config import Config, DataConfig

PANNUKE_SIZE = 256
_SYNTHETIC_SEED = 2026


# -------------------------------------------------------------------------------------------- sources
class SyntheticSource:
    """A split of three PanNuke-format folds generated in memory (see :mod:`maskrcnn.synthetic`)."""

    def __init__(self, variant: str, split: str, images_per_fold: int):
        keys, self._examples = _synthetic_pool(variant, images_per_fold)
        splits = pannuke.split_keys(keys)
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; the splits are {sorted(splits)}")
        self.keys = splits[split]

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self._examples[self.keys[i]]


@functools.lru_cache(maxsize=4)
def _synthetic_pool(variant: str, images_per_fold: int):
    from maskrcnn.synthetic import make_fold

    examples = {}
    for fold in pannuke.FOLDS:
        images, masks, types = make_fold(images_per_fold, seed=_SYNTHETIC_SEED + fold)
        for index, (image, mask, tissue) in enumerate(zip(images, masks, types, strict=True)):
            if pannuke.eligible(mask, variant):
                instances, classes = pannuke.instance_and_class_maps(mask, variant)
                examples[(fold, index)] = {
                    "image": np.clip(np.rint(image), 0, 255).astype(np.uint8),
                    "instances": instances,
                    "classes": classes,
                    "tissue": pannuke.tissue_index(tissue),
                    "fold": fold,
                    "index": index,
                }
    return sorted(examples), examples


def open_split(data: DataConfig, split: str):
    """A random-access sequence of examples of ``split``."""
    if data.builder == "synthetic":
        return SyntheticSource(data.variant, split, data.synthetic_images_per_fold)
    if data.builder != "pannuke":
        raise ValueError(f"data.builder must be 'pannuke' or 'synthetic', got {data.builder!r}")
    import tensorflow_datasets as tfds  # reads the prepared files; the builder's code is not needed

    name = f"pannuke/{data.variant}"
    try:
        return tfds.data_source(name, split=split, data_dir=data.data_dir)
    except Exception as error:  # tfds raises several types for a dataset that was not built
        where = data.data_dir or "~/tensorflow_datasets"
        raise FileNotFoundError(
            f"could not open {name} split {split!r} in {where} ({type(error).__name__}: {error}). "
            "Build it once with `make data MANUAL_DIR=<folder with the PanNuke folds>`, or set "
            "data.builder=synthetic to try the pipeline on generated data."
        ) from error


# ------------------------------------------------------------------------------------------ examples
def augment(image, instances, classes, rng: np.random.Generator, max_degrees: float):
    """Random horizontal and vertical flips and a rotation within +-max_degrees (the seed paper's).

    The image is rotated bilinearly, the label maps by nearest neighbour, all about the centre with zeros
    where the rotation brings in pixels from outside (imgaug's default, which the paper used).
    """
    if rng.random() < 0.5:
        image, instances, classes = image[:, ::-1], instances[:, ::-1], classes[:, ::-1]
    if rng.random() < 0.5:
        image, instances, classes = image[::-1], instances[::-1], classes[::-1]
    angle = rng.uniform(-max_degrees, max_degrees) if max_degrees > 0 else 0.0
    if abs(angle) > 1e-3:
        image = ndimage.rotate(image, angle, reshape=False, order=1, mode="constant", cval=0)
        instances = ndimage.rotate(instances, angle, reshape=False, order=0, mode="constant", cval=0)
        classes = ndimage.rotate(classes, angle, reshape=False, order=0, mode="constant", cval=0)
    return np.ascontiguousarray(image), np.ascontiguousarray(instances), np.ascontiguousarray(classes)


def resize(image, instances, classes, size: int):
    """Resizes to size x size: the image bilinearly on pixel centres, the label maps by nearest centre."""
    height = image.shape[0]
    if size == height:
        return image, instances, classes
    factor = size / height
    image = ndimage.zoom(
        image.astype(np.float32), (factor, factor, 1), order=1, grid_mode=True, mode="nearest"
    )
    src = np.minimum(((np.arange(size) + 0.5) / factor).astype(np.int64), height - 1)
    return (
        np.clip(np.rint(image), 0, 255).astype(np.uint8),
        instances[np.ix_(src, src)],
        classes[np.ix_(src, src)],
    )


def instance_targets(instances, classes, max_instances: int, mini_mask_size: int | None) -> dict:
    """Boxes, classes and (mini-)masks of the instances of one label map, padded to ``max_instances``.

    Args:
      instances: int (S, S) label map; classes: uint8 (S, S) class map (c + 1 for class c).

    Returns:
      dict of boxes float32 (M, 4), classes int32 (M,), masks uint8 (M, m, m) or (M, S, S), valid bool
      (M,), num_truncated int (the instances beyond M, the smallest ones, left out).
    """
    ids, contiguous = np.unique(instances, return_inverse=True)
    contiguous = contiguous.reshape(instances.shape)
    if ids[0] != 0:
        contiguous = contiguous + 1
    count = int(contiguous.max(initial=0))
    labels = np.arange(1, count + 1)
    areas = np.bincount(contiguous.ravel(), minlength=count + 1)[1:]
    keep = (
        labels if count <= max_instances else np.sort(np.argsort(-areas, kind="stable")[:max_instances] + 1)
    )
    slices = ndimage.find_objects(contiguous)
    n = len(keep)
    boxes = np.zeros((max_instances, 4), np.float32)
    for row, k in enumerate(keep):
        ys, xs = slices[k - 1]
        boxes[row] = (ys.start, xs.start, ys.stop, xs.stop)
    out_classes = np.zeros(max_instances, np.int32)
    if n:
        out_classes[:n] = ndimage.maximum(classes, contiguous, keep).astype(np.int32)
    if mini_mask_size is None:
        masks = np.zeros((max_instances, *instances.shape), np.uint8)
        masks[:n] = contiguous[None] == keep[:, None, None]
    else:
        m = mini_mask_size
        cells = (np.arange(m) + 0.5) / m
        y1, x1, y2, x2 = (boxes[:n, i : i + 1] for i in range(4))
        rows = (y1 + cells * (y2 - y1)).astype(np.int64)  # (n, m): the cell centres' pixels
        cols = (x1 + cells * (x2 - x1)).astype(np.int64)
        masks = np.zeros((max_instances, m, m), np.uint8)
        masks[:n] = contiguous[rows[:, :, None], cols[:, None, :]] == keep[:, None, None]
    return {
        "boxes": boxes,
        "classes": out_classes,
        "masks": masks,
        "valid": np.arange(max_instances) < n,
        "num_truncated": np.int32(count - n),
    }


def prepare(example: dict, data: DataConfig, rng: np.random.Generator | None = None) -> dict:
    """One example as model inputs and targets; ``rng`` given: with augmentation (if ``data.augment``)."""
    image = np.asarray(example["image"], np.uint8)
    instances = np.asarray(example["instances"], np.int32)
    classes = np.asarray(example["classes"], np.uint8)
    if image.shape[:2] != instances.shape or instances.shape != classes.shape:
        raise ValueError(
            f"example {example.get('fold')}/{example.get('index')}: image {image.shape}, instances "
            f"{instances.shape} and classes {classes.shape} must share (H, W)"
        )
    if rng is not None and data.augment:
        image, instances, classes = augment(image, instances, classes, rng, data.max_rotation_degrees)
    scale = data.image_size / image.shape[0]
    image, instances, classes = resize(image, instances, classes, data.image_size)
    targets = instance_targets(instances, classes, data.max_instances, data.mini_mask_size)
    return {
        "image": image,
        **targets,
        "tissue": np.int32(example["tissue"]),
        "fold": np.int32(example["fold"]),
        "index": np.int32(example["index"]),
        "scale": np.float32(scale),
    }


def _stack(items: list[dict]) -> dict:
    return {k: np.stack([np.asarray(item[k]) for item in items]) for k in items[0]}


# ------------------------------------------------------------------------------------------- batches
def _batched(jobs: list[list], work, workers: int) -> Iterator[dict]:
    """Runs ``work`` on every item of every job (a batch) in a thread pool, two batches ahead."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for job in jobs:
            pending.append([pool.submit(work, *item) for item in job])
            if len(pending) > 2:
                yield _stack([f.result() for f in pending.pop(0)])
        for futures in pending:
            yield _stack([f.result() for f in futures])


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def steps_per_epoch(config: Config) -> int:
    """Full batches in one pass over the training split (the remainder waits for the next epoch's order)."""
    return len(open_split(config.data, config.data.train_split)) // config.train.batch_size


def make_train_iterator(config: Config, *, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """The training batches of ``epoch``, from batch ``start_step`` on.

    The order (a permutation seeded by ``train.seed`` and the epoch) and each example's augmentation
    (seeded by the seed, the epoch and the example's position) do not depend on where the epoch starts,
    so a resumed run sees exactly the batches an uninterrupted run would.
    """
    source = open_split(config.data, config.data.train_split)
    batch = config.train.batch_size
    order = np.random.default_rng([config.train.seed, epoch]).permutation(len(source))
    steps = len(source) // batch
    jobs = [
        [(int(order[i]), [config.train.seed, epoch, i]) for i in range(s * batch, (s + 1) * batch)]
        for s in range(start_step, steps)
    ]

    def work(position, seed):
        return prepare(source[position], config.data, np.random.default_rng(seed))

    return _batched(jobs, work, _workers())


def make_eval_iterator(config: Config, split: str, *, batch_size: int | None = None) -> Iterator[dict]:
    """Batches of ``split`` in order, without augmentation; the last is padded (``example_valid``)."""
    source = open_split(config.data, split)
    batch = batch_size or config.train.batch_size
    n = len(source)
    jobs = [[(min(i, n - 1), i < n) for i in range(s, s + batch)] for s in range(0, n, batch)]

    def work(position, is_valid):
        example = source[position]
        out = prepare(example, config.data)
        out["instances"] = np.asarray(example["instances"], np.int32)
        out["class_map"] = np.asarray(example["classes"], np.uint8)
        out["example_valid"] = is_valid
        return out

    return _batched(jobs, work, _workers())
