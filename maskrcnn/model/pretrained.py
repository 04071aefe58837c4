"""Initial weights from elsewhere: keras.applications' ImageNet ResNets and Matterport's Mask R-CNN files.

    initialize(model, "imagenet")                  # keras.applications ResNet50/101, downloaded by Keras
    initialize(model, "resnet50_..._notop.h5")     # the same, from a local file
    initialize(model, "mask_rcnn_coco.h5")         # Matterport's COCO Mask R-CNN (Keras 2 HDF5)

Matterport's files are read with h5py in the layout Keras 2's ``save_weights`` writes: a root attribute
``layer_names``, one group per layer with a ``weight_names`` attribute, and each weight stored under its
name (``conv1/kernel:0``); a nested model (Matterport's ``rpn_model``, shared by every pyramid level) is
one group holding its layers' weights. Our FPN, RPN and head layers carry Matterport's names; the backbone
carries keras.applications' and :func:`matterport_name` translates them. Kernels need no transposition:
Keras 2 and 3 store convolutions as (kh, kw, in, out), transposed convolutions as (kh, kw, out, in) and
dense layers as (in, out). One tensor changes layout: Matterport's mask output has a channel for the
background class, which ours lacks (its channel ``c - 1`` is class ``c``).
"""

from __future__ import annotations

import dataclasses
import os
import re

import h5py
import keras
import numpy as np

from maskrcnn.model.backbone import BACKBONES, load_keras_applications_weights

# Layers whose shape depends on the number of classes; skipped when the file's count differs (the paper
# fine-tuned COCO's 80 classes to one).
CLASS_SPECIFIC = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask")
APPLICATIONS = {"resnet50": "ResNet50", "resnet101": "ResNet101"}
COCO_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"

_BRANCH = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}  # keras.applications' block branch -> Matterport's
_BACKBONE_FILE_LAYER = re.compile(r"conv1|bn_conv1|(res|bn)\d[a-z]+_branch\w+")


def matterport_name(layer: str) -> str:
    """Matterport's name of one of our layers (``conv2_block1_0_conv`` -> ``res2a_branch1``)."""
    if layer == "conv1_conv":
        return "conv1"
    if layer == "conv1_bn":
        return "bn_conv1"
    match = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer)
    if match:
        stage, block, branch, kind = match.groups()
        prefix = "res" if kind == "conv" else "bn"
        return f"{prefix}{stage}{chr(ord('a') + int(block) - 1)}_branch{_BRANCH[branch]}"
    return layer  # FPN, RPN and heads use Matterport's names already


@dataclasses.dataclass
class LoadReport:
    """What an initialisation did, layer by layer (file names)."""

    source: str
    loaded: dict[str, int] = dataclasses.field(default_factory=dict)  # part -> layers loaded
    skipped: list[str] = dataclasses.field(default_factory=list)  # class-specific layers, with the reason
    uninitialised: list[str] = dataclasses.field(default_factory=list)  # our parts absent from the file
    unused: list[str] = dataclasses.field(default_factory=list)  # the file's weighted layers nothing took

    def summary(self) -> str:
        lines = [
            f"initial weights from {self.source}: loaded "
            + ", ".join(f"{part} {n} layers" for part, n in self.loaded.items())
        ]
        if self.skipped:
            lines.append("skipped: " + "; ".join(self.skipped))
        if self.uninitialised:
            lines.append("not in the file, left at random initialisation: " + ", ".join(self.uninitialised))
        if self.unused:
            lines.append(f"in the file but unused ({len(self.unused)}): " + ", ".join(self.unused[:12]))
        return "\n".join(lines)


def initialize(model, init: str) -> LoadReport:
    """Loads initial weights into a :class:`~maskrcnn.model.MaskRCNN` (see the module docstring).

    Raises:
      FileNotFoundError for a path that does not exist; ValueError for a file that does not fit the model
      (nothing is loaded then); RuntimeError when the ImageNet weights cannot be downloaded.
    """
    if init == "imagenet":
        return load_imagenet_weights(model)
    init = os.path.expanduser(init)
    if not os.path.isfile(init):
        raise FileNotFoundError(
            f"initial weights {init!r} (train.init): no such file. Expected 'imagenet' or the path of an "
            f".h5 file: Matterport's mask_rcnn_coco.h5 ({COCO_URL}) or keras.applications' ResNet ImageNet "
            "weights. To train from random weights instead: --init none (make train INIT=none)"
        )
    with h5py.File(init, "r") as f:
        names = set(_string_attribute(_weights_root(f, init), "layer_names") or [])
    if "conv1_conv" in names:
        return load_imagenet_weights(model, init)
    return load_matterport_weights(model, init)


# ---------------------------------------------------------------------------------------------------
def load_imagenet_weights(model, weights: str = "imagenet") -> LoadReport:
    """Loads keras.applications' ImageNet ResNet50/101 (``include_top=False``) into the backbone.

    ``weights`` is ``"imagenet"`` (Keras downloads the file once into ``~/.keras/models``) or the path of
    that file (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` ...), for machines offline.
    """
    cfg = model.config
    problems = []
    if cfg.backbone not in APPLICATIONS:
        problems.append(f"model.backbone={cfg.backbone!r} has none (use resnet50 or resnet101)")
    elif cfg.backbone_blocks is not None and tuple(cfg.backbone_blocks) != BACKBONES[cfg.backbone]:
        problems.append(f"model.backbone_blocks={cfg.backbone_blocks} is not {cfg.backbone}'s")
    if cfg.backbone_width != 64:
        problems.append(f"model.backbone_width={cfg.backbone_width} must be 64")
    if cfg.backbone_style != "keras":
        problems.append(f"model.backbone_style={cfg.backbone_style!r} must be 'keras'")
    if not cfg.bgr:
        problems.append("model.bgr must be True (these caffe-style weights expect BGR input)")
    if problems:
        raise ValueError("keras.applications' ImageNet weights do not fit the config: " + "; ".join(problems))
    application = getattr(keras.applications, APPLICATIONS[cfg.backbone])
    try:
        source = application(weights=weights, include_top=False, input_shape=(None, None, 3))
    except Exception as error:  # Keras raises a bare Exception for a failed download
        if weights != "imagenet":
            raise ValueError(
                f"{weights} is not keras.applications' {APPLICATIONS[cfg.backbone]} weights file "
                f"(include_top=False): {error}"
            ) from error
        raise RuntimeError(
            f"could not download the ImageNet weights of {APPLICATIONS[cfg.backbone]} ({error}). Offline, "
            f"fetch {cfg.backbone}_weights_tf_dim_ordering_tf_kernels_notop.h5 from {IMAGENET_URL} on a "
            "machine with internet and pass its path instead of 'imagenet' (--init PATH)"
        ) from error
    report = LoadReport(f"keras.applications {APPLICATIONS[cfg.backbone]} ({weights})")
    report.loaded["backbone"] = load_keras_applications_weights(model.backbone, source)
    report.uninitialised = ["fpn", "rpn", "box head", "mask head"]
    return report


# ---------------------------------------------------------------------------------------------------
def read_keras2_weights(path: str) -> dict[str, dict[str, np.ndarray]]:
    """The weights of a Keras 2 HDF5 file: ``{layer name: {weight name: array}}``.

    Weight names are the last part of Keras 2's (``kernel``, ``bias``, ``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``). The layers of a nested model (a group whose weights belong to
    several layers, as Matterport's ``rpn_model``) appear under their own names; a wrapper such as
    ``TimeDistributed`` (a group whose weights all belong to one layer) under the wrapper's name.
    """
    layers: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = _weights_root(f, path)
        for name in _string_attribute(root, "layer_names") or []:
            group = root[name]
            weight_names = _string_attribute(group, "weight_names") or []
            owners = {w.split("/")[-2] if "/" in w else name for w in weight_names}
            for weight_name in weight_names:
                owner = name if len(owners) == 1 else weight_name.split("/")[-2]
                short = weight_name.split("/")[-1].split(":")[0]
                layers.setdefault(owner, {})[short] = np.asarray(group[weight_name])
    return layers


def load_matterport_weights(model, path: str) -> LoadReport:
    """Loads Matterport's Mask R-CNN weights (``mask_rcnn_coco.h5``) into ``model``.

    Every part of the model (backbone, FPN, RPN, box head, mask head) the file holds must be there whole
    and with our shapes; a part the file lacks entirely (an ImageNet-only backbone file has no heads) stays
    at its initialisation and is reported. The class-specific layers are skipped when the file's class
    count differs from the model's. Nothing is loaded unless everything fits.
    """
    cfg = model.config
    file = read_keras2_weights(path)
    if cfg.backbone_style != "matterport" and ("bn_conv1" in file or "res2a_branch2a" in file):
        raise ValueError(
            f"{path} holds Matterport's ResNet, which computes differently from keras.applications' "
            "(batch-norm epsilon, stem max-pool padding): set model.backbone_style='matterport' "
            "(and keep model.bgr=False: Matterport's weights expect RGB minus its MEAN_PIXEL)"
        )
    file_classes = file.get("mrcnn_class_logits", {}).get("bias")
    skip_classes = file_classes is not None and file_classes.shape[0] != cfg.num_classes + 1
    report = LoadReport(path)
    if skip_classes:
        report.skipped.append(
            f"{', '.join(CLASS_SPECIFIC)} (class-specific: the file has {file_classes.shape[0] - 1} classes "
            f"+ background, the model {cfg.num_classes} + background)"
        )
    parts = {
        "backbone": model.backbone,
        "fpn": model.fpn,
        "rpn": model.rpn_head,
        "box head": model.box_head,
        "mask head": model.mask_head,
    }
    assignments, problems, used = [], [], set()
    for part_name, part in parts.items():
        layers: dict[str, list] = {}
        for variable in part.weights:
            layers.setdefault(variable.path.split("/")[-2], []).append(variable)
        present = [name for name in layers if matterport_name(name) in file]
        if not present:
            report.uninitialised.append(part_name)
            continue
        loaded = 0
        for name, variables in layers.items():
            theirs = matterport_name(name)
            if name in CLASS_SPECIFIC and skip_classes:
                used.add(theirs)
                continue
            if theirs not in file:
                problems.append(f"layer {theirs} ({part_name}) is missing")
                continue
            used.add(theirs)
            for variable in variables:
                weight = variable.path.split("/")[-1]
                value = file[theirs].get(weight)
                if value is None:
                    problems.append(f"{theirs} has no {weight!r} (it holds {sorted(file[theirs])})")
                    continue
                if name == "mrcnn_mask":
                    value = value[..., 1:]  # drop Matterport's background channel
                if tuple(value.shape) != tuple(variable.shape):
                    problems.append(
                        f"{theirs}/{weight}: shape {tuple(value.shape)} in the file, "
                        f"{tuple(variable.shape)} in the model"
                    )
                    continue
                assignments.append((variable, value))
            loaded += 1
        report.loaded[part_name] = loaded
    extra_backbone = sorted(n for n in file if n not in used and _BACKBONE_FILE_LAYER.fullmatch(n))
    if extra_backbone and "backbone" not in report.uninitialised:
        problems.append(
            f"the file's ResNet has layers ours ({cfg.backbone}) lacks: {', '.join(extra_backbone[:6])}"
            + (" ..." if len(extra_backbone) > 6 else "")
        )
    if not report.loaded:
        raise ValueError(
            f"{path}: none of its {len(file)} weighted layers is a layer of this model; expected "
            f"Matterport's names (conv1, res2a_branch2a, fpn_c5p5, rpn_conv_shared, mrcnn_class_conv1 ...)"
        )
    if problems:
        raise ValueError(
            f"{path} does not fit the model of this config (backbone {cfg.backbone}, width "
            f"{cfg.backbone_width}, FPN {cfg.fpn_channels}, box/mask heads {cfg.box_head_width}/"
            f"{cfg.mask_head_width}, {cfg.num_classes} classes); nothing was loaded. "
            f"{len(problems)} problem(s): " + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else "")
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    report.unused = sorted(n for n in file if n not in used)
    return report


def _weights_root(f: h5py.File, path: str):
    # model.save_weights writes the layers at the root; model.save puts them under "model_weights".
    if "layer_names" not in f.attrs and "model_weights" in f:
        return f["model_weights"]
    if "layer_names" not in f.attrs:
        raise ValueError(
            f"{path} is not a Keras 2 HDF5 weights file (no 'layer_names' attribute); expected "
            f"Matterport's mask_rcnn_coco.h5 or keras.applications' ResNet weights"
        )
    return f


def _string_attribute(group, name: str) -> list[str] | None:
    """A list-of-strings attribute as Keras 2 saves it: whole, or split into ``name0``, ``name1`` ...
    when it would exceed HDF5's 64 KB attribute limit."""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]
