"""The Mask R-CNN model (He et al. 2017): backbone -> FPN -> RPN -> proposals -> ROI heads -> outputs."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np

from maskrcnn import losses, postprocess, targets
from maskrcnn.config import ModelConfig
from maskrcnn.model.backbone import build_backbone, feature_strides
from maskrcnn.model.fpn import FPN
from maskrcnn.model.heads import BoxHead, MaskHead, RPNHead
from maskrcnn.model.named import import_named
from maskrcnn.ops import anchors_per_level, generate_anchors, multilevel_roi_align
from maskrcnn.ops.anchors import feature_size

LOSS_NAMES = ("rpn_class", "rpn_box", "class", "box", "mask")
# Config fields that only steer inference: a trained model can be evaluated with other values.
INFERENCE_FIELDS = (
    "pre_nms_limit",
    "pre_nms_per_level",
    "post_nms_rois_inference",
    "rpn_nms_threshold",
    "detection_max_instances",
    "detection_min_confidence",
    "detection_nms_threshold",
    "detection_objectness_weight",
    "test_time_flips",
    "rescore_refined_boxes",
    "mask_threshold",
)
MASK_CHUNK = 64  # detection slots per mask-head call at inference
# model.test_time_flips: the views, (top-bottom, left-right) mirrored, and the score down to which each
# view keeps its detections to vote with (detectron2's test-time score floor).
FLIPS = ((False, False), (False, True), (True, False), (True, True))
VIEW_SCORE_FLOOR = 0.05


def _flip_images(images, flip):
    """(B, H, W, C) images mirrored top-bottom and/or left-right (``flip``: one of :data:`FLIPS`)."""
    vertical, horizontal = flip
    return images[:, :: -1 if vertical else 1, :: -1 if horizontal else 1]


def _flip_boxes(boxes, flip, size):
    """(..., 4) yxyx boxes of an (H, W) = ``size`` image mapped through the same mirroring: on pixel edges,
    coordinate y goes to H - y (and the box's corners swap)."""
    y1, x1, y2, x2 = (boxes[..., i] for i in range(4))
    if flip[0]:
        y1, y2 = size[0] - y2, size[0] - y1
    if flip[1]:
        x1, x2 = size[1] - x2, size[1] - x1
    return jnp.stack([y1, x1, y2, x2], axis=-1)


def _flip_masks(masks, flip):
    """(..., m, m) box-relative masks mirrored like their boxes (a mirror is its own inverse)."""
    return masks[..., :: -1 if flip[0] else 1, :][..., :: -1 if flip[1] else 1]


class MaskRCNN(keras.Model):
    """Mask R-CNN with a ResNet-FPN backbone.

    Call ``model(images)`` for detections, or ``model(images, targets, key=key, training=True)`` for the
    five training losses. ``images`` are uint8 or float (B, S, S, 3) RGB in 0..255, S a multiple of the
    coarsest anchor stride (64 for P6).
    ``targets`` is a batch of the input pipeline (``boxes``, ``classes``, ``masks``, ``valid``).

    Parts are constructor arguments built from ``config`` when not given, so a researcher can swap one
    (e.g. ``MaskRCNN(config, mask_head=MyMaskHead(...))``) without touching the rest.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        mini_masks: bool = True,
        backbone: keras.Model | None = None,
        fpn: keras.layers.Layer | None = None,
        rpn_head: keras.layers.Layer | None = None,
        box_head: keras.layers.Layer | None = None,
        mask_head: keras.layers.Layer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.config = config
        self.mini_masks = mini_masks
        self.backbone = backbone or build_backbone(config)
        self.fpn = fpn or _named_part(config, "fpn") or FPN(config.fpn_channels, name="fpn")
        self.rpn_head = (
            rpn_head
            or _named_part(config, "rpn_head")
            or RPNHead(
                len(config.anchor_ratios) * len(config.anchor_octaves),
                object_prior=config.rpn_object_prior,
                name="rpn",
            )
        )
        self.box_head = (
            box_head
            or _named_part(config, "box_head")
            or BoxHead(
                config.num_classes,
                config.pool_size,
                config.box_head_width,
                train_bn=config.train_bn,
                name="box_head",
            )
        )
        self.mask_head = (
            mask_head
            or _named_part(config, "mask_head")
            or MaskHead(
                config.num_classes, config.mask_head_width, train_bn=config.train_bn, name="mask_head"
            )
        )

    # ----------------------------------------------------------------------------------------------
    def call(self, images, targets=None, key=None, training=False):
        if targets is None and self.config.test_time_flips:
            return self.detect_flipped(images)
        size = self._image_size(images)
        pyramid = self.features(images, training=training)
        rpn_logits, rpn_deltas = self.rpn_head(pyramid)
        proposals, proposal_scores, proposal_valid = self.proposals(
            rpn_logits, rpn_deltas, size, training=training
        )
        if targets is None:
            return self.detect(pyramid[:4], proposals, proposal_scores, proposal_valid, size)
        return self.training_losses(
            pyramid[:4], rpn_logits, rpn_deltas, proposals, proposal_valid, targets, key, size
        )

    # ----------------------------------------------------------------------------------------------
    def features(self, images, training=False):
        """Normalised images -> [P2, P3, P4, P5, P6]."""
        x = images.astype("float32") - jnp.asarray(self.config.pixel_mean, jnp.float32)
        if self.config.bgr:
            x = x[..., ::-1]
        c2_c5 = self.backbone(x.astype(self.compute_dtype), training=training and self.config.train_bn)
        return self.fpn(c2_c5)

    def proposals(self, rpn_logits, rpn_deltas, size, training=False):
        """Region proposals of a batch (:func:`maskrcnn.postprocess.propose`): boxes (B, P, 4), their
        object probabilities (B, P) and valid (B, P)."""
        cfg = self.config
        propose = functools.partial(
            postprocess.propose,
            anchors=self.anchors(size),
            image_size=size,
            pre_nms_limit=cfg.pre_nms_limit,
            num_proposals=cfg.post_nms_rois_training if training else cfg.post_nms_rois_inference,
            nms_threshold=cfg.rpn_nms_threshold,
            level_sizes=self.anchor_level_sizes(size) if cfg.pre_nms_per_level else None,
        )
        # Proposals are inputs to the second stage, not a path for gradients (as in Matterport).
        return jax.vmap(propose)(jax.lax.stop_gradient(rpn_logits), jax.lax.stop_gradient(rpn_deltas))

    def roi_features(self, pyramid, boxes, output_size):
        # ROIAlign's window form where it pays: the mask head's pooling, 3,136 cells a box in the gather
        # form; at the box head's 7x7 (784) its backward ran slower (experiments/results/roi_window.md).
        window = (self.config.roi_window or None) if output_size == self.config.mask_pool_size else None
        return multilevel_roi_align(
            pyramid,
            boxes,
            output_size,
            strides=self.feature_strides,  # P2-P5 (P6 only feeds the RPN), as in the FPN paper
            canonical_size=self.config.roi_canonical_size,
            sampling_ratio=2,
            window=window,
        )

    def box_features(self, pyramid, rois):
        """The box head's input: each ROI's box scaled by ``model.box_context`` about its centre, pooled
        ``pool_size`` square (:meth:`roi_features`)."""
        context = self.config.box_context
        if context != 1:
            centre = (rois[..., :2] + rois[..., 2:]) / 2
            half = (rois[..., 2:] - rois[..., :2]) * (context / 2)
            rois = jnp.concatenate([centre - half, centre + half], axis=-1)
        return self.roi_features(pyramid, rois, self.config.pool_size)

    def classify(self, pyramid, rois, size):
        """The box head at inference: class logits (B, R, K+1) and box deltas (B, R, K+1, 4) of ROIs (B, R,
        4), pooled from ``pyramid`` P2-P5.

        With ``model.rescore_refined_boxes`` the head also runs on each ROI refined by its best foreground
        class (:func:`maskrcnn.postprocess.refined_rois`), and the logits returned are the log of the mean
        of both passes' class probabilities; the deltas are the first pass's, so the boxes do not change.
        """
        cfg = self.config
        class_logits, box_deltas = self.box_head(self.box_features(pyramid, rois))
        if not cfg.rescore_refined_boxes:
            return class_logits, box_deltas
        refined = jax.vmap(functools.partial(postprocess.refined_rois, image_size=size))(
            class_logits, box_deltas, rois
        )
        second, _ = self.box_head(self.box_features(pyramid, refined))
        probs = [jax.nn.softmax(x.astype("float32"), axis=-1) for x in (class_logits, second)]
        return jnp.log((probs[0] + probs[1]) / 2), box_deltas

    def detect(self, pyramid, proposals, proposal_scores, proposal_valid, size):
        """Second stage at inference: classify and refine proposals, then predict the detections' masks."""
        class_logits, box_deltas = self.classify(pyramid, proposals, size)
        detections = self.detections(
            class_logits, box_deltas, proposals, proposal_valid, size, proposal_scores=proposal_scores
        )
        return {**detections, "masks": self.detection_masks(pyramid, detections)}

    def detect_flipped(self, images):
        """Detections of a batch voted over each image's four flips (``model.test_time_flips``).

        The views run as one batch of 4B; each view's detections (down to ``VIEW_SCORE_FLOOR``) are mapped
        back to the image's frame and pooled by :func:`maskrcnn.postprocess.merge_views`; each kept box's
        mask is the mean of the masks the four views predict for it (the box mirrored into the view, the
        mask mirrored back).
        """
        cfg = self.config
        size = self._image_size(images)
        views = len(FLIPS)
        pyramid = self.features(jnp.concatenate([_flip_images(images, f) for f in FLIPS]))
        rpn_logits, rpn_deltas = self.rpn_head(pyramid)
        proposals, proposal_scores, proposal_valid = self.proposals(rpn_logits, rpn_deltas, size)
        class_logits, box_deltas = self.classify(pyramid[:4], proposals, size)
        found = self.detections(
            class_logits,
            box_deltas,
            proposals,
            proposal_valid,
            size,
            proposal_scores=proposal_scores,
            min_confidence=min(cfg.detection_min_confidence, VIEW_SCORE_FLOOR),
        )

        def by_image(x):  # (4B, ...) in view order -> (B, 4, ...)
            return jnp.stack(jnp.split(x, views), axis=1)

        boxes = [
            _flip_boxes(b, f, size) for b, f in zip(jnp.split(found["boxes"], views), FLIPS, strict=True)
        ]
        merge = functools.partial(
            postprocess.merge_views,
            min_confidence=cfg.detection_min_confidence,
            nms_threshold=cfg.detection_nms_threshold,
            max_detections=cfg.detection_max_instances,
        )
        merged = jax.vmap(merge)(
            jnp.stack(boxes, axis=1),
            by_image(found["scores"]),
            by_image(found["classes"]),
            by_image(found["valid"]),
        )
        seen = {
            "boxes": jnp.concatenate([_flip_boxes(merged["boxes"], f, size) for f in FLIPS]),
            **{k: jnp.concatenate([merged[k]] * views) for k in ("classes", "valid")},
        }
        masks = jnp.split(self.detection_masks(pyramid[:4], seen), views)
        masks = sum(_flip_masks(m, f) for m, f in zip(masks, FLIPS, strict=True)) / views
        return {**merged, "masks": masks}

    def detections(
        self,
        class_logits,
        box_deltas,
        proposals,
        proposal_valid,
        size,
        proposal_scores=None,
        min_confidence=None,
    ):
        """Per-class scoring, box refinement and NMS of a batch (:func:`maskrcnn.postprocess.detect`);
        ``proposal_scores`` (B, P), the RPN's object probabilities, take part in the score with
        ``model.detection_objectness_weight``; ``min_confidence`` overrides the config's."""
        cfg = self.config
        detect = functools.partial(
            postprocess.detect,
            image_size=size,
            min_confidence=cfg.detection_min_confidence if min_confidence is None else min_confidence,
            nms_threshold=cfg.detection_nms_threshold,
            max_detections=cfg.detection_max_instances,
            objectness_weight=cfg.detection_objectness_weight,
        )
        if proposal_scores is None:
            proposal_scores = jnp.ones(proposal_valid.shape, jnp.float32)
        return jax.vmap(detect)(class_logits, box_deltas, proposals, proposal_valid, proposal_scores)

    def detection_masks(self, pyramid, detections):
        """Mask probabilities (B, D, m, m) of the detections' classes (zero past the last chunk in use).

        Valid detections come first in every image, so the mask head runs over chunks of
        ``MASK_CHUNK`` slots only until the last valid detection of the batch: its cost follows the
        number of nuclei found rather than the number of slots (256 in ``fast``).
        """
        cfg = self.config
        boxes, classes = detections["boxes"], detections["classes"]
        batch, slots = classes.shape
        chunk = min(MASK_CHUNK, slots)
        padded = -(-slots // chunk) * chunk
        boxes = jnp.pad(boxes, ((0, 0), (0, padded - slots), (0, 0)))
        channels = jnp.pad(jnp.maximum(classes - 1, 0), ((0, 0), (0, padded - slots)))
        size = cfg.mask_size

        def run(i, masks):
            part = jax.lax.dynamic_slice_in_dim(boxes, i * chunk, chunk, axis=1)
            logits = self.mask_head(self.roi_features(pyramid, part, cfg.mask_pool_size)).astype("float32")
            channel = jax.lax.dynamic_slice_in_dim(channels, i * chunk, chunk, axis=1)
            probs = jax.nn.sigmoid(losses.class_channel(logits, channel, axis=-1))
            return jax.lax.dynamic_update_slice_in_dim(masks, probs, i * chunk, axis=1)

        used = jnp.max(jnp.sum(detections["valid"], axis=1))
        masks = jax.lax.fori_loop(0, (used + chunk - 1) // chunk, run, jnp.zeros((batch, padded, size, size)))
        return masks[:, :slots]

    def training_targets(self, proposals, proposal_valid, batch, key, size):
        """Anchor labels and box targets (B, A), (B, A, 4) and the sampled ROIs with their targets (a dict of
        (B, R, ...) arrays, :func:`maskrcnn.targets.sample_rois`) for a batch of the input pipeline."""
        cfg = self.config
        batch_size = proposals.shape[0]
        key_rpn, key_roi = jax.random.split(key)
        # Ground truth the input pipeline had no slot for is neither trained nor taught as background.
        ignored = {
            "boxes": batch.get("ignore_boxes", jnp.zeros((batch_size, 0, 4), jnp.float32)),
            "valid": batch.get("ignore_valid", jnp.zeros((batch_size, 0), bool)),
        }
        rpn_labels, rpn_target_deltas = jax.vmap(
            functools.partial(
                targets.rpn_targets,
                self.anchors(size),
                num_samples=cfg.rpn_train_anchors_per_image if cfg.rpn_loss == "sampled" else None,
                **self.anchor_assignment(size),
            )
        )(
            batch["boxes"],
            batch["valid"],
            jax.random.split(key_rpn, batch_size),
            ignore_boxes=ignored["boxes"],
            ignore_valid=ignored["valid"],
        )
        rois = jax.vmap(
            functools.partial(
                targets.sample_rois,
                num_rois=cfg.train_rois_per_image,
                positive_fraction=cfg.roi_positive_ratio,
                positive_iou=cfg.roi_positive_iou,
                mask_size=cfg.mask_size,
                mini_masks=self.mini_masks,
                add_gt_as_proposals=cfg.add_gt_as_proposals,
                positive_sampling=cfg.roi_positive_sampling,
            )
        )(
            proposals,
            proposal_valid,
            batch["boxes"],
            batch["classes"],
            batch["masks"],
            batch["valid"],
            jax.random.split(key_roi, batch_size),
            ignore_boxes=ignored["boxes"],
            ignore_valid=ignored["valid"],
        )
        return rpn_labels, rpn_target_deltas, rois

    def training_losses(self, pyramid, rpn_logits, rpn_deltas, proposals, proposal_valid, batch, key, size):
        """Second stage in training: sample ROIs against the ground truth and return :meth:`loss_parts`.

        (Not ``losses``: that is Keras' list of the layers' regularisation and ``add_loss`` terms, which the
        train step adds to these: :func:`maskrcnn.train.step.batch_losses`.)"""
        cfg = self.config
        rpn_labels, rpn_target_deltas, rois = self.training_targets(
            proposals, proposal_valid, batch, key, size
        )
        class_logits, box_deltas = self.box_head(self.box_features(pyramid, rois["rois"]), training=True)
        # Positives come first and number at most round(R * ratio): the mask head only needs those slots.
        num_pos = targets.positive_slots(cfg.train_rois_per_image, cfg.roi_positive_ratio)
        mask_logits = self.mask_head(
            self.roi_features(pyramid, rois["rois"][:, :num_pos], cfg.mask_pool_size), training=True
        )
        return self.loss_parts(
            {
                "rpn_logits": rpn_logits,
                "rpn_deltas": rpn_deltas,
                "rpn_labels": rpn_labels,
                "rpn_target_deltas": rpn_target_deltas,
                "class_logits": class_logits,
                "box_deltas": box_deltas,
                "mask_logits": mask_logits,
                "rois": rois,
                "num_pos": num_pos,
            }
        )

    def loss_parts(self, out: dict) -> dict:
        """The loss terms from the heads' outputs and their targets; the train step minimises their sum.

        Override to add a term (e.g. ``losses.mask_dice_loss``): every entry of the dict is trained and
        logged. ``out`` holds the RPN outputs and anchor targets, the sampled ``rois`` (see
        :func:`maskrcnn.targets.sample_rois`) and the head outputs; masks exist for the first ``num_pos``
        ROI slots, where the positives are.
        """
        rois, num_pos = out["rois"], out["num_pos"]
        return {
            "rpn_class": (
                losses.rpn_focal_loss if self.config.rpn_loss == "focal" else losses.rpn_class_loss
            )(out["rpn_logits"], out["rpn_labels"]),
            "rpn_box": losses.rpn_box_loss(out["rpn_deltas"], out["rpn_target_deltas"], out["rpn_labels"]),
            "class": losses.class_loss(out["class_logits"], rois["classes"], rois["valid"]),
            "box": losses.box_loss(out["box_deltas"], rois["deltas"], rois["classes"], rois["positive"]),
            "mask": losses.mask_loss(
                out["mask_logits"],
                rois["masks"][:, :num_pos],
                rois["classes"][:, :num_pos],
                rois["positive"][:, :num_pos],
            ),
        }

    def set_inference_config(self, config: ModelConfig) -> None:
        """Switches to ``config``, which may differ from the current one only in :data:`INFERENCE_FIELDS`
        (e.g. ``detection_min_confidence`` for an evaluation); anything else would not fit the weights."""
        changed = [
            f.name
            for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(self.config, f.name)
        ]
        fixed = [name for name in changed if name not in INFERENCE_FIELDS]
        if fixed:
            raise ValueError(
                f"model.{', model.'.join(fixed)} cannot change after training (only "
                f"{', '.join(INFERENCE_FIELDS)} can); train a new model for it"
            )
        self.config = config

    # ----------------------------------------------------------------------------------------------
    def anchors(self, size: tuple[int, int]) -> np.ndarray:
        return config_anchors(self.config, size)

    def anchor_level_sizes(self, size: tuple[int, int]) -> tuple[int, ...]:
        return anchor_level_sizes(self.config, size)

    def anchor_assignment(self, size: tuple[int, int]) -> dict:
        return anchor_assignment(self.config, size)

    def _image_size(self, images) -> tuple[int, int]:
        height, width = int(images.shape[1]), int(images.shape[2])
        coarsest = max(self.config.anchor_strides)
        if height % coarsest or width % coarsest:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of {coarsest} (the FPN's coarsest stride); "
                "resize or pad the images (data.image_size)"
            )
        return height, width

    def build(self, input_shape):
        """Creates every variable by tracing the parts on symbolic inputs of ``input_shape``."""
        height, width = input_shape[1], input_shape[2]
        images = keras.KerasTensor((None, height, width, 3))
        self.feature_strides = self._check_backbone()
        self.backbone.build(images.shape)
        pyramid = self.fpn(self.backbone(images))
        self.rpn_head(pyramid)
        channels = self.config.fpn_channels
        pool, mask_pool = self.config.pool_size, self.config.mask_pool_size
        logits, deltas = self.box_head(keras.KerasTensor((None, 1, pool, pool, channels)))
        masks = self.mask_head(keras.KerasTensor((None, 1, mask_pool, mask_pool, channels)))
        self._check_heads(logits.shape, deltas.shape, masks.shape)
        self.built = True

    def _check_backbone(self) -> tuple[int, ...]:
        """The backbone's declared strides (:mod:`maskrcnn.model.backbone`), which the anchors must use:
        ``model.anchor_strides`` is the backbone's four, then one level twice the coarsest (P6)."""
        strides = feature_strides(self.backbone)
        expected = (*strides, 2 * strides[-1])
        if tuple(self.config.anchor_strides) != expected:
            raise ValueError(
                f"backbone {self.backbone.name} returns feature maps at strides {strides}, so the FPN levels "
                f"P2-P6 have strides {expected}, but model.anchor_strides={self.config.anchor_strides}: set "
                f"model.anchor_strides={expected} (and one anchor scale per level)"
            )
        return strides

    def _check_heads(self, logits, deltas, masks):
        """Refuses heads whose outputs do not fit ``config.num_classes`` (K): class logits (B, R, K+1),
        box deltas (B, R, K+1 or 1, 4), mask logits (B, R, 2P, 2P, K or 1) for P = mask_pool_size."""
        k, problems = self.config.num_classes, []
        if logits[-1] != k + 1:
            problems.append(f"the box head gives {logits[-1]} class logits, expected {k + 1} (K + 1)")
        if deltas[-2:] not in ((k + 1, 4), (1, 4)):
            problems.append(f"the box head gives deltas {deltas[2:]}, expected ({k + 1}, 4) or (1, 4)")
        size = self.config.mask_size
        if tuple(masks[2:]) not in ((size, size, k), (size, size, 1)):
            problems.append(
                f"the mask head gives masks {tuple(masks[2:])}, expected ({size}, {size}, {k}) per class "
                f"or ({size}, {size}, 1) class-agnostic"
            )
        if problems:
            raise ValueError(f"heads do not fit model.num_classes={k}: " + "; ".join(problems))

    def get_config(self):
        """The model's config as plain values; :meth:`from_config` rebuilds the default parts from it
        (parts passed to the constructor are not serialised: pass them again)."""
        return {
            **super().get_config(),
            "config": dataclasses.asdict(self.config),
            "mini_masks": self.mini_masks,
        }

    @classmethod
    def from_config(cls, config: dict):
        from maskrcnn.config import model_config_from_dict

        config = dict(config)
        model_config = config.pop("config")
        if isinstance(model_config, dict):
            model_config = model_config_from_dict(model_config)
        return cls(model_config, **config)


def _named_part(config: ModelConfig, field: str):
    """The part ``config.<field>`` names (``"package.module:callable"``, called with ``config``), or None."""
    spec = getattr(config, field)
    return import_named(spec, f"model.{field}")(config) if spec else None


def model_class(config: ModelConfig) -> type[MaskRCNN]:
    """The class ``config.model_class`` names (a :class:`MaskRCNN` subclass), or MaskRCNN."""
    if not config.model_class:
        return MaskRCNN
    cls = import_named(config.model_class, "model.model_class")
    if not (isinstance(cls, type) and issubclass(cls, MaskRCNN)):
        raise ValueError(
            f"model.model_class={config.model_class!r} is not a subclass of maskrcnn.model.MaskRCNN"
        )
    return cls


@functools.lru_cache(maxsize=8)
def config_anchors(config: ModelConfig, size: tuple[int, int]) -> np.ndarray:
    """float32 (A, 4): the anchors of ``config`` for (H, W) images (cached; configs are frozen)."""
    return generate_anchors(
        size,
        strides=config.anchor_strides,
        scales=config.anchor_scales,
        ratios=config.anchor_ratios,
        octaves=config.anchor_octaves,
    )


def anchor_level_sizes(config: ModelConfig, size: tuple[int, int]) -> tuple[int, ...]:
    """Anchors on each FPN level of :func:`config_anchors`."""
    per_location = len(config.anchor_ratios) * len(config.anchor_octaves)
    return tuple(anchors_per_level(size, config.anchor_strides, per_location))


def anchor_assignment(config: ModelConfig, size: tuple[int, int]) -> dict:
    """The keyword arguments of :func:`maskrcnn.targets.assign_anchors` that ``config`` asks for."""
    return {
        "rule": config.rpn_assignment,
        "positive_iou": config.rpn_positive_iou,
        "negative_iou": config.rpn_negative_iou,
        "topk": config.atss_topk,
        "level_sizes": anchor_level_sizes(config, size),
        "atss_candidates": config.atss_candidates,
        "anchors_per_location": len(config.anchor_octaves) * len(config.anchor_ratios),
        "level_shapes": tuple(
            (feature_size(size[0], s), feature_size(size[1], s)) for s in config.anchor_strides
        ),
    }


def build_model(config: ModelConfig, image_size: int, *, mini_masks: bool = True, **parts) -> MaskRCNN:
    """Builds the model ``config`` describes (``model.model_class``, its named parts, or ours) with all
    variables created for ``image_size`` square inputs; ``parts`` (``backbone=``, ``mask_head=``, ...)
    replace the config's."""
    model = model_class(config)(config, mini_masks=mini_masks, **parts)
    model.build((None, image_size, image_size, 3))
    return model


def detections_to_label_maps(detections, output_size, scale=1.0, threshold=0.5):
    """Pastes a batch of detections' masks at full size and resolves overlaps by score.

    Args:
      detections: dict from ``model(images)``: ``boxes`` (B, D, 4), ``scores`` (B, D), ``masks``
        (B, D, m, m), ``valid`` (B, D).
      output_size: (H, W) of the original images; scale: model pixels per original pixel.

    Returns:
      int32 (B, H, W) instance label maps; instance ``d + 1`` is detection ``d``.
    """

    def one(boxes, scores, masks, valid):
        full = postprocess.paste_masks(masks, boxes, output_size, scale)
        return postprocess.instance_label_map(full, scores, valid, threshold)

    return jax.vmap(one)(detections["boxes"], detections["scores"], detections["masks"], detections["valid"])
