"""PanNuke (Gamper et al. 2019, 2020): H&E patches of 19 tissues with five classes of nuclei.

    tfds build data/pannuke --manual_dir ~/pannuke --file_format array_record   # or: make data

Configs: ``neoplastic`` (the seed paper's data: images holding at least one neoplastic nucleus, only
the neoplastic nuclei) and ``all_classes`` (every image, all five classes). Splits: ``fold1``-``fold3``
(the official protocol trains on two folds and tests on the third) and ``paper_train``,
``paper_validation``, ``paper_test`` (the seed paper's protocol without its leak, see
``maskrcnn.pannuke.paper_splits``). Written as array_record by default, so ``tfds.data_source`` reads it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from maskrcnn import pannuke
from maskrcnn.config import PANNUKE_CLASSES
from maskrcnn.evaluation.pannuke import PANNUKE_TISSUES

_SIZE = 256


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for PanNuke."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: two configs, official folds and leak-free paper splits."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name="neoplastic",
            description="Images with a neoplastic nucleus; only neoplastic nuclei (the seed paper's data).",
        ),
        tfds.core.BuilderConfig(name="all_classes", description="Every image; the five classes of nuclei."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    PanNuke cannot be downloaded automatically. Download its three folds from
    https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke (fold_1.zip, fold_2.zip, fold_3.zip; some mirrors
    call them "Fold 1.zip" etc.) and put them in one folder, zipped or unzipped, e.g.

        ~/pannuke/fold_1.zip  ~/pannuke/fold_2.zip  ~/pannuke/fold_3.zip
    or  ~/pannuke/Fold 1/images/fold1/images.npy, .../types.npy, ~/pannuke/Fold 1/masks/fold1/masks.npy, ...

    then run `tfds build data/pannuke --manual_dir ~/pannuke --file_format array_record` (or `make data
    MANUAL_DIR=~/pannuke`). Each fold needs images.npy, masks.npy and types.npy anywhere inside it.
    """

    def __init__(self, *, file_format=None, **kwargs):
        # array_record unless asked otherwise: it is what tfds.data_source (random access) reads.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        variant = self.builder_config.name
        classes = PANNUKE_CLASSES[:1] if variant == "neoplastic" else PANNUKE_CLASSES
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(_SIZE, _SIZE, 3), dtype=np.uint8),
                    "instances": tfds.features.Tensor(shape=(_SIZE, _SIZE), dtype=np.int32, encoding="zlib"),
                    "classes": tfds.features.Tensor(shape=(_SIZE, _SIZE), dtype=np.uint8, encoding="zlib"),
                    "tissue": tfds.features.ClassLabel(names=PANNUKE_TISSUES),
                    "fold": tfds.features.Scalar(dtype=np.int32),
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            homepage="https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke",
            metadata=tfds.core.MetadataDict(class_names=list(classes)),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        variant = self.builder_config.name
        folds = {}
        for fold in pannuke.FOLDS:
            location = pannuke.find_fold(str(dl_manager.manual_dir), fold)
            if location.endswith(".zip"):
                location = str(dl_manager.extract(location))
            folds[fold] = pannuke.fold_files(location)
        keys = []
        for fold, paths in folds.items():
            _, masks, _ = pannuke.open_fold(paths, tf.io.gfile.GFile)
            keys += [(fold, i) for i in range(len(masks)) if pannuke.eligible(masks[i], variant)]
        return {
            name: self._generate_examples(folds, split) for name, split in pannuke.split_keys(keys).items()
        }

    def _generate_examples(self, folds, keys):
        variant = self.builder_config.name
        opened = {}
        for fold, index in keys:
            if fold not in opened:
                opened[fold] = pannuke.open_fold(folds[fold], tf.io.gfile.GFile)
            images, masks, types = opened[fold]
            instances, classes = pannuke.instance_and_class_maps(masks[index], variant)
            yield (
                f"{fold}-{index}",
                {
                    "image": np.clip(np.rint(images[index]), 0, 255).astype(np.uint8),
                    "instances": instances,
                    "classes": classes,
                    "tissue": str(types[index]),
                    "fold": fold,
                    "index": index,
                },
            )
