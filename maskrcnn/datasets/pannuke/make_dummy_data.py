"""Regenerates ``dummy_data/``: three tiny synthetic folds in PanNuke's format, zipped under three of
the names the downloads have (``fold_1.zip``, ``Fold 2.zip``, ``fold3.zip``).

    python maskrcnn/datasets/pannuke/make_dummy_data.py
"""

import glob
import os
import shutil
import tempfile
import zipfile

import numpy as np

from maskrcnn.synthetic import write_folds

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dummy_data")
IMAGES_PER_FOLD = 3


def main():
    shutil.rmtree(HERE, ignore_errors=True)
    os.makedirs(HERE)
    with tempfile.TemporaryDirectory() as tmp:
        write_folds(tmp, IMAGES_PER_FOLD, seed=7)
        for path in glob.glob(os.path.join(tmp, "*", "images", "*", "images.npy")):
            np.save(path, np.load(path) // 32 * 32)  # coarse colours: the zips stay small
        for fold, name in ((1, "fold_1.zip"), (2, "Fold 2.zip"), (3, "fold3.zip")):
            with zipfile.ZipFile(os.path.join(HERE, name), "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
                for root, _, files in os.walk(os.path.join(tmp, f"Fold {fold}")):
                    for f in files:
                        path = os.path.join(root, f)
                        z.write(path, os.path.relpath(path, tmp))


if __name__ == "__main__":
    main()
