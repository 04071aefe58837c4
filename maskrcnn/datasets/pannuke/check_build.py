"""Checks a built PanNuke against the fold files it came from: every example, every nucleus.

    python maskrcnn/datasets/pannuke/check_build.py --manual_dir ~/pannuke --data_dir ~/tensorflow_datasets

For each config and fold split it reads the built examples through ``tfds.data_source`` (array_record)
and compares them with the source arrays read straight from ``masks.npy`` / ``images.npy``: the image,
the nucleus pixels and class of each pixel, and the number of nuclei of each class (one per distinct
id in a channel). It also checks that the paper splits are disjoint and cover the eligible images, and
reads one split with ``tfds.load``. Exits non-zero on the first mismatch.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from maskrcnn import pannuke  # noqa: E402
from maskrcnn.pannuke import PANNUKE_CLASSES  # noqa: E402


def check(manual_dir: str, data_dir: str, config: str) -> dict:
    channels = 1 if config == "neoplastic" else 5
    counts, eligible_keys = np.zeros(channels, np.int64), set()
    for fold in pannuke.FOLDS:
        location = pannuke.find_fold(manual_dir, fold)
        if location.endswith(".zip"):  # the builder extracted it next to the dataset
            extracted = os.path.join(data_dir, "downloads", "extracted")
            name = os.path.basename(location)
            hits = [os.path.join(extracted, d) for d in os.listdir(extracted) if d.endswith(name)]
            if not hits:
                raise FileNotFoundError(f"{name} is not extracted under {extracted}; build the dataset first")
            location = hits[0]
        images, masks, _ = pannuke.open_fold(pannuke.fold_files(location))
        source = tfds.data_source(f"pannuke/{config}", split=f"fold{fold}", data_dir=data_dir)
        built = {int(source[i]["index"]): i for i in range(len(source))}
        for index in range(len(masks)):
            mask = np.asarray(masks[index])[..., :channels]
            if config == "neoplastic" and not (mask[..., 0] > 0).any():
                assert index not in built, f"fold {fold} image {index}: no neoplastic nucleus, yet built"
                continue
            eligible_keys.add((fold, index))
            example = source[built.pop(index)]
            inst, cls = example["instances"], example["classes"]
            assert inst.dtype == np.int32, inst.dtype
            np.testing.assert_array_equal(example["image"], np.rint(images[index]).astype(np.uint8))
            np.testing.assert_array_equal(inst > 0, mask.max(-1) > 0)
            np.testing.assert_array_equal(cls, np.where(inst > 0, np.argmax(mask > 0, -1) + 1, 0))
            per_class = [len(np.unique(mask[..., c][mask[..., c] > 0])) for c in range(channels)]
            got = [len(np.unique(inst[(cls == c + 1) & (inst > 0)])) for c in range(channels)]
            assert got == per_class, f"fold {fold} image {index}: nuclei per class {got}, source {per_class}"
            counts += per_class
        assert not built, f"fold {fold}: built examples without a source image: {sorted(built)}"
    paper = []
    for split in ("paper_train", "paper_validation", "paper_test"):
        source = tfds.data_source(f"pannuke/{config}", split=split, data_dir=data_dir)
        paper.append({(int(source[i]["fold"]), int(source[i]["index"])) for i in range(len(source))})
    assert sum(map(len, paper)) == len(set.union(*paper)), "an image is in two paper splits"
    assert set.union(*paper) == eligible_keys, "the paper splits do not cover the eligible images"
    loaded = tfds.load(f"pannuke/{config}", split="fold1", data_dir=data_dir)
    first = next(iter(loaded))
    assert first["instances"].dtype == "int32"
    return {
        "images": len(eligible_keys),
        "paper": [len(p) for p in paper],
        **{PANNUKE_CLASSES[c]: int(counts[c]) for c in range(channels)},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--config", nargs="+", default=["neoplastic", "all_classes"])
    args = parser.parse_args()
    for config in args.config:
        print(config, "OK:", check(args.manual_dir, args.data_dir, config), flush=True)


if __name__ == "__main__":
    main()
