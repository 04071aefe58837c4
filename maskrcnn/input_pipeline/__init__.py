"""From PanNuke examples to fixed-shape numpy batches: augment, resize, boxes, mini-masks, padding.

An example is a dict: ``image`` uint8 (256, 256, 3), ``instances`` int32 (256, 256) instance label map,
``classes`` uint8 (256, 256) class map (0 background, c + 1 for class c), ``tissue``, ``fold`` and
``index`` ints. It comes from the tfds dataset ``pannuke/<variant>`` (built with ``make data``; read by
random access through ``tfds.data_source``), from an unzipped PanNuke-format fold read directly (a
split given as a folder path, :class:`FoldSource`) or, with ``data.builder="synthetic"``, from folds
generated in memory by :mod:`maskrcnn.synthetic`; all go through the same PanNuke functions.

A batch (all numpy, leading axis B) holds:
  image uint8 (B, S, S, 3) with S = ``data.image_size``;
  boxes float32 (B, M, 4) (y1, x1, y2, x2) on pixel edges of the S-pixel image (rows 3..5 -> y1=3, y2=6),
    M = ``data.max_instances``;
  classes int32 (B, M) in 1..num_classes, 0 on padding; valid bool (B, M);
  masks uint8 (B, M, m, m) mini-masks (m = ``data.mini_mask_size``): pixel (u, v) is the instance's mask
    at the centre of cell (u, v) of an m x m grid over its box, i.e. the full mask at row
    ``floor(y1 + (u + 0.5) * (y2 - y1) / m)`` and column likewise; or (B, M, S, S) full masks if m is None;
  num_truncated int32 (B,) instances beyond M left out (a random M are kept in training, a fixed seeded
    choice otherwise, whatever their size);
  ignore_boxes float32 (B, M, 4), ignore_valid bool (B, M): the boxes of the left-out instances (the
    first M of them), which the targets neither train nor teach as background;
  tissue, fold, index int32 (B,); scale float32 (B,) = S / 256.
Instances are in the order of their ids in the label map. Evaluation batches also hold the original
``instances`` int32 (B, 256, 256), ``class_map`` uint8 (B, 256, 256) (with ``instances`` it rebuilds
PanNuke's (N, 256, 256, 6) masks through :func:`maskrcnn.pannuke.pannuke_masks`) and ``example_valid``
bool (B,) (False on the padding of the last batch).

Geometry: augmentation (flips, rotation, and colour jitter where the config sets it) happens at 256 px,
then the image is resized bilinearly (PIL) and the label map by nearest pixel centre; boxes and masks
always come from the final label map, so an instance that leaves the image or vanishes in a downscale is
dropped and every box is exactly the bounding box of its mask. Work per example is numpy/PIL (both
release the GIL) in a small thread pool.
"""

from maskrcnn.input_pipeline.geometry import augment, resize
from maskrcnn.input_pipeline.instances import instance_targets, prepare
from maskrcnn.input_pipeline.loader import (
    MODEL_INPUTS,
    make_eval_iterator,
    make_train_iterator,
    steps_per_epoch,
)
from maskrcnn.input_pipeline.sources import (
    PANNUKE_SIZE,
    FoldSource,
    SyntheticSource,
    is_fold_path,
    open_split,
)

__all__ = [
    "MODEL_INPUTS",
    "PANNUKE_SIZE",
    "FoldSource",
    "SyntheticSource",
    "augment",
    "instance_targets",
    "is_fold_path",
    "make_eval_iterator",
    "make_train_iterator",
    "open_split",
    "prepare",
    "resize",
    "steps_per_epoch",
]
