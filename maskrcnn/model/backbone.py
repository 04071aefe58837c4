"""Backbones: the contract every backbone declares, and ResNet v1 (bottleneck blocks, batch norm).

**The contract.** A backbone is any Keras model that maps normalised float images (B, H, W, 3) to a list of
four feature maps, finest first (C2-C5 for a ResNet), and declares (:func:`declare`):

- ``feature_strides``: the stride of each map in input pixels, each twice the one before (the FPN's
  top-down pathway upsamples by 2), e.g. (4, 8, 16, 32). The ROI heads pool at these strides and the
  model checks that ``model.anchor_strides`` starts with them.
- ``trainable_groups``: optional, group number -> names of its layers, numbered from the input up
  (a ResNet: 1 the stem, 2-5 its stages). The training stage ``"N+"`` trains the groups numbered N and
  above and every layer outside the backbone; ``"heads"`` and ``"all"`` work for any backbone.

:func:`from_layers` makes a backbone from inner layers of any Keras model (e.g. a ``keras.applications``
network) and measures the strides itself. Nothing else in the project parses layer names.

A config names its backbone (:func:`build_backbone`): a ResNet of :data:`BACKBONES` (or any name with
``model.backbone_blocks``), or ``"module:function"``, a function of the ModelConfig that returns a declared
backbone, imported when the model is built, so that ``maskrcnn evaluate`` and ``predict`` rebuild a run's
own backbone from its ``config.json``.

**ResNet.**
Layer names and weight shapes are those of ``keras.applications.ResNet50/101`` (``conv1_conv``,
``conv2_block1_1_conv``, ``conv4_block23_3_bn`` ...), so ImageNet weights load by layer name
(:func:`load_keras_applications_weights`). A variant is a table entry: blocks per stage and the stem width.

Two styles differ in two details that change what the same weights compute (``style``):

- ``"keras"``: keras.applications' ResNet: batch-norm epsilon 1.001e-5, the stem's 3x3 max-pool after an
  explicit one-pixel zero padding (a window on each side).
- ``"matterport"``: Matterport's ``resnet_graph``, which its COCO weights were trained with: Keras' default
  batch-norm epsilon 1e-3 and a max-pool with ``padding="same"`` (on an even map: no padding before, one
  row and column after, so its windows sit one pixel later than keras.applications').

Everything else (bottlenecks with the stride on the first 1x1 convolution, biases on every convolution,
23 blocks in ResNet101's conv4) is the same in both; only the layer names differ, and
:mod:`maskrcnn.model.pretrained` maps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
from keras import layers

from maskrcnn.model.named import import_named

# Blocks per stage conv2..conv5 (He et al. 2016, Table 1). "tiny" is ours, for tests on a CPU.
BACKBONES: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "tiny": (1, 1, 1, 1),
}

# Batch-norm epsilon of each style: keras.applications' ResNet, and Keras' default in Matterport's.
BN_EPSILON = {"keras": 1.001e-5, "matterport": 1e-3}


def declare(
    model: keras.Model,
    *,
    strides: Sequence[int],
    groups: Mapping[int, Sequence[str]] | None = None,
) -> keras.Model:
    """Attaches the backbone contract (see the module docstring) to ``model`` and returns it.

    Args:
      strides: one per output feature map, finest first, each twice the previous (4, 8, 16, 32).
      groups: trainable group number -> names of layers of ``model``, numbered from the input up; None for
        a backbone that trains only as a whole (training stages ``heads`` and ``all``).
    """
    strides = tuple(int(s) for s in strides)
    outputs = len(model.outputs) if getattr(model, "outputs", None) is not None else len(strides)
    if len(strides) != 4 or outputs != 4:
        raise ValueError(
            f"backbone {model.name} must return four feature maps, finest first, with one stride each; got "
            f"{outputs} maps and strides {strides}"
        )
    if strides[0] < 1 or any(b != 2 * a for a, b in zip(strides, strides[1:], strict=False)):
        raise ValueError(
            f"backbone {model.name}: each feature map's stride must be twice the previous one's (the FPN "
            f"upsamples by 2), got strides {strides}"
        )
    named = {layer.name for layer in model.layers}
    groups = {int(g): tuple(names) for g, names in (groups or {}).items()}
    unknown = sorted(n for names in groups.values() for n in names if n not in named)
    if unknown:
        raise ValueError(f"backbone {model.name} has no layers {unknown[:5]} named in its trainable groups")
    model.feature_strides = strides
    model.trainable_groups = groups
    return model


def feature_strides(backbone: keras.Model) -> tuple[int, ...]:
    """The strides ``backbone`` declares (see :func:`declare`)."""
    strides = getattr(backbone, "feature_strides", None)
    if strides is None:
        raise ValueError(
            f"backbone {backbone.name} does not declare its feature strides: build it with "
            "maskrcnn.model.backbone.from_layers(model, layer_names), or call "
            "maskrcnn.model.backbone.declare(model, strides=(4, 8, 16, 32))"
        )
    return tuple(strides)


def trainable_groups(backbone: keras.Model) -> dict[int, tuple[str, ...]]:
    """The trainable groups ``backbone`` declares (empty: it trains only as a whole)."""
    return dict(getattr(backbone, "trainable_groups", None) or {})


def from_layers(
    base: keras.Model,
    layer_names: Sequence[str],
    *,
    groups: Mapping[int, Sequence[str]] | None = None,
    name: str | None = None,
    probe_size: int = 256,
) -> keras.Model:
    """A backbone returning the outputs of ``layer_names`` (finest first) of ``base``, any Keras model.

    The strides are measured by tracing ``base`` on a ``probe_size`` square input (or ``base``'s own
    input size when it is fixed). Example, a MobileNetV2 (random weights) as a Mask R-CNN backbone::

        base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3))
        backbone = from_layers(base, ["block_2_add", "block_5_add", "block_12_add", "out_relu"])
    """
    outputs = [base.get_layer(n).output for n in layer_names]
    model = keras.Model(base.inputs, outputs, name=name or f"{base.name}_features")
    height, width = base.inputs[0].shape[1:3] if base.inputs[0].shape[1] else (probe_size, probe_size)
    specs = model.compute_output_spec(keras.KerasTensor((1, height, width, base.inputs[0].shape[-1])))
    strides = []
    for layer, spec in zip(layer_names, specs, strict=True):
        if height % spec.shape[1]:
            raise ValueError(f"layer {layer!r} of {base.name}: {height} px input gives {spec.shape[1]} rows")
        strides.append(height // spec.shape[1])
    return declare(model, strides=strides, groups=groups)


def build_backbone(config) -> keras.Model:
    """The backbone a ModelConfig names: ``"module:function"`` (called with ``config``) or a ResNet."""
    if ":" in config.backbone:
        backbone = import_named(config.backbone, "model.backbone")(config)
        feature_strides(backbone)  # a factory must return a declared backbone
        return backbone
    return build_resnet(
        config.backbone,
        width=config.backbone_width,
        style=config.backbone_style,
        blocks=config.backbone_blocks,
    )


def _bottleneck(x, filters, *, stride, shortcut_conv, name, bn_epsilon):
    """One ResNet v1 bottleneck block, stride on the first 1x1 convolution (as keras.applications)."""
    if shortcut_conv:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = layers.BatchNormalization(epsilon=bn_epsilon, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def build_resnet(
    name: str = "resnet101",
    *,
    width: int = 64,
    style: str = "keras",
    blocks: tuple[int, int, int, int] | None = None,
    input_channels: int = 3,
    dtype=None,
) -> keras.Model:
    """Builds a ResNet v1 feature extractor.

    Args:
      name: a key of :data:`BACKBONES`, or any name when ``blocks`` is given.
      blocks: bottleneck blocks in stages 2-5 (ResNet152: (3, 8, 36, 3)); None: ``BACKBONES[name]``.
      width: channels of the stem and of the first stage's bottleneck (64 for the real networks);
        stage ``i`` (0-based) has ``width * 2**i`` bottleneck channels and ``4 * width * 2**i`` outputs.
      style: ``"keras"`` (keras.applications' ResNet) or ``"matterport"`` (Matterport's; see above).

    Returns:
      A functional ``keras.Model`` named ``name`` mapping float images (B, H, W, 3), already normalised,
      to ``[C2, C3, C4, C5]`` with strides 4, 8, 16, 32 and ``4 * width * (1, 2, 4, 8)`` channels; its
      trainable groups (:func:`declare`) are 1 (the stem, ``conv1_*``) and 2-5 (``conv2_*`` .. ``conv5_*``).
    """
    if blocks is None and name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}, or give its blocks per stage "
            "(model.backbone_blocks, e.g. (3, 8, 36, 3) for a ResNet152)"
        )
    if style not in BN_EPSILON:
        raise ValueError(f"unknown backbone style {style!r}; expected one of {sorted(BN_EPSILON)}")
    blocks = tuple(blocks) if blocks is not None else BACKBONES[name]
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"blocks per stage must be four positive counts (stages 2-5), got {blocks}")
    bn_epsilon = BN_EPSILON[style]
    inputs = keras.Input((None, None, input_channels), name="image", dtype=dtype)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(width, 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=bn_epsilon, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    if style == "keras":
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    else:
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    outputs = []
    for stage, num_blocks in enumerate(blocks):
        filters = width * 2**stage
        for i in range(num_blocks):
            x = _bottleneck(
                x,
                filters,
                stride=(1 if stage == 0 else 2) if i == 0 else 1,
                shortcut_conv=i == 0,
                name=f"conv{stage + 2}_block{i + 1}",
                bn_epsilon=bn_epsilon,
            )
        outputs.append(x)
    model = keras.Model(inputs, outputs, name=name)
    groups: dict[int, list[str]] = {}
    for layer in model.layers[1:]:  # the names given above: conv1_* / pool1_* the stem, convN_* stage N
        head = layer.name.split("_", 1)[0]
        groups.setdefault(1 if head in ("conv1", "pool1") else int(head[4:]), []).append(layer.name)
    return declare(model, strides=(4, 8, 16, 32), groups=groups)


def load_keras_applications_weights(backbone: keras.Model, source: keras.Model) -> int:
    """Copies the weights of a ``keras.applications`` ResNet (``include_top=False``) into ``backbone``.

    Layers are matched by name; every weighted layer of ``backbone`` must exist in ``source`` with the
    same weight shapes. Returns the number of layers copied.
    """
    copied = 0
    for layer in backbone.layers:
        if not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError as err:
            raise ValueError(
                f"layer {layer.name!r} of {backbone.name} has no counterpart in {source.name}"
            ) from err
        src_weights = src.get_weights()
        for w, s in zip(layer.weights, src_weights, strict=True):
            if tuple(w.shape) != tuple(s.shape):
                raise ValueError(
                    f"{layer.name}/{w.name}: shape {tuple(s.shape)} in {source.name}, "
                    f"expected {tuple(w.shape)}"
                )
        layer.set_weights(src_weights)
        copied += 1
    return copied
