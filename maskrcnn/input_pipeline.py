"""From PanNuke examples to fixed-shape numpy batches: augment, resize, boxes, mini-masks, padding.

An example is a dict: ``image`` uint8 (256, 256, 3), ``instances`` int32 (256, 256) instance label map,
``classes`` uint8 (256, 256) class map (0 background, c + 1 for class c), ``tissue``, ``fold`` and
``index`` ints. It comes from the tfds dataset ``pannuke/<variant>`` (built with ``make data``; read by
random access through ``tfds.data_source``), from an unzipped PanNuke-format fold read directly (a
split given as a folder path, :class:`FoldSource`) or, with ``data.builder="synthetic"``, from folds
generated in memory by :mod:`maskrcnn.synthetic`; all go through the same PanNuke functions.

A batch (all numpy, leading axis B) holds:
  image uint8 (B, S, S, 3) with S = ``data.image_size``;
  boxes float32 (B, M, 4) (y1, x1, y2, x2) on pixel edges of the S-pixel image (rows 3..5 -> y1=3, y2=6),
    M = ``data.max_instances``;
  classes int32 (B, M) in 1..num_classes, 0 on padding; valid bool (B, M);
  masks uint8 (B, M, m, m) mini-masks (m = ``data.mini_mask_size``): pixel (u, v) is the instance's mask
    at the centre of cell (u, v) of an m x m grid over its box, i.e. the full mask at row
    ``floor(y1 + (u + 0.5) * (y2 - y1) / m)`` and column likewise; or (B, M, S, S) full masks if m is None;
  num_truncated int32 (B,) instances beyond M left out (a random M are kept in training, a fixed seeded
    choice otherwise, whatever their size);
  ignore_boxes float32 (B, M, 4), ignore_valid bool (B, M): the boxes of the left-out instances (the
    first M of them), which the targets neither train nor teach as background;
  tissue, fold, index int32 (B,); scale float32 (B,) = S / 256.
Instances are in the order of their ids in the label map. Evaluation batches also hold the original
``instances`` int32 (B, 256, 256), ``class_map`` uint8 (B, 256, 256) (with ``instances`` it rebuilds
PanNuke's (N, 256, 256, 6) masks through :func:`maskrcnn.pannuke.pannuke_masks`) and ``example_valid``
bool (B,) (False on the padding of the last batch).

Geometry: augmentation (flips, rotation, and colour jitter where the config sets it) happens at 256 px,
then the image is resized bilinearly (PIL) and the label map by nearest pixel centre; boxes and masks
always come from the final label map, so an instance that leaves the image or vanishes in a downscale is
dropped and every box is exactly the bounding box of its mask. Work per example is numpy/PIL (both
release the GIL) in a small thread pool.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image
from scipy import ndimage

from maskrcnn import pannuke
from maskrcnn.augment import color_jitter
from maskrcnn.config import Config, DataConfig

PANNUKE_SIZE = 256
# The batch entries the model reads (the rest is bookkeeping for evaluation and logging).
MODEL_INPUTS = ("image", "boxes", "classes", "masks", "valid", "ignore_boxes", "ignore_valid")
_SYNTHETIC_SEED = 2026


# -------------------------------------------------------------------------------------------- sources
class SyntheticSource:
    """A split of three PanNuke-format folds generated in memory (see :mod:`maskrcnn.synthetic`).

    Splits are those of the tfds builder, drawn by the same functions (:func:`maskrcnn.pannuke.split_keys`)
    from ``images_per_fold`` generated images per fold.
    """

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


class FoldSource:
    """The examples of one PanNuke-format fold on disk (an unzipped fold folder), as the builder makes them.

    Reads rows on demand; the ``neoplastic`` variant keeps the images holding a neoplastic nucleus, as
    the tfds builder does. ``fold`` of every example is 0 (not one of the official folds).
    """

    def __init__(self, path: str, variant: str):
        if path.endswith(".zip") and os.path.isfile(path):
            raise ValueError(f"{path} is a zip file: unzip it and pass the folder (unzip {path!r} -d DIR)")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no PanNuke-format fold folder at {path}")
        self.images, self.masks, self.types = pannuke.open_fold(pannuke.fold_files(path))
        self.variant = variant
        self.keys = [i for i in range(len(self.masks)) if pannuke.eligible(self.masks[i], variant)]

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        index = self.keys[i]
        instances, classes = pannuke.instance_and_class_maps(
            self.masks[index], self.variant, f"{self.masks.path} image {index}"
        )
        return {
            "image": pannuke.image_uint8(self.images[index], f"{self.images.path} image {index}"),
            "instances": instances,
            "classes": classes,
            "tissue": pannuke.tissue_index(str(self.types[index])),
            "fold": 0,
            "index": index,
        }


def is_fold_path(split: str) -> bool:
    """Whether a split name is a path to a fold on disk rather than a split of the built dataset."""
    return os.sep in split or os.path.exists(split)


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
                    "image": pannuke.image_uint8(image),
                    "instances": instances,
                    "classes": classes,
                    "tissue": pannuke.tissue_index(tissue),
                    "fold": fold,
                    "index": index,
                }
    return sorted(examples), examples


def open_split(data: DataConfig, split: str):
    """A random-access sequence (``len`` and ``[i]``) of the examples of ``split``.

    ``split``: a split of the built dataset (``paper_test``, ``fold3``, ``fold1+fold2``, ...) or the path
    of an unzipped PanNuke-format fold folder (read directly, whatever ``data.builder`` says).
    """
    if is_fold_path(split):
        return FoldSource(split, data.variant)
    if data.builder == "synthetic":
        return SyntheticSource(data.variant, split, getattr(data, "synthetic_images_per_fold", 24))
    if data.builder != "pannuke":
        raise ValueError(f"data.builder must be 'pannuke' or 'synthetic', got {data.builder!r}")
    import tensorflow_datasets as tfds  # reads the prepared files; the builder's code is not needed

    name = f"pannuke/{pannuke.dataset_config(data.variant)}"
    try:
        source = tfds.data_source(name, split=split, data_dir=data.data_dir)
    except Exception as error:  # tfds raises several types for a dataset that was not built
        where = data.data_dir or "~/tensorflow_datasets"
        raise FileNotFoundError(
            f"could not open {name} split {split!r} in {where} ({type(error).__name__}: {error}). "
            "Build it once with `make data MANUAL_DIR=<folder with the PanNuke folds>` (that is `tfds build "
            "maskrcnn/datasets/pannuke --manual_dir <folder> --data_dir <data_dir>`), or set "
            "data.builder=synthetic to try the pipeline on generated data."
        ) from error
    return _MergedClasses(source) if data.variant == "nuclei" else source


class _MergedClasses:
    """A source of all_classes examples seen with every nucleus in class 1 (the "nuclei" variant)."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return pannuke.merge_classes(self.source[i])


# --------------------------------------------------------------------------------------- geometry
def augment(image, instances, classes, rng: np.random.Generator, max_degrees: float):
    """Random horizontal and vertical flips and a rotation within +-max_degrees (the seed paper's).

    Args:
      image: uint8 (H, W, 3); instances: int (H, W) label map; classes: (H, W) class map or None;
      rng: draws flip h, flip v (each with probability 1/2), then the angle uniformly.

    Returns:
      the three arrays transformed alike (PIL's rotate about the image centre, counter-clockwise for a
      positive angle): the image bilinearly, the label maps by nearest neighbour, zeros where the
      rotation brings in pixels from outside (imgaug's default, which the paper used).
    """
    flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
    angle = rng.uniform(-max_degrees, max_degrees) if max_degrees > 0 else 0.0
    flip = (slice(None, None, -1 if flip_v else 1), slice(None, None, -1 if flip_h else 1))
    out = [None if a is None else np.ascontiguousarray(a[flip]) for a in (image, instances, classes)]
    if abs(angle) < 1e-3:
        return tuple(out)
    out[0] = np.asarray(Image.fromarray(out[0]).rotate(angle, Image.BILINEAR))
    for i in (1, 2):
        if out[i] is not None:  # mode "I" (int32): ids of any size survive
            dtype = out[i].dtype
            out[i] = np.asarray(Image.fromarray(out[i].astype(np.int32)).rotate(angle, Image.NEAREST))
            out[i] = out[i].astype(dtype)
    return tuple(out)


def _nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """Source pixel of each output pixel when resizing size_in -> size_out by nearest pixel centre."""
    return np.minimum(((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1)


def resize(image, instances, classes, size: int):
    """Resizes to size x size: the image bilinearly (PIL, antialiased when shrinking), the label maps by
    nearest pixel centre (output pixel i reads input pixel floor((i + 0.5) * H / size)).

    Args: image uint8 (H, H, 3); instances, classes (H, H) (classes may be None). Returns the three arrays
    at (size, size).
    """
    height = image.shape[0]
    if size == height:
        return image, instances, classes
    image = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), Image.BILINEAR))
    if size % height == 0:  # integer upscale: the same pixels as the index below, faster
        f = size // height
        nearest = lambda a: np.repeat(np.repeat(a, f, 0), f, 1)  # noqa: E731
    else:
        src = _nearest_index(height, size)
        nearest = lambda a: a[np.ix_(src, src)]  # noqa: E731
    return image, nearest(instances), None if classes is None else nearest(classes)


# ----------------------------------------------------------------------------------------- targets
def _contiguous(instances: np.ndarray, classes: np.ndarray):
    """Relabels ids to 1..K in id order; returns the int32 map and the class of each label (K + 1,)."""
    flat = instances.ravel()
    top = int(flat.max(initial=0))
    if flat.size and flat.min() < 0:
        raise ValueError(f"instance ids must be >= 0 (0 is background), got {flat.min()}")
    if top < 1 << 22:  # a lookup table: faster than np.unique
        ids = np.flatnonzero(np.bincount(flat, minlength=top + 1)[1:]) + 1
        table = np.zeros(top + 1, np.int32)
        table[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        labels = table[instances]
    else:
        ids, inverse = np.unique(flat, return_inverse=True)
        labels = (inverse.reshape(instances.shape) + (ids[0] != 0)).astype(np.int32)
        ids = ids[ids > 0]
    class_of = np.zeros(len(ids) + 1, np.int32)
    class_of[labels] = classes  # an instance has one class (maskrcnn.pannuke.instance_and_class_maps)
    class_of[0] = 0
    return labels, class_of


def instance_targets(
    instances,
    classes,
    max_instances: int,
    mini_mask_size: int | None,
    class_of: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> dict:
    """Boxes, classes and (mini-)masks of the instances of one label map, padded to ``max_instances``.

    Args:
      instances: int (S, S) label map (any ids, 0 background); classes: (S, S) class map (c + 1 for
        class c); with ``class_of`` given, ``instances`` must hold labels 0..K and ``class_of`` (K + 1,)
        their classes, and ``classes`` is ignored.
      rng: picks which instances keep a slot when there are more than ``max_instances``; None: a fixed
        seeded pick. Either way the pick does not depend on size (keeping the largest would teach the
        smallest nuclei as background).

    Returns:
      dict of boxes float32 (M, 4) yxyx on pixel edges, classes int32 (M,), masks uint8 (M, m, m) or
      (M, S, S), valid bool (M,), num_truncated int32: instances beyond M left out, ignore_boxes
      float32 (M, 4) and ignore_valid bool (M,): the first M left-out instances' boxes. Kept instances
      are in label order.
    """
    if class_of is None:
        instances, class_of = _contiguous(np.asarray(instances), np.asarray(classes))
    count = len(class_of) - 1
    areas = np.bincount(instances.ravel(), minlength=count + 1)[1:]
    present = np.flatnonzero(areas) + 1
    keep, dropped = present, present[:0]
    if len(present) > max_instances:
        pick = (rng if rng is not None else np.random.default_rng(0)).permutation(len(present))
        keep, dropped = np.sort(present[pick[:max_instances]]), np.sort(present[pick[max_instances:]])
    n = len(keep)
    slices = ndimage.find_objects(instances, max_label=count)

    def edges_of(labels):
        return np.array(
            [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in (slices[k - 1] for k in labels)]
        )

    edges = edges_of(keep)
    boxes = np.zeros((max_instances, 4), np.float32)
    out_classes = np.zeros(max_instances, np.int32)
    ignore_boxes = np.zeros((max_instances, 4), np.float32)
    num_ignored = min(len(dropped), max_instances)
    if n:
        boxes[:n] = edges
        out_classes[:n] = class_of[keep]
    if num_ignored:
        ignore_boxes[:num_ignored] = edges_of(dropped[:num_ignored])
    if mini_mask_size is None:
        masks = np.zeros((max_instances, *instances.shape), np.uint8)
        masks[:n] = instances[None] == keep[:, None, None]
    else:
        m = mini_mask_size
        masks = np.zeros((max_instances, m, m), np.uint8)
        if n:
            y1, x1, y2, x2 = (edges[:, i : i + 1] for i in range(4))
            centres = np.arange(m) + 0.5
            # The same float64 expression as the reference, so the same pixels are picked at exact ties.
            rows = (y1 + centres * (y2 - y1) / m).astype(np.int64)  # (n, m)
            cols = (x1 + centres * (x2 - x1) / m).astype(np.int64)
            masks[:n] = instances[rows[:, :, None], cols[:, None, :]] == keep[:, None, None]
    return {
        "boxes": boxes,
        "classes": out_classes,
        "masks": masks,
        "valid": np.arange(max_instances) < n,
        "num_truncated": np.int32(len(present) - n),
        "ignore_boxes": ignore_boxes,
        "ignore_valid": np.arange(max_instances) < num_ignored,
    }


def prepare(example: dict, data: DataConfig, rng: np.random.Generator | None = None) -> dict:
    """One example as model inputs and targets; ``rng`` given: with augmentation (if ``data.augment``).

    Returns the batch entries of one example (see the module docstring) without the batch axis.
    """
    image = np.asarray(example["image"], np.uint8)
    instances = np.asarray(example["instances"])
    classes = np.asarray(example["classes"])
    if image.shape[:2] != instances.shape or instances.shape != classes.shape:
        raise ValueError(
            f"example {example.get('fold')}/{example.get('index')}: image {image.shape}, instances "
            f"{instances.shape} and classes {classes.shape} must share (H, W)"
        )
    labels, class_of = _contiguous(instances, classes)
    if rng is not None and data.augment:
        image, labels, _ = augment(image, labels, None, rng, data.max_rotation_degrees)
        image = color_jitter(
            image,
            rng,
            hed=data.hed_jitter,
            brightness=data.brightness,
            contrast=data.contrast,
            saturation=data.saturation,
        )
    scale = data.image_size / image.shape[0]
    image, labels, _ = resize(image, labels, None, data.image_size)
    targets = instance_targets(
        labels, None, data.max_instances, data.mini_mask_size, class_of=class_of, rng=rng
    )
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
def _batched(jobs: list[list], work, workers: int, ahead: int = 2) -> Iterator[dict]:
    """Runs ``work`` on every item of every job (a batch) in a thread pool, ``ahead`` batches ahead."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        try:
            for job in jobs:
                pending.append([pool.submit(work, *item) for item in job])
                if len(pending) > ahead:
                    yield _stack([f.result() for f in pending.pop(0)])
            while pending:
                yield _stack([f.result() for f in pending.pop(0)])
        finally:  # an abandoned iterator does not finish its prefetched batches
            for futures in pending:
                for f in futures:
                    f.cancel()


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def steps_per_epoch(config: Config) -> int:
    """Full batches in one pass over the training split, at least 1 (the remainder waits for another
    epoch's order)."""
    return max(1, len(open_split(config.data, config.data.train_split)) // config.train.batch_size)


def _epoch_order(n: int, seed: int, epoch: int, count: int) -> np.ndarray:
    """``count`` example positions for one epoch: seeded permutations of range(n), concatenated as needed."""
    rounds = -(-count // n)
    return np.concatenate([np.random.default_rng([seed, epoch, r]).permutation(n) for r in range(rounds)])[
        :count
    ]


def make_train_iterator(config: Config, *, epoch: int, start_step: int = 0) -> Iterator[dict]:
    """The shuffled, augmented training batches of ``epoch``, from batch ``start_step`` on.

    An epoch has ``train.steps_per_epoch`` batches if set, else :func:`steps_per_epoch`. The order (a
    permutation seeded by ``train.seed`` and the epoch) and each example's augmentation (seeded by the
    seed, the epoch and the example's position in the epoch) do not depend on where the epoch starts, so
    a resumed run sees exactly the batches an uninterrupted run would.
    """
    source = open_split(config.data, config.data.train_split)
    if len(source) == 0:
        raise ValueError(f"training split {config.data.train_split!r} is empty")
    batch, seed = config.train.batch_size, config.train.seed
    steps = getattr(config.train, "steps_per_epoch", None) or steps_per_epoch(config)
    order = _epoch_order(len(source), seed, epoch, steps * batch)
    jobs = [
        [(int(order[i]), [seed, epoch, i]) for i in range(s * batch, (s + 1) * batch)]
        for s in range(start_step, steps)
    ]

    def work(position, example_seed):
        return prepare(source[position], config.data, np.random.default_rng(example_seed))

    return _batched(jobs, work, _workers())


def make_eval_iterator(config: Config, split: str, *, batch_size: int | None = None) -> Iterator[dict]:
    """Batches of ``split`` in the source's order, without augmentation; the last one is padded by
    repeating the last example, with ``example_valid`` False. Adds the original ``instances`` int32
    (B, 256, 256) and ``class_map`` uint8 (B, 256, 256) for evaluation at PanNuke's resolution."""
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
