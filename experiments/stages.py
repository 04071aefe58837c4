"""The Mask R-CNN stages as separate jitted programs, at inference and in the train step.

Every stage is a pure function of its own inputs (the previous stage's outputs, computed once beforehand)
and, for the Keras parts, of its variables (``stateless_call``). In the train step a stage with weights or a
path for gradients also has a forward + backward program (gradients of the sum of its outputs with respect
to its variables and its float inputs, as the whole step computes them). ``bench_model.py`` times them
(:func:`inference_stages`, :func:`train_stages`: the sum of the rows is close to the whole jitted call but
not equal, since XLA fuses across stage borders in the whole program); ``bench_census.py`` reads their XLA
programs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import harness
import jax
import jax.numpy as jnp

from maskrcnn.model import detections_to_label_maps
from maskrcnn.targets import positive_slots


class Program(NamedTuple):
    name: str
    forward: Callable  # jitted
    args: tuple
    backward: Callable | None = None  # jitted gradients of the sum of the outputs, or None
    backward_args: tuple = ()


def variables(layer) -> tuple[list, list]:
    """The current values of a Keras part's trainable and non-trainable variables."""
    return [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables]


def pure(layer, training=False) -> Callable:
    """A Keras part as a pure ``(trainable, non_trainable, *inputs) -> outputs``."""
    flags = {"training": training} if "training" in inspect.signature(layer.call).parameters else {}

    def run(trainable, non_trainable, *inputs):
        return layer.stateless_call(trainable, non_trainable, *inputs, **flags)[0]

    return run


def forward_backward(fn, trainable, non_trainable, inputs, input_grads=True) -> tuple[Callable, tuple]:
    """Jitted gradients of ``sum(fn(...))`` with respect to ``trainable`` (and the float ``inputs``), and
    the arguments to call it with."""

    def total(t, x):
        return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(fn(t, non_trainable, *x)))

    return jax.jit(jax.grad(total, argnums=(0, 1) if input_grads else 0)), (trainable, list(inputs))


def _normalised(model, images):
    cfg = model.config
    return (images.astype("float32") - jnp.asarray(cfg.pixel_mean, jnp.float32)).astype(model.compute_dtype)


def inference_programs(model, images) -> list[Program]:
    """The stages of ``model(images)`` and the label maps, each with the previous stage's outputs."""
    cfg = model.config
    size = (images.shape[1], images.shape[2])
    programs = []

    def stage(name, fn, *args):
        jitted = jax.jit(fn)
        programs.append(Program(name, jitted, args))
        return jitted(*args)

    def bound(layer):
        return functools.partial(pure(layer), *variables(layer))

    features = stage("backbone", bound(model.backbone), _normalised(model, images))
    pyramid = stage("FPN", bound(model.fpn), features)
    logits, deltas = stage("RPN head", bound(model.rpn_head), pyramid)
    proposals, scores, valid = stage(
        "proposals (top-k, NMS)", lambda a, b: model.proposals(a, b, size), logits, deltas
    )
    pooled = stage(
        "ROI pooling (box head)", lambda p, b: model.roi_features(p, b, cfg.pool_size), pyramid[:4], proposals
    )
    class_logits, box_deltas = stage("box head", bound(model.box_head), pooled)
    detections = stage(
        "detection (per-class NMS)",
        lambda c, d, p, v, s: model.detections(c, d, p, v, size, proposal_scores=s),
        class_logits,
        box_deltas,
        proposals,
        valid,
        scores,
    )
    masks = stage("ROI pooling + mask head (detections)", model.detection_masks, pyramid[:4], detections)
    stage(
        "mask pasting + label maps",
        lambda d: detections_to_label_maps(d, size),
        {**detections, "masks": masks},
    )
    return programs


def train_programs(model, batch, key) -> list[Program]:
    """The stages of the train step, forward and (where there are weights or a gradient path) backward."""
    cfg = model.config
    size = (batch["image"].shape[1], batch["image"].shape[2])
    programs = []

    def stage(name, part, inputs, *, grads=True, input_grads=True, training=True):
        """``part`` (a Keras layer, or a function of arrays) on ``inputs``; returns its outputs."""
        if hasattr(part, "stateless_call"):
            fn, (trainable, non_trainable) = pure(part, training=training), variables(part)
        else:
            fn, trainable, non_trainable = (lambda t, n, *a: part(*a)), [], []
        forward = jax.jit(functools.partial(fn, trainable, non_trainable))
        backward, backward_args = None, ()
        if grads:
            backward, backward_args = forward_backward(fn, trainable, non_trainable, inputs, input_grads)
        programs.append(Program(name, forward, tuple(inputs), backward, backward_args))
        return forward(*inputs)

    # As in the step: the backbone's batch norm trains only with model.train_bn; no gradient for images.
    x = _normalised(model, batch["image"])
    features = stage("backbone", model.backbone, [x], input_grads=False, training=cfg.train_bn)
    pyramid = stage("FPN", model.fpn, [features])
    logits, deltas = stage("RPN head", model.rpn_head, [pyramid])

    def propose(scores, box_deltas):
        return model.proposals(scores, box_deltas, size, training=True)

    proposals, _, valid = stage("proposals (top-k, NMS)", propose, [logits, deltas], grads=False)

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
    return programs


def inference_stages(model, images, repeats: int) -> list[tuple[str, float]]:
    """(stage, median seconds per batch) of :func:`inference_programs`."""
    return [
        (p.name, harness.median_seconds(p.forward, *p.args, repeats=repeats))
        for p in inference_programs(model, images)
    ]


def train_stages(model, batch, key, repeats: int) -> list[tuple[str, float, float | None]]:
    """(stage, forward seconds, forward + backward seconds or None) per batch of :func:`train_programs`."""
    rows = []
    for p in train_programs(model, batch, key):
        forward = harness.median_seconds(p.forward, *p.args, repeats=repeats)
        both = (
            None
            if p.backward is None
            else harness.median_seconds(p.backward, *p.backward_args, repeats=repeats)
        )
        rows.append((p.name, forward, both))
    return rows
