"""A plain convolutional backbone, without ResNet layer names, for the backbone-contract tests.

``tests.model.plain_backbone:build`` is what a config's ``model.backbone`` names to use it.
"""

import keras

from maskrcnn.model.backbone import declare


def build(config=None, *, first_stride: int = 4) -> keras.Model:
    """Four conv-norm-relu blocks, strides ``first_stride`` x (1, 2, 4, 8); groups 1 and 2 of two blocks."""
    inputs = keras.Input((None, None, 3), name="image")
    x, outputs, groups = inputs, [], {1: [], 2: []}
    for i, (stride, channels) in enumerate(((first_stride, 16), (2, 16), (2, 32), (2, 32))):
        x = keras.layers.Conv2D(channels, 3, strides=stride, padding="same", name=f"down{i}")(x)
        x = keras.layers.BatchNormalization(name=f"down{i}_norm")(x)
        x = keras.layers.Activation("relu", name=f"down{i}_relu")(x)
        outputs.append(x)
        groups[1 + i // 2] += [f"down{i}", f"down{i}_norm"]
    strides = tuple(first_stride * 2**i for i in range(4))
    return declare(keras.Model(inputs, outputs, name="plain"), strides=strides, groups=groups)
