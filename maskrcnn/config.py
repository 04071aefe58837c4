"""Frozen dataclasses that configure the data, the model and training.

A config is a plain value: presets live in ``maskrcnn/configs/*.py`` (each a ``get_config()``
function returning a :class:`Config`) and a variant is a few ``dataclasses.replace`` calls on its base.
:func:`apply_overrides` applies command-line ``key=value`` overrides such as
``model.rpn_nms_threshold=0.8`` with the field's own type.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import types
import typing
from collections.abc import Iterable

from maskrcnn import pannuke


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are turned into fixed-shape batches."""

    builder: str = "pannuke"  # "pannuke" (the tfds dataset) or "synthetic" (generated in memory)
    # "neoplastic" (the paper: neoplastic nuclei only), "all_classes" (five classes) or "nuclei" (every
    # nucleus as one class: a binary detector, read from the all_classes dataset)
    variant: str = "neoplastic"
    data_dir: str | None = None  # tfds data_dir; None uses tfds' default (~/tensorflow_datasets)
    train_split: str = "paper_train"
    val_split: str = "paper_validation"
    test_split: str = "paper_test"
    # Model pixels per input pixel: the model sees every image resized by this factor (the seed paper's
    # code: 4, PanNuke's 256 px patches upscaled to 1024). Nuclei of 6-40 px at 40x span few cells of the
    # stride-4 level; upscaling gives them more. The model's image side is data.image_size = 256 * scale.
    # Changing it through apply_overrides (--set data.scale=2) or rescale() scales model.anchor_scales and
    # model.roi_canonical_size with it (they are in model pixels); evaluate, predict and slides report in
    # the input's pixels either way.
    scale: float = 1.0
    # Microns per pixel of the training images (PanNuke: 40x, about 0.25 um/px) before the scale: slides
    # are resampled to it, then by the scale like every other input
    mpp: float = 0.25
    max_instances: int = 256  # ground-truth slots per image; more are counted and reported, not hidden
    mini_mask_size: int | None = 56  # instance masks stored cropped to their box at this size; None: full
    synthetic_images_per_fold: int = 24  # builder="synthetic": in-memory generated folds of this size
    augment: bool = True  # flips and rotation (and the colour jitter below, where set), training only
    max_rotation_degrees: float = 10.0  # the seed paper's augmentation: rotation within +-10 degrees
    # Stain and colour augmentation (maskrcnn.augment.color_jitter), training only; 0 turns each off.
    # hed_jitter: each haematoxylin-eosin-DAB channel c -> c * U(1 - s, 1 + s) + U(-s, s) (Tellez et al.
    # 2019, "HED-light" is s = 0.05); brightness, contrast, saturation: factors drawn from U(1 - s, 1 + s).
    hed_jitter: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    # Who prepares the examples (maskrcnn.input_pipeline.loader): "threads" of this process, worker
    # "processes" (a GPU machine's cores: the GIL binds threads), or "auto" (processes from 4 cores up).
    # The batches are the same either way. loader_workers: processes to start, 0 = one per core but one.
    loader: str = "auto"
    loader_workers: int = 0

    @property
    def image_size(self) -> int:
        """Side of the square image the model sees: a 256 px PanNuke patch times ``scale``."""
        return round(pannuke.PATCH_SIZE * self.scale)

    @property
    def class_names(self) -> tuple[str, ...]:
        return pannuke.variant_of(self.variant).class_names

    @property
    def num_classes(self) -> int:
        """Foreground classes (the model adds one for background)."""
        return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network and its box/anchor hyper-parameters. Defaults follow Matterport's Mask R-CNN config."""

    # A key of maskrcnn.model.backbone.BACKBONES, a name for backbone_blocks, or "module:function" that
    # builds a declared backbone from this ModelConfig (maskrcnn.model.backbone.build_backbone)
    backbone: str = "resnet101"
    # Bottleneck blocks in ResNet stages 2-5, e.g. (3, 8, 36, 3) for a ResNet152; None: BACKBONES[backbone].
    # Kept in the run's config.json, so evaluate and predict rebuild the same network.
    backbone_blocks: tuple[int, ...] | None = None
    backbone_width: int = 64  # channels of the stem; the tiny variant narrows it
    # The other parts a researcher swaps, each "package.module:callable" called with this ModelConfig and
    # returning the part (a Keras layer), or "" for ours (maskrcnn.model.fpn and .heads). config.json keeps
    # the names, so train, --resume, evaluate and predict rebuild the same model from the run alone.
    fpn: str = ""
    rpn_head: str = ""
    box_head: str = ""
    mask_head: str = ""
    # "package.module:Class": a MaskRCNN subclass (an extra loss term, another second stage), or "" for
    # MaskRCNN itself.
    model_class: str = ""
    # "keras" (keras.applications' ResNet, for its ImageNet weights) or "matterport" (Matterport's ResNet,
    # for its COCO weights): batch-norm epsilon and stem max-pool padding (maskrcnn.model.backbone)
    backbone_style: str = "keras"
    # Batch norm in inference mode everywhere (gamma and beta still train), as Matterport's TRAIN_BN=False
    # that the seed paper used: batches of a few images give poor batch statistics.
    train_bn: bool = False
    num_classes: int = 1  # foreground classes; must equal data.num_classes
    pixel_mean: tuple[float, float, float] = (123.7, 116.8, 103.9)  # RGB, Matterport's MEAN_PIXEL
    bgr: bool = False  # feed BGR to the backbone (keras.applications' caffe-style ImageNet weights want it)
    fpn_channels: int = 256
    # One anchor scale per FPN level P2..P6 (Matterport RPN_ANCHOR_SCALES / BACKBONE_STRIDES).
    anchor_scales: tuple[float, ...] = (32, 64, 128, 256, 512)
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Each level's scale times each of these (RetinaNet, Lin et al. 2017: (1, 2 ** (1/3), 2 ** (2/3)));
    # anchors per location = len(anchor_octaves) * len(anchor_ratios).
    anchor_octaves: tuple[float, ...] = (1.0,)
    # RPN anchor labels (maskrcnn.targets.assign_anchors). "iou" (Ren et al. 2015): positive at IoU >=
    # rpn_positive_iou or as a box's best anchor, negative below rpn_negative_iou. "atss" (Zhang et al.
    # 2020): positive among each box's atss_topk nearest anchors per level above their mean + std IoU.
    rpn_assignment: str = "iou"
    rpn_positive_iou: float = 0.7  # Faster R-CNN's RPN thresholds
    rpn_negative_iou: float = 0.3
    atss_topk: int = 9  # the ATSS paper's k
    # "anchors": the atss_topk nearest anchors a level (Alg. 1 as written); "locations": every anchor of
    # the atss_topk nearest locations, atss_topk * anchors per location a level (the authors' code).
    atss_candidates: str = "anchors"
    rpn_nms_threshold: float = 0.7
    rpn_train_anchors_per_image: int = 256  # Matterport RPN_TRAIN_ANCHORS_PER_IMAGE
    # The RPN's objectness loss. "sampled" (Faster R-CNN, Matterport): cross-entropy over
    # rpn_train_anchors_per_image anchors an image drawn at random, at most half of them positive, and the box
    # loss over those positives. "focal" (RetinaNet, Lin et al. 2017, alpha 0.25, gamma 2): every labelled
    # anchor, summed over the batch and divided by its positives, and the box loss over every positive.
    rpn_loss: str = "sampled"
    # The objectness every anchor starts training at: the RPN's object logits start with bias
    # log(p / (1 - p)), the background's with 0. RetinaNet's prior (Lin et al. 2017, section 4.1: 0.01)
    # keeps the focal loss's many background anchors from a large first loss; 0.5: both biases 0.
    rpn_object_prior: float = 0.5
    pre_nms_limit: int = 6000  # Matterport PRE_NMS_LIMIT
    # True: the pre_nms_limit best anchors of each FPN level, NMS within each level (torchvision,
    # detectron2); False: the pre_nms_limit best over all levels, one NMS (Matterport).
    pre_nms_per_level: bool = False
    post_nms_rois_training: int = 2000
    post_nms_rois_inference: int = 1000
    train_rois_per_image: int = 200  # Matterport TRAIN_ROIS_PER_IMAGE
    roi_positive_ratio: float = 0.33
    # A sampled ROI is foreground at box IoU >= this with a nucleus, background below it (Fast R-CNN's and
    # Matterport's 0.5); its box and mask targets are that nucleus's.
    roi_positive_iou: float = 0.5
    # How the sampled positives are drawn (maskrcnn.targets.sample_rois): "uniform" (Matterport,
    # torchvision: a nucleus weighs by its positive candidates, more for a larger one) or "per_nucleus"
    # (every nucleus the same weight, so a dense tile's positives cover more of its nuclei; on CoNSeP it
    # trains a worse model: experiments/results/learning_ablation_fold2.md, row posnuc).
    roi_positive_sampling: str = "uniform"
    add_gt_as_proposals: bool = False  # Detectron's default; Matterport does not
    pool_size: int = 7
    # The box head pools each ROI's box scaled by this about its centre (1: the box itself): context
    # around a small nucleus, whose own box covers two or three cells of P2. Its targets stay the ROI's.
    # 2 ties 1 on CoNSeP (experiments/results/learning_ablation_fold2.md, row context2).
    box_context: float = 1.0
    mask_pool_size: int = 14
    mask_size: int = 28
    roi_canonical_size: float = 224.0  # FPN paper Eq. 1: a 224x224 ROI maps to level 4
    # ROIAlign's window form (maskrcnn/ops/roi_align.py) for the mask head's pooling: the block side in
    # cells; 0 pools with the gather form. The same numbers either way; only the speed differs.
    roi_window: int = 16
    box_head_width: int = 1024  # Matterport FPN_CLASSIF_FC_LAYERS_SIZE
    mask_head_width: int = 256
    detection_max_instances: int = 100
    # Every foreground class of an ROI is a candidate with its own probability (torchvision's
    # postprocess_detections); candidates below this are dropped.
    detection_min_confidence: float = 0.7
    detection_nms_threshold: float = 0.3
    # 0: a detection's score is its class probability; w in (0, 1]: the weighted geometric mean
    # p ** (1 - w) * o ** w with the RPN's object probability o of its proposal (maskrcnn.postprocess.detect)
    detection_objectness_weight: float = 0.0
    # Test-time flips: the image, mirrored left-right, top-bottom and both, detected in one batch; boxes
    # voted across the views and masks averaged (maskrcnn.postprocess.merge_views). 4x the inference work.
    test_time_flips: bool = False
    # Score each ROI by the mean of the box head's class probabilities on it and on its refined box (the
    # ROI moved by its best foreground class's deltas): Cascade R-CNN's "iterative BBox" ensemble at
    # inference, with one head (maskrcnn.model.MaskRCNN.classify). A second box-head pass.
    rescore_refined_boxes: bool = False
    mask_threshold: float = 0.5


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One training stage: which layers train, for how long, and the linear learning-rate decay."""

    name: str
    # "heads", "all", or "N+": the heads and the backbone's trainable groups N and above (ResNet: 3+, 4+, 5+)
    layers: str
    epochs: int
    learning_rate: float


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 4
    stages: tuple[StageConfig, ...] = (
        StageConfig("heads", "heads", 20, 1e-3),
        StageConfig("all", "all", 30, 1e-4),
    )
    # "sgd": the seed paper's SGD with momentum; "adam": Adam (Kingma & Ba 2015) with b1 = momentum and b2
    # 0.999, the same clipping and the same L2 decay (added to the gradients before Adam normalises them),
    # at a stage learning rate of Adam's scale (1e-3, not SGD's 2e-2).
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_global_norm: float = 5.0
    lr_power: float = 1.0  # lr = start * (1 - epoch / final_epoch) ** power (the seed paper's Eq. 1)
    lr_per_step: bool = False  # False: constant within an epoch, as the paper; True: decays every step
    steps_per_epoch: int | None = None  # None: one pass over the training split
    checkpoint_every_steps: int = 500
    max_consecutive_nonfinite: int = 10
    mixed_precision: bool = False  # bf16 compute for GPUs; losses stay float32
    seed: int = 0
    # Initial weights (maskrcnn.model.pretrained): None (random), "imagenet" (keras.applications' ResNet,
    # downloaded by Keras), or the path of an .h5 file: Matterport's (mask_rcnn_coco.h5) or
    # keras.applications' ResNet weights. Not applied when training resumes from a checkpoint.
    init: str | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        problems = validate(self)
        if problems:
            raise ValueError(f"config {self.name!r}: " + "; ".join(problems))
        if self.model.num_classes != self.data.num_classes:
            raise ValueError(
                f"model.num_classes={self.model.num_classes} but data.variant={self.data.variant!r} has "
                f"{self.data.num_classes} classes; set both (the presets derive one from the other)"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _type_problems(value, tp, where: str) -> list[str]:
    """Whether ``value`` has the annotated type ``tp`` (an int passes for a float, a bool for neither)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, tp):
            return [f"{where} must be a {tp.__name__}, got {value!r}"]
        hints = typing.get_type_hints(tp)
        return [
            p
            for f in dataclasses.fields(tp)
            for p in _type_problems(getattr(value, f.name), hints[f.name], f"{where}.{f.name}")
        ]
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(tp):
            return []
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_problems(value, args[0], where)
    if origin is tuple:
        args = typing.get_args(tp)
        elements = [args[0]] * len(value) if args[-1] is Ellipsis and isinstance(value, tuple) else list(args)
        if not isinstance(value, tuple) or len(elements) != len(value):
            length = "any length" if args[-1] is Ellipsis else len(args)
            return [f"{where} must be a tuple of {length}, got {value!r}"]
        return [
            p
            for i, (v, e) in enumerate(zip(value, elements, strict=True))
            for p in _type_problems(v, e, f"{where}[{i}]")
        ]
    expected = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}.get(tp)
    if expected is None:
        return []
    if isinstance(value, bool) and tp is not bool or not isinstance(value, expected):
        return [f"{where} must be {tp.__name__}, got {value!r} ({type(value).__name__})"]
    return []


STAGE_LAYERS = ("heads", "3+", "4+", "5+", "all")  # for a ResNet; "N+" for other declared groups


def _stage_layers_ok(layers: str) -> bool:
    return layers in ("heads", "all") or (layers.endswith("+") and layers[:-1].isdigit())


def validate(config: Config) -> list[str]:
    """Every problem with ``config``'s values, each naming the field, the value and the rule ([] if none).

    Checked when a :class:`Config` is made (also by :func:`apply_overrides` and when a run's config.json is
    read), so a bad value stops the command before anything is built.
    """
    problems = [
        p
        for section in ("data", "model", "train")
        for p in _type_problems(getattr(config, section), typing.get_type_hints(Config)[section], section)
    ]
    if problems:
        return problems  # the range rules below assume the types
    d, m, t = config.data, config.model, config.train

    def rule(ok: bool, field: str, value, text: str):
        if not ok:
            problems.append(f"{field}={value!r} {text}")

    def unit(field, value, low_open=False):
        rule(
            (0 < value if low_open else 0 <= value) and value <= 1,
            field,
            value,
            "must be in " + ("(0, 1]" if low_open else "[0, 1]"),
        )

    def positive(field, value):
        rule(value >= 1, field, value, "must be at least 1")

    rule(d.mpp > 0, "data.mpp", d.mpp, "must be positive (microns per pixel of the training images)")
    rule(d.builder in ("pannuke", "synthetic"), "data.builder", d.builder, "must be 'pannuke' or 'synthetic'")
    rule(
        d.variant in pannuke.VARIANTS,
        "data.variant",
        d.variant,
        f"must be one of {', '.join(map(repr, pannuke.VARIANTS))}",
    )
    side = pannuke.PATCH_SIZE * d.scale
    rule(
        d.scale > 0 and side == round(side) and round(side) % 64 == 0,
        "data.scale",
        d.scale,
        f"gives {side:g} px model images; {pannuke.PATCH_SIZE} * scale must be a positive multiple of 64 "
        "(the FPN's coarsest stride): a multiple of 0.25",
    )
    positive("data.max_instances", d.max_instances)
    rule(
        d.mini_mask_size is None or d.mini_mask_size >= 2,
        "data.mini_mask_size",
        d.mini_mask_size,
        "must be None (full masks) or at least 2",
    )
    positive("data.synthetic_images_per_fold", d.synthetic_images_per_fold)
    rule(
        d.loader in ("auto", "threads", "processes"),
        "data.loader",
        d.loader,
        "must be 'auto', 'threads' or 'processes'",
    )
    rule(d.loader_workers >= 0, "data.loader_workers", d.loader_workers, "must be 0 (one per core) or more")
    rule(
        0 <= d.max_rotation_degrees <= 180,
        "data.max_rotation_degrees",
        d.max_rotation_degrees,
        "must be in [0, 180]",
    )
    for name in ("hed_jitter", "brightness", "contrast", "saturation"):
        value = getattr(d, name)
        rule(0 <= value < 1, f"data.{name}", value, "must be in [0, 1) (0 turns it off)")

    rule(
        m.backbone_blocks is None or (len(m.backbone_blocks) == 4 and min(m.backbone_blocks) >= 1),
        "model.backbone_blocks",
        m.backbone_blocks,
        "must be None or four positive block counts (ResNet stages 2-5)",
    )
    for name in ("fpn", "rpn_head", "box_head", "mask_head", "model_class"):
        value = getattr(m, name)
        module, _, attr = value.partition(":")
        rule(
            value == "" or (module and attr),
            f"model.{name}",
            value,
            "must be '' (the built-in part) or 'package.module:name'",
        )
    rule(
        m.backbone_style in ("keras", "matterport"),
        "model.backbone_style",
        m.backbone_style,
        "must be 'keras' or 'matterport'",
    )
    for name in (
        "num_classes",
        "backbone_width",
        "fpn_channels",
        "rpn_train_anchors_per_image",
        "pre_nms_limit",
        "post_nms_rois_training",
        "post_nms_rois_inference",
        "train_rois_per_image",
        "pool_size",
        "mask_pool_size",
        "mask_size",
        "box_head_width",
        "mask_head_width",
        "detection_max_instances",
        "atss_topk",
    ):
        positive(f"model.{name}", getattr(m, name))
    rule(
        len(m.anchor_scales) == len(m.anchor_strides),
        "model.anchor_scales",
        m.anchor_scales,
        f"must hold one scale per stride of model.anchor_strides={m.anchor_strides}",
    )
    for name in ("anchor_scales", "anchor_strides", "anchor_ratios", "anchor_octaves"):
        value = getattr(m, name)
        rule(
            len(value) > 0 and all(v > 0 for v in value),
            f"model.{name}",
            value,
            "must be non-empty and positive",
        )
    rule(
        m.atss_candidates in ("anchors", "locations"),
        "model.atss_candidates",
        m.atss_candidates,
        "must be 'anchors' or 'locations'",
    )
    rule(
        m.rpn_loss in ("sampled", "focal"),
        "model.rpn_loss",
        m.rpn_loss,
        "must be 'sampled' or 'focal'",
    )
    rule(
        0.0 < m.rpn_object_prior < 1.0,
        "model.rpn_object_prior",
        m.rpn_object_prior,
        "must be in (0, 1)",
    )
    rule(
        m.rpn_assignment in ("iou", "atss"),
        "model.rpn_assignment",
        m.rpn_assignment,
        "must be 'iou' or 'atss'",
    )
    rule(
        m.roi_positive_sampling in ("uniform", "per_nucleus"),
        "model.roi_positive_sampling",
        m.roi_positive_sampling,
        "must be 'uniform' or 'per_nucleus'",
    )
    unit("model.rpn_positive_iou", m.rpn_positive_iou)
    unit("model.rpn_negative_iou", m.rpn_negative_iou)
    rule(
        m.rpn_negative_iou <= m.rpn_positive_iou,
        "model.rpn_negative_iou",
        m.rpn_negative_iou,
        f"must not exceed model.rpn_positive_iou={m.rpn_positive_iou}",
    )
    for name in (
        "rpn_nms_threshold",
        "detection_min_confidence",
        "detection_nms_threshold",
        "detection_objectness_weight",
    ):
        unit(f"model.{name}", getattr(m, name))
    unit("model.roi_positive_ratio", m.roi_positive_ratio, low_open=True)
    unit("model.roi_positive_iou", m.roi_positive_iou, low_open=True)
    rule(1 <= m.box_context <= 4, "model.box_context", m.box_context, "must be in [1, 4]")
    rule(0 < m.mask_threshold < 1, "model.mask_threshold", m.mask_threshold, "must be in (0, 1)")
    candidates = m.post_nms_rois_training + (d.max_instances if m.add_gt_as_proposals else 0)
    rule(
        m.train_rois_per_image <= candidates,
        "model.train_rois_per_image",
        m.train_rois_per_image,
        f"must not exceed the {candidates} ROI candidates (model.post_nms_rois_training"
        + (" + data.max_instances" if m.add_gt_as_proposals else "")
        + ")",
    )
    rule(m.roi_canonical_size > 0, "model.roi_canonical_size", m.roi_canonical_size, "must be positive")
    rule(m.roi_window == 0 or m.roi_window >= 2, "model.roi_window", m.roi_window, "must be 0 or at least 2")

    positive("train.batch_size", t.batch_size)
    rule(len(t.stages) > 0, "train.stages", t.stages, "must hold at least one stage")
    for i, stage in enumerate(t.stages):
        rule(
            _stage_layers_ok(stage.layers),
            f"train.stages[{i}].layers",
            stage.layers,
            f"must be 'heads', 'all' or 'N+' (a ResNet: {', '.join(STAGE_LAYERS)})",
        )
        rule(stage.epochs >= 0, f"train.stages[{i}].epochs", stage.epochs, "must be at least 0")
        rule(
            stage.learning_rate > 0,
            f"train.stages[{i}].learning_rate",
            stage.learning_rate,
            "must be positive",
        )
    rule(t.optimizer in ("sgd", "adam"), "train.optimizer", t.optimizer, "must be 'sgd' or 'adam'")
    rule(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    rule(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be at least 0")
    rule(t.clip_global_norm > 0, "train.clip_global_norm", t.clip_global_norm, "must be positive")
    rule(t.lr_power > 0, "train.lr_power", t.lr_power, "must be positive")
    rule(
        t.steps_per_epoch is None or t.steps_per_epoch >= 1,
        "train.steps_per_epoch",
        t.steps_per_epoch,
        "must be None (one pass over the split) or at least 1",
    )
    positive("train.checkpoint_every_steps", t.checkpoint_every_steps)
    positive("train.max_consecutive_nonfinite", t.max_consecutive_nonfinite)
    return problems


def config_from_dict(d: dict) -> Config:
    """Inverse of :meth:`Config.to_dict` (used to reload the config saved beside a checkpoint).

    A config written before ``data.scale`` existed holds ``data.image_size`` (the model's side) instead:
    it reads as ``scale = image_size / 256``.
    """
    data = d.get("data")
    if isinstance(data, dict) and "image_size" in data:
        data = {k: v for k, v in data.items() if k != "image_size"}
        data.setdefault("scale", d["data"]["image_size"] / pannuke.PATCH_SIZE)
        d = {**d, "data": data}
    return _from_dict(Config, d)


def model_config_from_dict(d: dict) -> ModelConfig:
    """Inverse of ``dataclasses.asdict`` for a :class:`ModelConfig` (``MaskRCNN.from_config``)."""
    return _from_dict(ModelConfig, d)


def _from_dict(cls, d):
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        kwargs[f.name] = _coerce(hints[f.name], d[f.name])
    return cls(**kwargs)


def _coerce(tp, value):
    """Converts a JSON-ish value to the annotated field type ``tp``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value) if isinstance(value, dict) else value
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if tp is float and isinstance(value, int | float):
        return float(value)
    return value


def rescale(config: Config, scale: float) -> Config:
    """``config`` with ``data.scale`` set to ``scale`` and the model's sizes in pixels following it:
    ``model.anchor_scales`` and ``model.roi_canonical_size`` times ``scale / data.scale``, so each nucleus
    meets the same anchors and pools from the same FPN level as before, with more cells across it."""
    factor = scale / config.data.scale
    m = config.model
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, scale=scale),
        model=dataclasses.replace(
            m,
            anchor_scales=tuple(s * factor for s in m.anchor_scales),
            roi_canonical_size=m.roi_canonical_size * factor,
        ),
    )


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """Returns ``config`` with ``section.field=value`` overrides applied.

    Values are parsed as Python literals (``0.8``, ``(8, 16, 32)``, ``None``, ``True``) and fall back to
    a plain string. A training stage's field is ``train.stages[i].field`` (``i`` its index, or ``*`` for
    every stage): ``train.stages[0].learning_rate=4e-2``. ``data.scale`` goes through :func:`rescale`
    before the other overrides, so the anchors follow it unless the same call sets them.
    """
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or "." not in key:
            raise ValueError(f"override {item!r} must look like section.field=value, e.g. data.scale=2")
        if key.startswith("train.stages["):
            config = _override_stages(config, item, key, raw)
            continue
        section, field = key.split(".", 1)
        if section not in ("data", "model", "train"):
            raise ValueError(f"override {item!r}: section must be data, model or train, got {section!r}")
        sub = getattr(config, section)
        hints = typing.get_type_hints(type(sub))
        if (section, field) == ("data", "image_size"):
            raise ValueError(
                f"override {item!r}: the model's image side is data.scale times 256 px; set data.scale "
                "(data.scale=2 for 512 px, and the anchors follow)"
            )
        if field not in hints:
            raise ValueError(f"override {item!r}: {section} has no field {field!r}; fields: {sorted(hints)}")
        parsed.append((section, field, _coerce(hints[field], _literal(raw))))
    for section, field, value in sorted(parsed, key=lambda p: p[:2] != ("data", "scale")):
        if (section, field) == ("data", "scale"):
            config = rescale(config, value)
            continue
        sub = dataclasses.replace(getattr(config, section), **{field: value})
        if section == "data" and field == "variant":
            config = dataclasses.replace(
                config, data=sub, model=dataclasses.replace(config.model, num_classes=sub.num_classes)
            )
        else:
            config = dataclasses.replace(config, **{section: sub})
    return config


def _literal(raw: str):
    """An override's value: a Python literal, or else the plain string."""
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return raw.strip()


def _override_stages(config: Config, item: str, key: str, raw: str) -> Config:
    """``config`` with ``train.stages[i].field=raw`` (``i`` an index or ``*``) applied."""
    which, _, field = key[len("train.stages[") :].partition("].")
    stages = config.train.stages
    hints = typing.get_type_hints(StageConfig)
    if which == "*":
        picked = range(len(stages))
    elif which.isdigit() and int(which) < len(stages):
        picked = [int(which)]
    else:
        raise ValueError(
            f"override {item!r}: the stage must be an index below {len(stages)} (stages "
            f"{[s.name for s in stages]}) or *, e.g. train.stages[0].learning_rate=1e-2"
        )
    if field not in hints:
        raise ValueError(f"override {item!r}: a stage has no field {field!r}; fields: {sorted(hints)}")
    value = _coerce(hints[field], _literal(raw))
    new = tuple(dataclasses.replace(s, **{field: value}) if i in picked else s for i, s in enumerate(stages))
    return dataclasses.replace(config, train=dataclasses.replace(config.train, stages=new))


CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")  # shipped in the wheel


def load_config(name_or_path: str) -> Config:
    """Loads a preset by name (``paper``, ``fast``, ``tiny``) or from a Python file with ``get_config()``."""
    path = name_or_path
    if not path.endswith(".py"):
        path = os.path.join(CONFIG_DIR, f"{name_or_path}.py")
    if not os.path.exists(path):
        known = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))
        raise FileNotFoundError(f"no config {name_or_path!r} (looked for {path}); presets: {known}")
    spec = importlib.util.spec_from_file_location(f"maskrcnn_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
