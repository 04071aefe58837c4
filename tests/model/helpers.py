"""Small synthetic detection batches for model tests: bright discs and ellipses on a dark textured field."""

import numpy as np


def make_instances(rng, size, count, radius=(4, 9)):
    """Returns an int32 (size, size) label map of ``count`` non-overlapping discs with random radii."""
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    placed = 0
    for _ in range(200):
        if placed == count:
            break
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r, size - r, 2)
        disc = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
        if (labels[disc] > 0).any():
            continue
        placed += 1
        labels[disc] = placed
    return labels


def batch_from_labels(label_maps, max_instances, mini_mask_size, rng=None):
    """Builds a model batch (see maskrcnn.input_pipeline) from label maps with a numpy loop."""
    b = len(label_maps)
    size = label_maps[0].shape[0]
    rng = rng or np.random.default_rng(0)
    images = np.zeros((b, size, size, 3), np.uint8)
    boxes = np.zeros((b, max_instances, 4), np.float32)
    classes = np.zeros((b, max_instances), np.int32)
    masks = np.zeros((b, max_instances, mini_mask_size, mini_mask_size), np.uint8)
    valid = np.zeros((b, max_instances), bool)
    for i, labels in enumerate(label_maps):
        background = rng.normal(60, 10, (size, size, 1))
        fg = (labels > 0)[..., None]
        images[i] = np.clip(np.where(fg, 200, background) + rng.normal(0, 8, (size, size, 3)), 0, 255)
        for j, ident in enumerate([k for k in np.unique(labels) if k][:max_instances]):
            m = labels == ident
            rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            boxes[i, j] = (y1, x1, y2, x2)
            classes[i, j] = 1
            valid[i, j] = True
            # Mini-mask pixel (u, v) samples the mask at the centre of cell (u, v) of the box.
            ys = (y1 + (np.arange(mini_mask_size) + 0.5) * (y2 - y1) / mini_mask_size).astype(int)
            xs = (x1 + (np.arange(mini_mask_size) + 0.5) * (x2 - x1) / mini_mask_size).astype(int)
            masks[i, j] = m[np.ix_(ys, xs)]
    return {"image": images, "boxes": boxes, "classes": classes, "masks": masks, "valid": valid}


def tiny_training_config(stages, **train):
    """The tiny config on 64 px synthetic folds of 6 images: a training run of a few seconds."""
    import dataclasses

    from maskrcnn.config import load_config

    base = load_config("tiny")
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, builder="synthetic", synthetic_images_per_fold=6, scale=0.25),
        train=dataclasses.replace(base.train, stages=tuple(stages), **train),
    )


def classifier_near_half(config):
    """A random-weights model of ``config`` that detects something: its box classifier scores every
    proposal near 1 / (K + 1), no two alike, and the proposals and refined boxes sit near the anchors.
    Fully random weights saturate the classifier at background and give boxes without area, which leaves
    nothing to detect. The kernels of the RPN's and the box head's box deltas and of the class logits are
    scaled to a thousandth; the rest stays random."""
    import keras

    from maskrcnn.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(config.model, config.data.image_size, mini_masks=True)
    for name in ("rpn_bbox_pred/kernel", "mrcnn_class_logits/kernel", "mrcnn_bbox_fc/kernel"):
        kernel = next(w for w in model.weights if w.path.endswith(name))
        kernel.assign(kernel.value * 1e-3)
    return model
