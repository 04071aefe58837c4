"""Where the time goes: each Mask R-CNN stage jitted on its own, at inference and in the train step.

Used by ``bench_model.py`` (``make bench-model``). Every stage is a pure function of its own inputs (the
previous stage's outputs, computed once beforehand) and, for the Keras parts, of its variables
(``stateless_call``), jitted and timed alone: the median of ``repeats`` calls after the compile. In the
train step a stage with weights or a path for gradients is also timed forward and backward (gradients of
the sum of its outputs with respect to its variables and its float inputs, as the whole step computes
them). The sum of the rows is close to the whole jitted call but not equal: XLA fuses across stage
borders in the whole program, and a stage alone cannot.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp

from experiments.bench_ops import median_seconds
from maskrcnn.model import detections_to_label_maps
from maskrcnn.targets import positive_slots


def _variables(layer):
    return [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables]


def _layer(layer, training=False):
    """A Keras part as a pure ``(trainable, non_trainable, *inputs) -> outputs``."""

    flags = {"training": training} if "training" in inspect.signature(layer.call).parameters else {}

    def run(trainable, non_trainable, *inputs):
        return layer.stateless_call(trainable, non_trainable, *inputs, **flags)[0]

    return run


def _bound(layer):
    """A Keras part as a pure function of its inputs, its variables' current values bound."""
    return functools.partial(_layer(layer), *_variables(layer))


def _forward_backward(fn, trainable, non_trainable, inputs, input_grads=True):
    """Jitted gradients of ``sum(fn(...))`` with respect to ``trainable`` (and the float ``inputs``)."""

    def total(t, x):
        return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(fn(t, non_trainable, *x)))

    return jax.jit(jax.grad(total, argnums=(0, 1) if input_grads else 0)), (trainable, list(inputs))


def inference_stages(model, images, repeats: int) -> list[tuple[str, float]]:
    """(stage, seconds per batch) of ``model(images)`` and the label maps, stage by stage."""
    cfg = model.config
    size = (images.shape[1], images.shape[2])
    x = (images.astype("float32") - jnp.asarray(cfg.pixel_mean, jnp.float32)).astype(model.compute_dtype)
    rows = []

    def stage(name, fn, *args):
        jitted = jax.jit(fn)
        rows.append((name, median_seconds(jitted, *args, repeats=repeats)))
        return jitted(*args)

    features = stage("backbone", _bound(model.backbone), x)
    pyramid = stage("FPN", _bound(model.fpn), features)
    logits, deltas = stage("RPN head", _bound(model.rpn_head), pyramid)
    proposals, valid = stage(
        "proposals (top-k, NMS)", lambda a, b: model.proposals(a, b, size), logits, deltas
    )
    pooled = stage(
        "ROI pooling (box head)", lambda p, b: model.roi_features(p, b, cfg.pool_size), pyramid[:4], proposals
    )
    class_logits, box_deltas = stage("box head", _bound(model.box_head), pooled)
    detections = stage(
        "detection (per-class NMS)",
        lambda c, d, p, v: model.detections(c, d, p, v, size),
        class_logits,
        box_deltas,
        proposals,
        valid,
    )
    masks = stage(
        "ROI pooling + mask head (detections)", model.detection_masks, pyramid[:4], detections
    )
    detections = {**detections, "masks": masks}
    stage("mask pasting + label maps", lambda d: detections_to_label_maps(d, size), detections)
    return rows


def train_stages(model, batch, key, repeats: int) -> list[tuple[str, float, float | None]]:
    """(stage, forward seconds, forward + backward seconds or None) per batch of the train step."""
    cfg = model.config
    images = batch["image"]
    size = (images.shape[1], images.shape[2])
    x = (images.astype("float32") - jnp.asarray(cfg.pixel_mean, jnp.float32)).astype(model.compute_dtype)
    rows = []

    def stage(name, part, inputs, *, grads=True, input_grads=True, training=True):
        """Times ``part`` (a Keras layer, or a function of arrays) on ``inputs``; returns its outputs."""
        if hasattr(part, "stateless_call"):
            fn, (trainable, non_trainable) = _layer(part, training=training), _variables(part)
        else:
            fn, trainable, non_trainable = (lambda t, n, *a: part(*a)), [], []
        forward = jax.jit(functools.partial(fn, trainable, non_trainable))
        seconds = median_seconds(forward, *inputs, repeats=repeats)
        both = None
        if grads:
            backward, args = _forward_backward(fn, trainable, non_trainable, inputs, input_grads)
            both = median_seconds(backward, *args, repeats=repeats)
        rows.append((name, seconds, both))
        return forward(*inputs)

    # As in the step: the backbone's batch norm trains only with model.train_bn; no gradient for images.
    features = stage("backbone", model.backbone, [x], input_grads=False, training=cfg.train_bn)
    pyramid = stage("FPN", model.fpn, [features])
    logits, deltas = stage("RPN head", model.rpn_head, [pyramid])

    def propose(scores, box_deltas):
        return model.proposals(scores, box_deltas, size, training=True)

    proposals, valid = stage("proposals (top-k, NMS)", propose, [logits, deltas], grads=False)

    def sample(p, v, b):
        return model.training_targets(p, v, b, key, size)

    _, _, rois = stage(
        "targets (anchors, ROI sampling, mask crops)", sample, [proposals, valid, batch], grads=False
    )
    rois = rois["rois"]
    num_pos = positive_slots(cfg.train_rois_per_image, cfg.roi_positive_ratio)  # the mask head's slots

    def box_pool(p, r):
        return model.roi_features(p, r, cfg.pool_size)

    def mask_pool(p, r):
        return model.roi_features(p, r, cfg.mask_pool_size)

    stage("box head", model.box_head, [stage("ROI pooling (box head)", box_pool, [pyramid[:4], rois])])
    pooled = stage("ROI pooling (mask head)", mask_pool, [pyramid[:4], rois[:, :num_pos]])
    stage("mask head", model.mask_head, [pooled])
    return rows
