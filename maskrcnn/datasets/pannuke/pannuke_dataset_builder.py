"""PanNuke (Gamper et al. 2019, 2020): H&E patches of 19 tissues with five classes of nuclei.

    tfds build maskrcnn/datasets/pannuke --manual_dir ~/pannuke --file_format array_record   # or: make data

Configs: ``neoplastic`` (the seed paper's data: images holding at least one neoplastic nucleus, only
the neoplastic nuclei) and ``all_classes`` (every image, all five classes). Splits: ``fold1``-``fold3``
(the official protocol trains on two folds and tests on the third) and ``paper_train``,
``paper_validation``, ``paper_test`` (the seed paper's protocol without its leak, see
``maskrcnn.pannuke.paper_splits``). Written as tfrecord and array_record by default, so ``tfds.load`` and
``tfds.data_source`` both read it (``--file_format tfrecord`` writes tfrecord only).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from maskrcnn import pannuke
from maskrcnn.pannuke import PANNUKE_TISSUES

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

    then run `tfds build maskrcnn/datasets/pannuke --manual_dir ~/pannuke --file_format array_record` (or
    `make data MANUAL_DIR=~/pannuke`). Each fold needs images.npy, masks.npy and types.npy anywhere inside it.
    """

    def __init__(self, *, file_format=None, **kwargs):
        # By default (or asked for array_record) both formats are written: tfrecord, which tfds.load
        # reads, and array_record, which tfds.data_source (random access) reads. tfds 4.9 reads each
        # format with one of the two only, and converts tfrecord to array_record but not back.
        fmt = tfds.core.FileFormat
        self._with_array_record = file_format is None or fmt.from_value(file_format) == fmt.ARRAY_RECORD
        super().__init__(file_format="tfrecord" if self._with_array_record else file_format, **kwargs)

    def _download_and_prepare(self, dl_manager, download_config):
        # tfds builds in an incomplete.* folder beside the dataset's and renames it when done; a build
        # killed (SIGKILL, power loss) leaves its folder behind. Remove those (one build at a time).
        current = os.path.normpath(str(self.data_path))
        for stale in glob.glob(os.path.join(glob.escape(os.path.dirname(current)), "incomplete.*")):
            if os.path.normpath(stale) != current:
                logging.warning("removing %s, left by a build that was stopped", stale)
                shutil.rmtree(stale, ignore_errors=True)
        super()._download_and_prepare(dl_manager, download_config)
        if not self._with_array_record:
            return
        # Still inside tfds' incomplete.* folder: a failure here leaves no dataset behind either.
        adapters = tfds.core.file_adapters.ADAPTER_FOR_FORMAT
        source, target = adapters[tfds.core.FileFormat.TFRECORD], adapters[tfds.core.FileFormat.ARRAY_RECORD]
        for path in sorted(self.data_path.glob("*.tfrecord-*")):
            records = ((i, bytes(r.numpy())) for i, r in enumerate(source.make_tf_data(path)))
            target.write_examples(path.parent / path.name.replace(".tfrecord-", ".array_record-"), records)

    def _info(self) -> tfds.core.DatasetInfo:
        variant = self.builder_config.name
        classes = pannuke.variant_of(variant).class_names
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
            # Declared here, not added after writing: tfds 4.9 restores it from dataset_info.json only
            # into the proto, so a builder reading the dataset would not see it.
            alternative_file_formats=["array_record"] if self._with_array_record else [],
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
            _, masks, _ = pannuke.open_fold(paths, tf.io.gfile.GFile)  # checks shapes, lengths, tissues
            if pannuke.variant_of(variant).all_images:
                keys += [(fold, i) for i in range(len(masks))]
            else:  # one pass over the fold's masks, a row at a time
                keys += [
                    (fold, i)
                    for i in range(len(masks))
                    if pannuke.eligible(
                        pannuke.check_mask(masks[i], f"{paths['masks.npy']} image {i}"), variant
                    )
                ]
        return {
            name: self._generate_examples(folds, split) for name, split in pannuke.split_keys(keys).items()
        }

    def _generate_examples(self, folds, keys):
        variant = self.builder_config.name
        opened, blank = {}, []
        for fold, index in keys:
            if fold not in opened:
                opened[fold] = pannuke.open_fold(folds[fold], tf.io.gfile.GFile)
            images, masks, types = opened[fold]
            instances, classes = pannuke.instance_and_class_maps(
                masks[index], variant, f"{folds[fold]['masks.npy']} image {index}"
            )
            image = pannuke.image_uint8(images[index], f"{folds[fold]['images.npy']} image {index}")
            if not image.any():
                blank.append(f"{fold}-{index}")
            yield (
                f"{fold}-{index}",
                {
                    "image": image,
                    "instances": instances,
                    "classes": classes,
                    "tissue": str(types[index]),
                    "fold": fold,
                    "index": index,
                },
            )
        if blank:  # may be real (a failed scan), or a zero-filled images.npy: say so, do not stop
            logging.warning(
                "%d all-black images (fold-index %s%s): check images.npy",
                len(blank),
                ", ".join(blank[:10]),
                ", ..." if len(blank) > 10 else "",
            )
