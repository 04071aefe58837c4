import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from maskrcnn import input_pipeline as ip
from maskrcnn.config import load_config
from tests.model.helpers import batch_from_labels, make_instances


def config_for(name="tiny", **data):
    config = load_config(name)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, builder="synthetic", **data))


def test_train_batch_shapes_and_dtypes():
    config = config_for()
    batch = next(ip.make_train_iterator(config, epoch=0))
    b, s, m, k = (
        config.train.batch_size,
        config.data.image_size,
        config.data.max_instances,
        config.data.mini_mask_size,
    )
    expected = {
        "image": ((b, s, s, 3), np.uint8),
        "boxes": ((b, m, 4), np.float32),
        "classes": ((b, m), np.int32),
        "masks": ((b, m, k, k), np.uint8),
        "valid": ((b, m), np.bool_),
        "num_truncated": ((b,), np.int32),
        "tissue": ((b,), np.int32),
        "fold": ((b,), np.int32),
        "index": ((b,), np.int32),
        "scale": ((b,), np.float32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (s_, np.dtype(d)) for k, (s_, d) in expected.items()
    }
    assert batch["valid"].any()
    assert np.all(batch["classes"][batch["valid"]] == 1) and np.all(batch["classes"][~batch["valid"]] == 0)
    np.testing.assert_allclose(batch["scale"], s / 256)


def test_targets_match_the_independent_batch_builder():
    rng = np.random.default_rng(0)
    labels = make_instances(rng, 96, 9) * 1000  # sparse, large ids
    ours = ip.instance_targets(labels, (labels > 0).astype(np.uint8), 16, 14)
    ref = batch_from_labels([labels], 16, 14)
    order_ours = np.lexsort(ours["boxes"].T[::-1])
    order_ref = np.lexsort(ref["boxes"][0].T[::-1])
    np.testing.assert_array_equal(ours["boxes"][order_ours], ref["boxes"][0][order_ref])
    np.testing.assert_array_equal(ours["masks"][order_ours], ref["masks"][0][order_ref])
    assert ours["valid"].sum() == 9 and ours["num_truncated"] == 0


def test_full_masks_have_their_box_and_truncation_keeps_the_largest():
    labels = np.zeros((32, 32), np.int32)
    labels[1:4, 1:4] = 5  # 9 px
    labels[10:20, 10:15] = 7  # 50 px
    labels[25:27, 25:31] = 9  # 12 px
    out = ip.instance_targets(labels, (labels > 0).astype(np.uint8), 2, None)
    assert out["num_truncated"] == 1 and out["valid"].tolist() == [True, True]
    np.testing.assert_array_equal(out["boxes"], [[10, 10, 20, 15], [25, 25, 27, 31]])  # in id order
    for box, mask in zip(out["boxes"], out["masks"], strict=True):
        rows, cols = np.nonzero(mask)
        np.testing.assert_array_equal(box, [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])


def test_augmentation_moves_image_and_labels_together():
    rng = np.random.default_rng(1)
    labels = make_instances(rng, 64, 8, radius=(5, 8)) * 300
    image = np.stack([np.where(labels > 0, 40 + labels // 300 * 20, 230)] * 3, -1).astype(np.uint8)
    classes = (labels > 0).astype(np.uint8)
    for seed in range(4):
        flipped = ip.augment(image, labels, classes, np.random.default_rng(seed), max_degrees=0)
        inside = flipped[1] > 0
        np.testing.assert_array_equal(flipped[0][..., 0][inside], 40 + flipped[1][inside] // 300 * 20)
        assert sorted(np.unique(flipped[1])) == sorted(np.unique(labels))
        rotated = ip.augment(image, labels, classes, np.random.default_rng(seed), max_degrees=10)
        core = rotated[1] > 0
        for ident in np.unique(rotated[1][core]):  # nuclei interiors keep their colour
            pixels = rotated[0][..., 0][rotated[1] == ident]
            assert abs(np.median(pixels.astype(int)) - (40 + ident // 300 * 20)) <= 2


def test_resize_scales_boxes():
    config = config_for("tiny", image_size=512, augment=False)
    small = config_for("tiny", image_size=256, augment=False)
    a = next(ip.make_eval_iterator(config, "fold1"))
    b = next(ip.make_eval_iterator(small, "fold1"))
    assert a["image"].shape[1:3] == (512, 512)
    np.testing.assert_array_equal(a["boxes"][a["valid"]], 2 * b["boxes"][b["valid"]])


def test_epochs_are_deterministic_and_resume_skips_exactly():
    config = config_for()
    full = list(ip.make_train_iterator(config, epoch=1))
    again = list(ip.make_train_iterator(config, epoch=1))
    resumed = list(ip.make_train_iterator(config, epoch=1, start_step=3))
    other = next(ip.make_train_iterator(config, epoch=2))
    assert len(full) == ip.steps_per_epoch(config) and len(resumed) == len(full) - 3
    for x, y in zip(full, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    for x, y in zip(full[3:], resumed, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(full[0]["index"], other["index"]) or not np.array_equal(
        full[0]["fold"], other["fold"]
    )


def test_eval_batches_pad_the_last_one():
    config = config_for()
    source = ip.open_split(config.data, "paper_validation")
    batches = list(ip.make_eval_iterator(config, "paper_validation", batch_size=5))
    assert sum(int(b["example_valid"].sum()) for b in batches) == len(source)
    assert batches[-1]["example_valid"].tolist() == [
        i < len(source) % 5 or len(source) % 5 == 0 for i in range(5)
    ]
    assert batches[0]["instances"].shape == (5, 256, 256) and batches[0]["instances"].dtype == np.int32


def test_unknown_split_and_unbuilt_dataset_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'fold9'"):
        ip.open_split(config_for().data, "fold9")
    data = dataclasses.replace(load_config("tiny").data, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make data"):
        ip.open_split(data, "fold1")


def test_reads_the_built_tfds_dataset(tmp_path):
    from data.pannuke import Builder

    manual = __import__("data.pannuke", fromlist=["x"]).__path__[0] + "/dummy_data"
    Builder(config="neoplastic", data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual)
    )
    config = load_config("tiny")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=str(tmp_path)))
    batch = next(ip.make_eval_iterator(config, "fold2"))
    # tfds orders a split by a hash of the keys.
    assert batch["fold"].tolist() == [2, 2] and sorted(batch["index"].tolist()) == [0, 2]
    assert batch["valid"].any()
