import dataclasses
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from maskrcnn import input_pipeline as ip
from maskrcnn import pannuke
from maskrcnn.config import apply_overrides, load_config
from tests.model.helpers import batch_from_labels, make_instances


def config_for(name="tiny", batch_size=None, **data):
    config = load_config(name)
    train = dataclasses.replace(config.train, batch_size=batch_size or config.train.batch_size)
    no_jitter = {"hed_jitter": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}  # geometry tests
    data = dataclasses.replace(
        config.data, builder="synthetic", synthetic_images_per_fold=8, **{**no_jitter, **data}
    )
    return dataclasses.replace(config, data=data, train=train)


def mask_box(mask):
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]


def reference_mini_mask(full, box, m):
    """The convention, written out: pixel (u, v) is the full mask at the centre of cell (u, v) of the box."""
    y1, x1, y2, x2 = (int(b) for b in box)
    out = np.zeros((m, m), np.uint8)
    for u in range(m):
        for v in range(m):
            out[u, v] = full[int(y1 + (u + 0.5) * (y2 - y1) / m), int(x1 + (v + 0.5) * (x2 - x1) / m)]
    return out


@pytest.mark.parametrize("name", ["tiny", "fast"])
def test_train_batch_shapes_and_dtypes(name):
    config = config_for(name)
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
        "ignore_boxes": ((b, m, 4), np.float32),
        "ignore_valid": ((b, m), np.bool_),
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
    assert np.all(batch["boxes"][~batch["valid"]] == 0) and np.all(batch["masks"][~batch["valid"]] == 0)
    np.testing.assert_allclose(batch["scale"], s / 256)


@pytest.mark.parametrize("name,augment", [("tiny", True), ("fast", False), ("fast", True)])
def test_boxes_and_mini_masks_come_from_the_resampled_full_masks(name, augment):
    full = config_for(name, augment=augment, mini_mask_size=None)
    mini = config_for(name, augment=augment)
    m = mini.data.mini_mask_size
    for a, b in zip(
        ip.make_train_iterator(full, epoch=0), ip.make_train_iterator(mini, epoch=0), strict=True
    ):
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        for i, j in zip(*np.nonzero(a["valid"]), strict=True):
            mask = a["masks"][i, j]
            assert mask_box(mask) == a["boxes"][i, j].tolist()
            np.testing.assert_array_equal(b["masks"][i, j], reference_mini_mask(mask, a["boxes"][i, j], m))
        break


@pytest.mark.parametrize("mini_mask_size", [7, 14, 28, 56])
def test_mini_masks_match_the_model_tests_batch_builder(mini_mask_size):
    rng = np.random.default_rng(mini_mask_size)
    for size in (48, 97):
        labels = make_instances(rng, size, 12, radius=(1.5, 14)) * 1000  # sparse, large ids
        ours = ip.instance_targets(labels, (labels > 0).astype(np.uint8), 16, mini_mask_size)
        ref = batch_from_labels([labels], 16, mini_mask_size)
        n = int(ref["valid"].sum())
        assert ours["valid"].sum() == n and ours["num_truncated"] == 0
        np.testing.assert_array_equal(ours["boxes"], ref["boxes"][0])  # both in id order
        np.testing.assert_array_equal(ours["masks"], ref["masks"][0])
        np.testing.assert_array_equal(ours["classes"], ref["classes"][0])


def test_truncation_picks_without_regard_to_size_and_reports_the_rest_as_ignored():
    # Three nuclei, two slots: 9, 50 and 12 px.
    labels = np.zeros((32, 32), np.int32)
    labels[1:4, 1:4] = 5  # 9 px
    labels[10:20, 10:15] = 700  # 50 px
    labels[25:27, 25:31] = 90000  # 12 px
    boxes = {5: [1, 1, 4, 4], 700: [10, 10, 20, 15], 90000: [25, 25, 27, 31]}
    classes = np.where(labels > 0, np.where(labels == 700, 3, 1), 0).astype(np.uint8)
    dropped = []
    for seed in range(40):
        out = ip.instance_targets(labels, classes, 2, None, rng=np.random.default_rng(seed))
        assert out["num_truncated"] == 1 and out["valid"].tolist() == [True, True]
        kept = [ident for ident, box in boxes.items() if box in out["boxes"].tolist()]
        assert len(kept) == 2 and kept == sorted(kept)  # in id order
        (gone,) = set(boxes) - set(kept)
        assert out["ignore_valid"].tolist() == [True, False]
        assert out["ignore_boxes"][0].tolist() == boxes[gone]
        assert out["classes"].tolist() == [3 if k == 700 else 1 for k in kept]
        for box, mask in zip(out["boxes"], out["masks"], strict=True):
            assert mask_box(mask) == box.tolist()
        dropped.append(gone)
    assert set(dropped) == set(boxes)  # the largest nucleus is dropped too, sometimes
    fixed = ip.instance_targets(labels, classes, 2, None)  # no rng: the same seeded pick every time
    assert fixed["boxes"].tolist() == ip.instance_targets(labels, classes, 2, None)["boxes"].tolist()
    untruncated = ip.instance_targets(labels, classes, 3, 4)
    assert untruncated["num_truncated"] == 0 and not untruncated["ignore_valid"].any()


def test_truncation_is_reported_in_batches():
    config = config_for("tiny", max_instances=3, augment=False, scale=1.0)
    batch = next(ip.make_eval_iterator(config, "fold1"))
    source = ip.open_split(config.data, "fold1")
    originals = [len(np.unique(source[i]["instances"])) - 1 for i in range(len(batch["index"]))]
    assert batch["valid"].sum(1).tolist() == [min(3, n) for n in originals]
    assert batch["num_truncated"].tolist() == [max(0, n - 3) for n in originals]


def _coloured_example(rng, size=256):
    """An example whose image encodes each nucleus's label: a flip or rotation that moves one and not
    the other shows as wrong colours under the masks."""
    labels = make_instances(rng, size, 30, radius=(6, 12))
    shade = (40 + 6 * labels).astype(np.uint8)  # 46..220 by label, background 40 is below it
    image = np.stack([np.where(labels > 0, shade, 10)] * 3, -1).astype(np.uint8)
    return {
        "image": image,
        "instances": (labels * 300).astype(np.int32),  # ids above 255
        "classes": (labels > 0).astype(np.uint8),
        "tissue": 0,
        "fold": 1,
        "index": 0,
    }


def test_flips_move_image_and_labels_exactly():
    example = _coloured_example(np.random.default_rng(1))
    image, labels = example["image"], example["instances"]
    seen = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
        seen.add((flip_h, flip_v))
        out = ip.augment(image, labels, example["classes"], np.random.default_rng(seed), max_degrees=0)
        sl = (slice(None, None, -1 if flip_v else 1), slice(None, None, -1 if flip_h else 1))
        for got, want in zip(out, (image, labels, example["classes"]), strict=True):
            np.testing.assert_array_equal(got, want[sl])
    assert len(seen) == 4


def test_augmentation_keeps_image_and_masks_aligned():
    rng = np.random.default_rng(2)
    for name in ("tiny", "fast"):
        data = config_for(name, max_instances=64, mini_mask_size=None).data
        for seed in range(3):
            example = _coloured_example(rng)
            out = ip.prepare(example, data, np.random.default_rng(seed))
            expected_shades = sorted(np.unique(example["image"][..., 0][example["instances"] > 0]))
            assert out["valid"].sum() >= 25
            on_shade = []
            for j in np.nonzero(out["valid"])[0]:
                pixels = out["image"][..., 0][out["masks"][j] > 0].astype(int)
                shade = np.median(pixels)
                # A nucleus's colour, not the background's (10); bilinear sampling blurs only its rim.
                assert min(abs(shade - s) for s in expected_shades) <= 3
                on_shade.append(np.mean(np.abs(pixels - shade) <= 3))
            assert np.mean(on_shade) > 0.5


def test_rotation_drops_nuclei_that_leave_the_image():
    labels = np.zeros((256, 256), np.int32)
    labels[0:3, 0:3] = 1000  # in the corner: any rotation of 10 degrees brings in zeros there
    labels[120:130, 120:130] = 2000
    example = {
        "image": np.full((256, 256, 3), 128, np.uint8),
        "instances": labels,
        "classes": (labels > 0).astype(np.uint8),
        "tissue": 0,
        "fold": 1,
        "index": 0,
    }
    data = dataclasses.replace(config_for("fast").data, max_rotation_degrees=10.0)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        rng.random(), rng.random()
        if abs(rng.uniform(-10, 10)) < 5:
            continue
        out = ip.prepare(example, data, np.random.default_rng(seed))
        assert out["valid"].sum() == 1 and out["num_truncated"] == 0
        assert out["boxes"][0, 0] > 100


def test_resize_scales_boxes():
    config = config_for("tiny", scale=2.0, augment=False)
    small = config_for("tiny", scale=1.0, augment=False)
    a = next(ip.make_eval_iterator(config, "fold1"))
    b = next(ip.make_eval_iterator(small, "fold1"))
    assert a["image"].shape[1:3] == (512, 512)
    np.testing.assert_array_equal(a["boxes"][a["valid"]], 2 * b["boxes"][b["valid"]])
    np.testing.assert_allclose(a["scale"], 2.0)


def test_epochs_are_deterministic_and_resume_skips_exactly():
    config = config_for()
    full = list(ip.make_train_iterator(config, epoch=1))
    again = list(ip.make_train_iterator(config, epoch=1))
    resumed = list(ip.make_train_iterator(config, epoch=1, start_step=3))
    other = next(ip.make_train_iterator(config, epoch=2))
    assert len(full) == ip.steps_per_epoch(config) and len(resumed) == len(full) - 3
    for x, y in zip(full, again, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    for x, y in zip(full[3:], resumed, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(full[0]["image"], other["image"])
    keys = [(f, i) for b in full for f, i in zip(b["fold"], b["index"], strict=True)]
    assert len(set(keys)) == len(keys)  # one pass: no example twice


def test_fixed_steps_per_epoch_cycles_through_the_split():
    config = config_for()
    n = len(ip.open_split(config.data, config.data.train_split))
    steps = n // config.train.batch_size + 3
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps_per_epoch=steps))
    batches = list(ip.make_train_iterator(config, epoch=0))
    assert len(batches) == steps


def test_eval_batches_pad_the_last_one_and_rebuild_pannuke_masks():
    from maskrcnn.synthetic import make_fold

    config = apply_overrides(config_for(), ["data.variant=all_classes"])
    source = ip.open_split(config.data, "fold2")
    batches = list(ip.make_eval_iterator(config, "fold2", batch_size=5))
    assert sum(int(b["example_valid"].sum()) for b in batches) == len(source) == 8
    assert batches[-1]["example_valid"].tolist() == [True, True, True, False, False]
    assert batches[0]["instances"].shape == (5, 256, 256) and batches[0]["instances"].dtype == np.int32
    _, masks, _ = make_fold(8, seed=ip.sources._SYNTHETIC_SEED + 2)
    instances = np.concatenate([b["instances"][b["example_valid"]] for b in batches])
    class_map = np.concatenate([b["class_map"][b["example_valid"]] for b in batches])
    index = np.concatenate([b["index"][b["example_valid"]] for b in batches])
    np.testing.assert_array_equal(pannuke.pannuke_masks(instances, class_map), masks[index])
    valid_classes = np.concatenate([b["classes"][b["valid"]] for b in batches])
    assert set(valid_classes.tolist()) <= {1, 2, 3, 4, 5} and len(set(valid_classes.tolist())) > 2


def test_unknown_split_and_unbuilt_dataset_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'fold9'"):
        ip.open_split(config_for().data, "fold9")
    data = dataclasses.replace(load_config("tiny").data, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tfds build maskrcnn/datasets/pannuke --manual_dir"):
        ip.open_split(data, "fold1")


def build_dummy_data(variant, data_dir):
    """Builds the tfds builder's dummy_data folds (maskrcnn/datasets/pannuke/dummy_data) into ``data_dir``."""
    import maskrcnn.datasets.pannuke
    from maskrcnn.datasets.pannuke import Builder

    manual = os.path.join(maskrcnn.datasets.pannuke.__path__[0], "dummy_data")
    Builder(config=variant, data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual)
    )


def test_reads_the_built_tfds_dataset(tmp_path):
    build_dummy_data("neoplastic", tmp_path)
    config = load_config("tiny")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=str(tmp_path)))
    batch = next(ip.make_eval_iterator(config, "fold2"))
    # tfds orders a split by a hash of the keys.
    assert batch["fold"].tolist() == [2, 2] and sorted(batch["index"].tolist()) == [0, 2]
    assert batch["valid"].any() and batch["instances"].max() > 0
    assert next(ip.make_train_iterator(config, epoch=0))["image"].shape == (2, 128, 128, 3)


def test_the_nuclei_variant_reads_all_classes_with_one_class(tmp_path):
    build_dummy_data("all_classes", tmp_path)
    data = dataclasses.replace(load_config("tiny").data, data_dir=str(tmp_path))
    five = ip.open_split(dataclasses.replace(data, variant="all_classes"), "fold1")
    one = ip.open_split(dataclasses.replace(data, variant="nuclei"), "fold1")
    assert len(one) == len(five) > 0
    for i in range(len(one)):
        np.testing.assert_array_equal(one[i]["instances"], five[i]["instances"])
        np.testing.assert_array_equal(one[i]["classes"], (five[i]["classes"] > 0).astype(np.uint8))
    assert max(int(five[i]["classes"].max()) for i in range(len(five))) > 1


@pytest.mark.parametrize("variant", ["neoplastic", "all_classes"])
def test_a_fold_folder_is_read_directly_as_the_builder_would(tmp_path, variant):
    from maskrcnn.synthetic import write_folds

    write_folds(str(tmp_path), 6, seed=3)
    folder = str(tmp_path / "Fold 2")
    masks = np.load(tmp_path / "Fold 2" / "masks" / "fold2" / "masks.npy")
    images = np.load(tmp_path / "Fold 2" / "images" / "fold2" / "images.npy")
    types = np.load(tmp_path / "Fold 2" / "images" / "fold2" / "types.npy")
    data = dataclasses.replace(load_config("tiny").data, variant=variant, builder="pannuke")
    source = ip.open_split(data, folder)
    assert isinstance(source, ip.FoldSource)
    expected = [i for i in range(6) if pannuke.eligible(masks[i], variant)]
    assert [source[k]["index"] for k in range(len(source))] == expected
    for k, i in enumerate(expected):
        instances, classes = pannuke.instance_and_class_maps(masks[i], variant)
        example = source[k]
        np.testing.assert_array_equal(example["instances"], instances)
        np.testing.assert_array_equal(example["classes"], classes)
        np.testing.assert_array_equal(example["image"], np.rint(images[i]).astype(np.uint8))
        assert example["tissue"] == pannuke.tissue_index(str(types[i]))
    base = load_config("tiny")
    model = dataclasses.replace(base.model, num_classes=data.num_classes)
    config = dataclasses.replace(base, data=data, model=model)
    batches = list(ip.make_eval_iterator(config, folder))
    assert sum(int(b["example_valid"].sum()) for b in batches) == len(expected)


def test_a_zipped_or_missing_fold_folder_is_explained(tmp_path):
    data = load_config("tiny").data
    (tmp_path / "fold_3.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match="unzip it"):
        ip.open_split(data, str(tmp_path / "fold_3.zip"))
    with pytest.raises(FileNotFoundError, match="no PanNuke-format fold folder"):
        ip.open_split(data, str(tmp_path / "nowhere"))


def test_worker_processes_give_the_batches_of_threads():
    from maskrcnn.input_pipeline import loader

    threads = config_for("tiny", loader="threads")
    processes = config_for("tiny", loader="processes", loader_workers=2)
    assert not loader.use_processes(threads.data) and loader.use_processes(processes.data)
    try:
        for make in (
            lambda c: ip.make_train_iterator(c, epoch=1, start_step=1),
            lambda c: ip.make_eval_iterator(c, "fold3"),
        ):
            a, b = list(make(threads)), list(make(processes))
            assert len(a) == len(b) > 0
            for x, y in zip(a, b, strict=True):
                assert x.keys() == y.keys()
                for k in x:
                    np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        assert len(loader._POOLS) == 2  # one pool per source, kept across epochs
    finally:
        loader.shutdown_pools()
    assert not loader._POOLS
