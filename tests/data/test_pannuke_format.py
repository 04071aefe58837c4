import concurrent.futures
import os
import zipfile

import numpy as np
import pytest

from maskrcnn import pannuke
from maskrcnn.synthetic import make_fold, write_folds


def test_missing_fold_names_the_fold_and_the_folder(tmp_path):
    write_folds(str(tmp_path), 1, seed=1)
    os.rename(tmp_path / "Fold 2", tmp_path / "elsewhere")
    assert pannuke.find_fold(str(tmp_path), 1).endswith("Fold 1")
    with pytest.raises(FileNotFoundError, match=r"PanNuke fold 2 not found in .*" + tmp_path.name):
        pannuke.find_fold(str(tmp_path), 2)


@pytest.mark.parametrize("name", ["fold_3.zip", "Fold 3.zip", "fold3.zip", "fold3", "Fold 3", "fold_3"])
def test_fold_names_as_downloaded(tmp_path, name):
    write_folds(str(tmp_path / "src"), 1, seed=1)
    src = tmp_path / "src" / "Fold 3"
    if name.endswith(".zip"):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            for root, _, files in os.walk(src):
                for f in files:
                    z.write(os.path.join(root, f), os.path.relpath(os.path.join(root, f), src.parent))
    else:
        os.rename(src, tmp_path / name)
    assert os.path.basename(pannuke.find_fold(str(tmp_path), 3)) == name


def test_rows_are_read_like_np_load(tmp_path):
    write_folds(str(tmp_path), 2, seed=3)
    paths = pannuke.fold_files(pannuke.find_fold(str(tmp_path), 1))
    images, masks, types = pannuke.open_fold(paths)
    full = np.load(paths["masks.npy"])
    assert len(masks) == 2 and masks.shape == full.shape
    np.testing.assert_array_equal(masks[1], full[1])
    np.testing.assert_array_equal(images[0], np.load(paths["images.npy"])[0])
    assert types.dtype.kind == "U" and len(types) == 2
    with pytest.raises(IndexError, match="out of range"):
        masks[2]


def test_rows_read_from_many_threads_are_the_right_rows(tmp_path):
    # The evaluation loader reads a fold folder from a thread pool; an unguarded seek + read on the one
    # shared file object handed threads each other's rows (a corrupted ground truth, found in the wild).
    rows = np.random.default_rng(0).integers(0, 1000, (24, 128, 128, 6)).astype(np.float64)
    path = str(tmp_path / "masks.npy")
    np.save(path, rows)
    reader = pannuke.NpyRows(path)
    order = np.random.default_rng(1).integers(0, len(rows), 400)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        read = list(pool.map(reader.__getitem__, order))
    assert all(np.array_equal(r, rows[i]) for r, i in zip(read, order, strict=True))


def test_instance_map_keeps_ids_and_separates_reused_ones():
    mask = np.zeros((8, 8, 6))
    mask[0:2, 0:2, 0] = 70000.0  # an id above 65535
    mask[4:6, 4:6, 1] = 300.0
    mask[6:8, 0:2, 2] = 70000.0  # PanNuke numbers across channels; a reused id is another nucleus
    instances, classes = pannuke.instance_and_class_maps(mask)
    assert instances.dtype == np.int32 and instances[0, 0] == 70000 and instances[4, 4] == 300
    assert instances[6, 0] not in (0, 70000, 300)
    np.testing.assert_array_equal(np.unique(classes), [0, 1, 2, 3])
    neo, neo_classes = pannuke.instance_and_class_maps(mask, "neoplastic")
    np.testing.assert_array_equal(np.unique(neo), [0, 70000])
    assert set(np.unique(neo_classes)) == {0, 1}
    nuclei, nuclei_classes = pannuke.instance_and_class_maps(mask, "nuclei")
    np.testing.assert_array_equal(nuclei, instances)  # every nucleus, one class
    np.testing.assert_array_equal(nuclei_classes, (instances > 0).astype(np.uint8))
    merged = pannuke.merge_classes({"classes": classes, "tissue": 3})
    np.testing.assert_array_equal(merged["classes"], nuclei_classes)
    assert merged["tissue"] == 3 and pannuke.eligible(np.zeros((8, 8, 6)), "nuclei")
    configs = [pannuke.dataset_config(v) for v in pannuke.VARIANTS]
    assert configs == ["neoplastic", "all_classes", "all_classes"]
    with pytest.raises(ValueError, match="variant must be one of"):
        pannuke.dataset_config("binary")
    # And back to PanNuke's channels.
    back = pannuke.pannuke_masks(instances, classes)
    np.testing.assert_array_equal(back[..., 0], mask[..., 0])
    np.testing.assert_array_equal(back[..., 5], instances == 0)


def test_paper_splits_are_disjoint_seeded_and_sized():
    keys = [(f, i) for f in (1, 2, 3) for i in range(1000)]
    splits = pannuke.paper_splits(keys)
    sets = [set(splits[s]) for s in ("paper_train", "paper_validation", "paper_test")]
    assert len(sets[2]) == 490
    assert len(sets[0]) == round(0.8 * 2510) and len(sets[1]) == 2510 - round(0.8 * 2510)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == set(keys)
    assert pannuke.paper_splits(list(reversed(keys))) == splits  # the input order does not matter


def test_synthetic_fold_is_pannuke_format_and_deterministic():
    images, masks, types = make_fold(3, seed=5)
    assert images.dtype == masks.dtype == np.float64
    assert images.shape == (3, 256, 256, 3) and masks.shape == (3, 256, 256, 6)
    assert images.min() >= 0 and images.max() <= 255 and np.all(images == np.round(images))
    assert all(t in pannuke.PANNUKE_TISSUES for t in types)
    assert np.all((masks[..., 5] == 1) == (masks[..., :5].max(-1) == 0))
    assert (np.count_nonzero(masks[..., :5], axis=(1, 2)) > 0).sum() >= 3  # several classes present
    again = make_fold(3, seed=5)
    np.testing.assert_array_equal(again[1], masks)


def _fold_paths(tmp_path, images=2):
    write_folds(str(tmp_path), images, seed=2)
    return pannuke.fold_files(pannuke.find_fold(str(tmp_path), 1))


def test_truncated_and_corrupt_npy_are_named(tmp_path):
    paths = _fold_paths(tmp_path)
    with open(paths["masks.npy"], "r+b") as f:
        f.truncate(os.path.getsize(paths["masks.npy"]) - 1000)
    with pytest.raises(ValueError, match=r"masks\.npy is truncated: its header promises \(2, 256, 256, 6\)"):
        pannuke.open_fold(paths)
    with open(paths["images.npy"], "wb") as f:
        f.write(b"<html>not found</html>")
    with pytest.raises(ValueError, match=r"images\.npy is not a readable \.npy file"):
        pannuke.open_fold(paths)


def test_disagreeing_files_and_unknown_tissues_are_named(tmp_path):
    paths = _fold_paths(tmp_path)
    np.save(paths["types.npy"], np.array(["Colon", "Colon", "Breast"]))
    with pytest.raises(ValueError, match=r"disagree on the number of images: .*images\.npy has 2"):
        pannuke.open_fold(paths)
    np.save(paths["types.npy"], np.array(["Colon", "Brain"]))
    with pytest.raises(ValueError, match=r"types\.npy: unknown tissues \['Brain'\]"):
        pannuke.open_fold(paths)
    np.save(paths["images.npy"], np.zeros((2, 128, 128, 3)))
    with pytest.raises(
        ValueError, match=r"images\.npy: expected shape \(N, 256, 256, 3\), got \(2, 128, 128, 3\)"
    ):
        pannuke.open_fold(paths)


def test_a_failed_build_leaves_no_dataset(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from maskrcnn.datasets.pannuke import Builder

    write_folds(str(tmp_path / "manual"), 2, seed=2)
    calls = []

    def failing(mask, variant, *where):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(mask, variant, *where)

    real = pannuke.instance_and_class_maps
    monkeypatch.setattr(pannuke, "instance_and_class_maps", failing)
    data_dir = str(tmp_path / "tfds")
    config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))
    with pytest.raises(RuntimeError, match="disk full"):
        Builder(config="all_classes", data_dir=data_dir).download_and_prepare(download_config=config)
    assert not Builder(config="all_classes", data_dir=data_dir).is_prepared()
    with pytest.raises(Exception, match="pannuke"):
        tfds.data_source("pannuke/all_classes", split="fold1", data_dir=data_dir)
    monkeypatch.setattr(pannuke, "instance_and_class_maps", real)
    Builder(config="all_classes", data_dir=data_dir).download_and_prepare(download_config=config)
    assert len(tfds.data_source("pannuke/all_classes", split="fold1", data_dir=data_dir)) == 2


def test_missing_fold_fails_the_build_with_its_name(tmp_path):
    import tensorflow_datasets as tfds

    from maskrcnn.datasets.pannuke import Builder

    write_folds(str(tmp_path / "manual"), 1, seed=2)
    os.rename(tmp_path / "manual" / "Fold 3", tmp_path / "manual" / "other")
    config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))
    with pytest.raises(
        FileNotFoundError, match=r"PanNuke fold 3 not found in .*manual: looked for 'fold_3/'"
    ):
        Builder(config="neoplastic", data_dir=str(tmp_path / "tfds")).download_and_prepare(
            download_config=config
        )


def test_the_library_never_imports_the_builder_and_touches_no_sys_path():
    # The builder imports the library, not the other way round: importing every library module loads no
    # builder module and leaves sys.path alone; the builder is imported only when a build asks for it.
    import subprocess
    import sys

    code = (
        "import sys, pathlib, importlib; before = list(sys.path)\n"
        "import maskrcnn\n"
        "root = pathlib.Path(maskrcnn.__file__).parent\n"
        "for f in sorted(root.rglob('*.py')):\n"
        "    parts = f.relative_to(root.parent).with_suffix('').parts\n"
        "    if parts[:2] != ('maskrcnn', 'datasets') or len(parts) == 2:\n"
        "        importlib.import_module('.'.join(p for p in parts if p != '__init__'))\n"
        "bad = [m for m in sys.modules if m.startswith(('maskrcnn.datasets.', 'data.')) or m == 'data']\n"
        "assert not bad, bad\n"
        "assert sys.path == before\n"
        "from maskrcnn.datasets.pannuke import Builder\n"
        "assert Builder.name == 'pannuke' and sys.path == before\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
