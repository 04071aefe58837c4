"""ResNet v1 backbones (bottleneck blocks, batch norm) that return C2-C5.

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

import keras
from keras import layers

# Blocks per stage conv2..conv5 (He et al. 2016, Table 1). "tiny" is ours, for tests on a CPU.
BACKBONES: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "tiny": (1, 1, 1, 1),
}

# Batch-norm epsilon of each style: keras.applications' ResNet, and Keras' default in Matterport's.
BN_EPSILON = {"keras": 1.001e-5, "matterport": 1e-3}


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
      to ``[C2, C3, C4, C5]`` with strides 4, 8, 16, 32 and ``4 * width * (1, 2, 4, 8)`` channels.
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
    return keras.Model(inputs, outputs, name=name)


def stage_of_layer(layer_name: str) -> int:
    """The ResNet stage (1 for the stem, 2-5 for conv2..conv5) a backbone layer belongs to."""
    head = layer_name.split("_", 1)[0]
    if head in ("conv1", "pool1"):
        return 1
    if head.startswith("conv") and head[4:].isdigit():
        return int(head[4:])
    raise ValueError(f"{layer_name!r} is not a ResNet backbone layer name")


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
