"""The PanNuke builder on dummy_data/ (three synthetic folds of three images, see make_dummy_data.py)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from maskrcnn.datasets.pannuke import pannuke_dataset_builder


class _Tfrecord:
    """tfds' standard builder test reads through ``as_dataset``, so it builds the tfrecord format.

    The folds and the paper splits hold the same images by design; tfds checks that the splits not
    listed in OVERLAPPING_SPLITS (here the three paper splits) share no example.
    """

    DATASET_CLASS = pannuke_dataset_builder.Builder
    OVERLAPPING_SPLITS = ["fold1", "fold2", "fold3"]

    def _make_builder(self, config=None):
        return self.dataset_class(
            data_dir=self.tmp_dir, config=config, version=self.VERSION, file_format="tfrecord"
        )


class PannukeNeoplasticTest(_Tfrecord, tfds.testing.DatasetBuilderTestCase):
    BUILDER_CONFIG_NAMES_TO_TEST = ["neoplastic"]
    # The second image of fold 2 has no neoplastic nucleus: 8 images, paper_test 8 // 5 = 1, then 6 / 1.
    SPLITS = {"fold1": 3, "fold2": 2, "fold3": 3, "paper_train": 6, "paper_validation": 1, "paper_test": 1}


class PannukeAllClassesTest(_Tfrecord, tfds.testing.DatasetBuilderTestCase):
    BUILDER_CONFIG_NAMES_TO_TEST = ["all_classes"]
    # 9 images: paper_test 9 // 5 = 1, then 80/20 of 8.
    SPLITS = {"fold1": 3, "fold2": 3, "fold3": 3, "paper_train": 6, "paper_validation": 2, "paper_test": 1}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both configs built from dummy_data as array_record, the way `make data` builds PanNuke."""
    data_dir = tmp_path_factory.mktemp("tfds")
    manual = str(pannuke_dataset_builder.__file__).rsplit("/", 1)[0] + "/dummy_data"
    for config in ("neoplastic", "all_classes"):
        builder = pannuke_dataset_builder.Builder(config=config, data_dir=str(data_dir))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return str(data_dir)


def test_data_source_reads_array_record_and_ids_survive(built):
    from maskrcnn.synthetic import make_fold

    source = tfds.data_source("pannuke/all_classes", split="fold1", data_dir=built)
    _, masks, types = make_fold(3, seed=7 * 10 + 1)
    for i in range(len(source)):
        example = source[i]
        assert example["instances"].dtype == np.int32
        index = int(example["index"])
        # Ids as PanNuke stores them, above 255 and 65535 too, and classes as the channel they came from.
        expected = masks[index, ..., :5].max(-1).astype(np.int64)
        np.testing.assert_array_equal(example["instances"], expected)
        channel = np.argmax(masks[index, ..., :5] > 0, axis=-1) + 1
        np.testing.assert_array_equal(example["classes"], np.where(expected > 0, channel, 0))
        assert example["tissue"] == pannuke_dataset_builder.PANNUKE_TISSUES.index(types[index])
    assert max(int(source[i]["instances"].max()) for i in range(len(source))) > 255


def test_neoplastic_config_keeps_only_neoplastic_nuclei(built):
    source = tfds.data_source("pannuke/neoplastic", split="fold2", data_dir=built)
    assert sorted(int(source[i]["index"]) for i in range(len(source))) == [0, 2]
    for i in range(len(source)):
        example = source[i]
        assert set(np.unique(example["classes"])) <= {0, 1}
        assert example["instances"].max() > 0


@pytest.mark.parametrize("config", ["neoplastic", "all_classes"])
def test_paper_splits_are_disjoint_and_cover_the_folds(built, config):
    def keys(split):
        source = tfds.data_source(f"pannuke/{config}", split=split, data_dir=built)
        return [(int(source[i]["fold"]), int(source[i]["index"])) for i in range(len(source))]

    paper = [set(keys(s)) for s in ("paper_train", "paper_validation", "paper_test")]
    assert sum(len(s) for s in paper) == len(set.union(*paper))  # no image in two splits
    folds = set().union(*(keys(f"fold{f}") for f in (1, 2, 3)))
    assert set.union(*paper) == folds


def test_tfds_load_reads_the_same_examples_as_data_source(built):
    source = tfds.data_source("pannuke/all_classes", split="fold3", data_dir=built)
    by_index = {int(source[i]["index"]): source[i] for i in range(len(source))}
    loaded = list(tfds.as_numpy(tfds.load("pannuke/all_classes", split="fold3", data_dir=built)))
    assert len(loaded) == len(by_index) == 3
    for example in loaded:
        expected = by_index[int(example["index"])]
        for key in ("image", "instances", "classes", "tissue", "fold"):
            np.testing.assert_array_equal(example[key], expected[key])
