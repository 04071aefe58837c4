"""Where examples come from: the built tfds dataset, a PanNuke-format fold folder, or generated folds."""

from __future__ import annotations

import functools
import os

from maskrcnn import pannuke
from maskrcnn.config import DataConfig

PANNUKE_SIZE = pannuke.PATCH_SIZE  # side of a PanNuke patch
_SYNTHETIC_SEED = 2026


class SyntheticSource:
    """A split of three PanNuke-format folds generated in memory (see :mod:`maskrcnn.synthetic`).

    Splits are those of the tfds builder, drawn by the same functions (:func:`maskrcnn.pannuke.split_keys`)
    from ``images_per_fold`` generated images per fold, and joined by ``+`` as tfds joins them
    (``fold1+fold2``).
    """

    def __init__(self, variant: str, split: str, images_per_fold: int):
        keys, self._examples = _synthetic_pool(variant, images_per_fold)
        splits = pannuke.split_keys(keys)
        unknown = [part for part in split.split("+") if part not in splits]
        if unknown:
            raise ValueError(f"unknown split {unknown[0]!r} in {split!r}; the splits are {sorted(splits)}")
        self.keys = [key for part in split.split("+") for key in splits[part]]

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
    return _MergedClasses(source) if pannuke.variant_of(data.variant).merged else source


class _MergedClasses:
    """A source of examples seen with every nucleus in class 1 (a merged variant, e.g. "nuclei")."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return pannuke.merge_classes(self.source[i])
