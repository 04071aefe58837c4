"""Where nuclei are lost before the heads see them: anchor coverage and proposal recall.

``maskrcnn anchors --config learning --split "runs/learning/folds/Fold 1"`` prints, for a config's anchors
and RPN assignment rule, how many of a split's nuclei get at least one positive anchor and how many
positives each gets (the RPN learns a nucleus only through its positives). :func:`proposal_recall`
measures, for a trained model, the share of nuclei that some proposal covers at IoU >= 0.5 (a nucleus
without one can never be detected).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
from scipy import ndimage

from maskrcnn import input_pipeline, targets
from maskrcnn.config import Config
from maskrcnn.model.maskrcnn import anchor_assignment, config_anchors
from maskrcnn.ops import pairwise_iou


def nucleus_boxes(instances: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """float32 (N, 4) yxyx pixel-edge boxes of the instances of a label map, times ``scale``."""
    slices = [s for s in ndimage.find_objects(np.asarray(instances)) if s is not None]
    boxes = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices], np.float32)
    return boxes.reshape(-1, 4) * scale


def anchor_coverage(config: Config, split: str, *, max_images: int | None = None) -> dict:
    """How the RPN assignment of ``config`` (``model.rpn_assignment`` and its thresholds) treats the
    nuclei of ``split`` (a split of the built dataset or a PanNuke-format fold folder), before sampling.

    Returns a dict: ``nuclei`` counted; ``covered`` the share with at least one positive anchor (an
    anchor whose regression target is that nucleus); ``mean_positives`` positives per nucleus;
    ``iou70`` / ``iou50`` the shares whose best anchor has IoU >= 0.7 / 0.5; ``median_best_iou``.
    """
    size = (config.data.image_size,) * 2
    anchors = config_anchors(config.model, size)
    assign = jax.jit(
        functools.partial(
            targets.assign_anchors, jnp.asarray(anchors), **anchor_assignment(config.model, size)
        )
    )
    source = input_pipeline.open_split(config.data, split)
    count = len(source) if max_images is None else min(max_images, len(source))
    scale = config.data.image_size / input_pipeline.PANNUKE_SIZE
    positives, best = [], []
    slots = 1
    for i in range(count):
        boxes = nucleus_boxes(source[i]["instances"], scale)
        if not len(boxes):
            continue
        while slots < len(boxes):  # pad to a power of two: few distinct shapes to compile
            slots *= 2
        padded = np.zeros((slots, 4), np.float32)
        padded[: len(boxes)] = boxes
        positive, _, matched = assign(jnp.asarray(padded), jnp.arange(slots) < len(boxes))
        positive, matched = np.asarray(positive), np.asarray(matched)
        positives.append(np.bincount(matched[positive], minlength=slots)[: len(boxes)])
        best.append(np.asarray(pairwise_iou(boxes, anchors)).max(axis=1))
    positives, best = np.concatenate(positives), np.concatenate(best)
    return {
        "nuclei": int(positives.size),
        "covered": float(np.mean(positives > 0)),
        "mean_positives": float(np.mean(positives)),
        "iou70": float(np.mean(best >= 0.7)),
        "iou50": float(np.mean(best >= 0.5)),
        "median_best_iou": float(np.median(best)),
    }


def proposal_recall(config: Config, model, split: str, *, iou: float = 0.5) -> float:
    """Share of the nuclei of ``split`` that some inference-time proposal of ``model`` covers at IoU >=
    ``iou`` (boxes at the model's resolution)."""
    size = (config.data.image_size,) * 2
    variables = model.trainable_variables + model.non_trainable_variables

    @jax.jit
    def run(values, images):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            logits, deltas = model.rpn_head(model.features(images))
            return model.proposals(logits, deltas, size)

    values = [v.value for v in variables]
    found = total = 0
    for batch in input_pipeline.make_eval_iterator(config, split):
        boxes, valid = jax.device_get(run(values, batch["image"]))
        for i in np.nonzero(batch["example_valid"])[0]:
            truth = nucleus_boxes(batch["instances"][i], batch["scale"][i])
            if not len(truth):
                continue
            best = np.asarray(pairwise_iou(truth, boxes[i][valid[i]])).max(axis=1, initial=0.0)
            found += int(np.sum(best >= iou))
            total += len(truth)
    return found / max(total, 1)


def format_coverage(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of :func:`anchor_coverage` results, one row per (label, result)."""
    lines = [
        "| anchors and assignment | nuclei | with a positive | positives per nucleus | best IoU >= 0.7 "
        "| best IoU >= 0.5 | median best IoU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['nuclei']} | {r['covered']:.1%} | {r['mean_positives']:.2f} | {r['iou70']:.1%} "
            f"| {r['iou50']:.1%} | {r['median_best_iou']:.2f} |"
        )
    return "\n".join(lines)
