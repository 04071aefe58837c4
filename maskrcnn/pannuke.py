"""PanNuke's file format, fold discovery, instance maps and the split protocols (pure numpy).

PanNuke (Gamper et al. 2019, 2020) comes as three folds, each with ``images.npy`` float64 (N, 256, 256, 3)
holding 0-255 values, ``masks.npy`` float64 (N, 256, 256, 6) whose channels 0-4 hold the instance ids of
the classes neoplastic, inflammatory, connective, dead, epithelial (channel 5 is background) and
``types.npy`` (N,) the tissue of each image. The tfds builder (``maskrcnn/datasets/pannuke``) and the
in-memory synthetic source both go through these functions, so they produce the same examples and splits.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import threading
from collections.abc import Sequence

import numpy as np

# The five nucleus classes, in the channel order of masks.npy (channel 5 is background).
PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
# The 19 tissues, in the order of the tfds dataset's ClassLabel.
PANNUKE_TISSUES = (
    "Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus", "HeadNeck", "Kidney",
    "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin", "Stomach", "Testis", "Thyroid", "Uterus",
)  # fmt: skip
FOLDS = (1, 2, 3)
PATCH_SIZE = 256  # side of a PanNuke patch, in pixels at 40x (0.25 um/px)
FILES = ("images.npy", "masks.npy", "types.npy")
# The seed paper's test set size; drawn without replacement here (its code drew with replacement).
PAPER_TEST_IMAGES = 490
PAPER_SPLIT_SEED = 20240607  # fixed, so that everyone gets the same leak-free paper_* splits


@dataclasses.dataclass(frozen=True)
class Variant:
    """What a data variant reads from PanNuke, what the model learns and what it is scored on."""

    dataset: str  # the tfds builder config that holds its images
    channels: int  # the first `channels` class channels of masks.npy are read
    merged: bool  # every nucleus read becomes one class
    all_images: bool  # False: only the images holding a nucleus of its channels
    class_names: tuple[str, ...]  # the model's classes 1..K
    # The PanNuke classes (channels of the (H, W, 6) masks) the variant is scored on: a merged variant's
    # one class sits in channel 0 of both the true and the predicted masks.
    scored_classes: tuple[str, ...]


# The tfds dataset has the first two as configs; "nuclei" (every nucleus as one class, for a binary
# detector) reads the all_classes dataset and merges the classes as it loads.
VARIANTS = {
    "neoplastic": Variant("neoplastic", 1, False, False, PANNUKE_CLASSES[:1], PANNUKE_CLASSES[:1]),
    "all_classes": Variant("all_classes", 5, False, True, PANNUKE_CLASSES, PANNUKE_CLASSES),
    "nuclei": Variant("all_classes", 5, True, True, ("nucleus",), PANNUKE_CLASSES[:1]),
}


def variant_of(name: str) -> Variant:
    """The :class:`Variant` called ``name`` (a key of :data:`VARIANTS`)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"data.variant must be one of {tuple(VARIANTS)}, got {name!r}") from None


# ---------------------------------------------------------------------------------------------- files
def _fold_names(fold: int) -> list[str]:
    """Names the fold's folder or zip has on the PanNuke page and its mirrors."""
    return [f"fold_{fold}", f"Fold {fold}", f"fold{fold}", f"Fold_{fold}", f"fold {fold}", f"Fold{fold}"]


def find_fold(root: str, fold: int) -> str:
    """Where one fold is under ``root``: its folder or its zip, as downloaded.

    Accepts the names the downloads have (``fold_1.zip``, ``Fold 1.zip``, ``fold1/``, ...); a folder
    counts only if it holds the three .npy files somewhere inside (see :func:`fold_files`).

    Raises:
      FileNotFoundError naming the fold, the folder searched and the names tried.
    """
    for name in _fold_names(fold):
        folder = os.path.join(root, name)
        if os.path.isdir(folder) and _npy_files(folder):
            return folder
        if os.path.isfile(folder + ".zip"):
            return folder + ".zip"
    tried = ", ".join(f"'{n}/' or '{n}.zip'" for n in _fold_names(fold)[:3])
    raise FileNotFoundError(
        f"PanNuke fold {fold} not found in {os.path.abspath(root)}: looked for {tried} (and similar) holding "
        f"{', '.join(FILES)}. Download the three folds from "
        "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke and put them (zipped or not) in that folder."
    )


def fold_files(folder: str) -> dict[str, str]:
    """The fold's three files anywhere under ``folder`` (an unzipped fold): {"images.npy": path, ...}."""
    found = _npy_files(folder)
    if found is None:
        raise FileNotFoundError(f"{folder} does not contain all of {', '.join(FILES)}")
    return found


def _npy_files(folder: str) -> dict[str, str] | None:
    found = {}
    for name in FILES:
        hits = sorted(glob.glob(os.path.join(glob.escape(folder), "**", name), recursive=True))
        if not hits:
            return None
        found[name] = hits[0]
    return found


class NpyRows:
    """Reads the rows of a large .npy file one at a time (PanNuke's masks.npy is 8 GB a fold).

    Seeks to each row instead of loading or memory-mapping the file, so it also works on file objects
    that cannot be memory-mapped (``tf.io.gfile``, which tfds builders are expected to use). Safe to read
    from several threads (the evaluation's loader does): a lock keeps each seek with its read.
    """

    def __init__(self, path: str, opener=open):
        self.path, self._file, self._lock = path, opener(path, "rb"), threading.Lock()
        fmt = np.lib.format
        try:
            version = fmt.read_magic(self._file)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, self.dtype = read_header(self._file)
        except ValueError as error:
            raise ValueError(f"{path} is not a readable .npy file ({error}); download it again") from None
        if fortran or self.dtype.hasobject or not shape:
            raise ValueError(
                f"{path}: expected a C-ordered numeric array with a leading image axis, got shape {shape}, "
                f"dtype {self.dtype}, fortran_order={fortran}; re-save it with np.save(path, np.asarray(a))"
            )
        self.shape, self._offset = shape, self._file.tell()
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._file.seek(0, 2)
        expected, size = self._offset + shape[0] * self._row_bytes, self._file.tell()
        if size < expected:
            raise ValueError(
                f"{path} is truncated: its header promises {shape} {self.dtype} ({expected} bytes) but the "
                f"file has {size} bytes; download or unzip it again"
            )

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {self.path} with {len(self)} rows")
        with self._lock:
            self._file.seek(self._offset + i * self._row_bytes)
            row = self._file.read(self._row_bytes)
        return np.frombuffer(row, self.dtype).reshape(self.shape[1:])


def open_fold(paths: dict[str, str], opener=open, size: int | None = 256):
    """A fold's images and masks as :class:`NpyRows` (float (size, size, 3) and (size, size, 6) rows) and
    its tissue types as (N,) str, checked against each other and against PanNuke's 19 tissues.

    Raises:
      ValueError naming the file whose shape or contents are not PanNuke's (``size=None``: any H, W).
    """
    images, masks = NpyRows(paths["images.npy"], opener), NpyRows(paths["masks.npy"], opener)
    with opener(paths["types.npy"], "rb") as f:
        try:
            types = np.asarray(np.load(f)).astype(str)  # a unicode array in PanNuke; never unpickled
        except ValueError as error:
            raise ValueError(f"{paths['types.npy']}: not an array of tissue names ({error})") from None
    hw = (size, size) if size else images.shape[1:3]
    for rows, channels, path in ((images, 3, paths["images.npy"]), (masks, 6, paths["masks.npy"])):
        if rows.shape[1:] != (*hw, channels):
            raise ValueError(f"{path}: expected shape (N, {hw[0]}, {hw[1]}, {channels}), got {rows.shape}")
    if len(images) == 0:
        raise ValueError(f"{paths['images.npy']} holds no images: an empty fold; {REBUILD}")
    if not (len(images) == len(masks) == len(types)) or types.ndim != 1:
        raise ValueError(
            f"the fold's files disagree on the number of images: {paths['images.npy']} has {len(images)}, "
            f"{paths['masks.npy']} {len(masks)} and {paths['types.npy']} {types.shape}"
        )
    unknown = sorted(set(types.tolist()) - set(PANNUKE_TISSUES))
    if unknown:
        raise ValueError(f"{paths['types.npy']}: unknown tissues {unknown}; PanNuke's are {PANNUKE_TISSUES}")
    return images, masks, types


# ------------------------------------------------------------------------------------------ examples
REBUILD = "fix the file (or download it again) and build again: a failed build leaves no dataset behind"


def check_mask(mask: np.ndarray, where: str = "mask") -> np.ndarray:
    """The instance channels (0-4) of a PanNuke mask as float64, after checking that they hold instance ids.

    Raises:
      ValueError naming ``where`` (the file and image) for NaN or infinite values, negative ids, ids that
      are not whole numbers (rounding them would merge neighbouring nuclei) and ids beyond int32.
    """
    ids = np.asarray(mask[..., : len(PANNUKE_CLASSES)], np.float64)
    problems = []
    if not np.all(np.isfinite(ids)):
        problems.append(f"{int(np.sum(~np.isfinite(ids)))} NaN or infinite values")
    finite = np.where(np.isfinite(ids), ids, 0.0)
    if np.any(finite < 0):
        problems.append(f"negative instance ids (smallest {finite.min():g})")
    fractional = np.abs(finite - np.rint(finite)) > 1e-6
    if np.any(fractional):
        problems.append(
            f"{int(fractional.sum())} values that are not whole numbers (e.g. {finite[fractional][0]:g})"
        )
    if finite.max(initial=0) > np.iinfo(np.int32).max:
        problems.append(f"instance id {finite.max():.0f} beyond int32")
    if problems:
        raise ValueError(
            f"{where}: masks channels 0-4 must hold instance ids, found {'; '.join(problems)}; {REBUILD}"
        )
    return finite


def image_uint8(image: np.ndarray, where: str = "image") -> np.ndarray:
    """A PanNuke image (float 0-255) as uint8 (H, W, 3).

    Raises:
      ValueError naming ``where`` for NaN or values outside 0-255, and for an image scaled to 0-1 (it
      would become black).
    """
    pixels = np.asarray(image, np.float64)
    if not np.all(np.isfinite(pixels)):
        raise ValueError(
            f"{where}: {int(np.sum(~np.isfinite(pixels)))} NaN or infinite pixel values; {REBUILD}"
        )
    low, high = pixels.min(initial=0), pixels.max(initial=0)
    if low < 0 or high > 255.5:
        raise ValueError(f"{where}: pixel values {low:g}..{high:g} are outside 0-255; {REBUILD}")
    if 0 < high <= 1.0:
        raise ValueError(
            f"{where}: pixel values 0..{high:g} look scaled to 0-1; PanNuke's are 0-255. {REBUILD}"
        )
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def instance_and_class_maps(
    mask: np.ndarray, variant: str = "all_classes", where: str = "mask"
) -> tuple[np.ndarray, np.ndarray]:
    """One image's instance label map and class map from its (H, W, 6) PanNuke mask.

    Instance ids are kept exactly as PanNuke stores them (read as float64, turned into int32 without a
    narrower type on the way: the seed paper's uint8 cast wrapped ids above 255). PanNuke numbers the
    nuclei of an image across its channels; if a channel reuses an id of an earlier channel for another
    nucleus, that nucleus gets a new id above the image's largest.

    Args:
      mask: (H, W, 6) float; variant: "all_classes" keeps the five classes, "neoplastic" only channel 0,
        "nuclei" all five channels as one class. where: names the mask in errors (:func:`check_mask`).

    Returns:
      instances int32 (H, W) (0 background) and classes uint8 (H, W): 0 background, c + 1 for class c
      (the index into the variant's class names).
    """
    v = variant_of(variant)
    channels = v.channels
    ids = np.rint(check_mask(mask, where)[..., :channels]).astype(np.int64)
    instances = np.zeros(ids.shape[:2], np.int64)
    classes = np.zeros(ids.shape[:2], np.uint8)
    next_id = int(ids.max(initial=0)) + 1
    for c in range(channels):
        channel = ids[..., c]
        on = channel > 0
        clash = np.intersect1d(np.unique(channel[on]), np.unique(instances[instances > 0]))
        if clash.size:
            renumbered = next_id + np.searchsorted(clash, channel)
            channel = np.where(np.isin(channel, clash), renumbered, channel)
            next_id += clash.size
        instances = np.where(on, channel, instances)
        classes = np.where(on, 1 if v.merged else c + 1, classes).astype(np.uint8)
    if instances.max(initial=0) > np.iinfo(np.int32).max:
        raise ValueError(f"instance id {instances.max()} does not fit int32")
    return instances.astype(np.int32), classes


def pannuke_masks(instances: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`instance_and_class_maps`: (..., H, W) maps -> (..., H, W, 6) float64 masks."""
    out = np.zeros((*instances.shape, 6), np.float64)
    for c in range(len(PANNUKE_CLASSES)):
        out[..., c] = np.where(classes == c + 1, instances, 0)
    out[..., 5] = (instances == 0).astype(np.float64)
    return out


def eligible(mask: np.ndarray, name: str) -> bool:
    """Whether an image belongs to the variant (neoplastic: it holds at least one neoplastic nucleus)."""
    v = variant_of(name)
    return v.all_images or bool(np.any(np.asarray(mask[..., : v.channels]) > 0))


def dataset_config(name: str) -> str:
    """The tfds builder config that holds a variant's images ("nuclei" merges all_classes' classes)."""
    return variant_of(name).dataset


def merge_classes(example: dict) -> dict:
    """An example with every nucleus in class 1 (a merged variant read from its dataset)."""
    return {**example, "classes": (np.asarray(example["classes"]) > 0).astype(np.uint8)}


def tissue_index(name: str) -> int:
    """Index of a tissue in :data:`PANNUKE_TISSUES` (the tfds ClassLabel)."""
    try:
        return PANNUKE_TISSUES.index(str(name))
    except ValueError:
        raise ValueError(f"unknown tissue {name!r}; PanNuke's tissues are {PANNUKE_TISSUES}") from None


# ------------------------------------------------------------------------------------------- splits
def paper_splits(keys: Sequence[tuple[int, int]], *, seed: int = PAPER_SPLIT_SEED) -> dict[str, list]:
    """The seed paper's protocol without its leak: disjoint test, train and validation sets.

    From the pooled eligible images of the three folds (``keys`` of (fold, index)), a seeded permutation
    takes min(490, N // 5) images for ``paper_test`` (490, the paper's figure, whenever N >= 2450, as on
    PanNuke), then the rest is split 80/20 into ``paper_train`` and ``paper_validation``. Keys come back
    sorted within each split.
    """
    keys = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_test = min(PAPER_TEST_IMAGES, len(keys) // 5)
    rest = order[n_test:]
    n_train = int(round(0.8 * len(rest)))
    pick = lambda idx: sorted(keys[i] for i in idx)  # noqa: E731
    return {
        "paper_train": pick(rest[:n_train]),
        "paper_validation": pick(rest[n_train:]),
        "paper_test": pick(order[:n_test]),
    }


def split_keys(eligible_keys: Sequence[tuple[int, int]]) -> dict[str, list]:
    """Every split of the dataset: ``fold1``-``fold3`` (official protocol) and the ``paper_*`` splits."""
    splits = {f"fold{f}": sorted(k for k in eligible_keys if k[0] == f) for f in FOLDS}
    splits.update(paper_splits(eligible_keys))
    return splits
