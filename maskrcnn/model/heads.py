"""The three heads of Mask R-CNN. They hold layers only; targets, losses and post-processing are pure
functions elsewhere (maskrcnn.targets, maskrcnn.losses, maskrcnn.postprocess).

Structure and layer names follow Matterport's ``rpn_graph``, ``fpn_classifier_graph`` and
``build_fpn_mask_graph`` so that its COCO weights can be mapped onto them.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


def window_dense(conv: layers.Conv2D, x):
    """``conv(x)`` for a "valid" convolution whose kernel spans the whole window of ``x`` (N, P, P, C),
    computed as one matrix product: (N, 1, 1, filters), the same sums over the same weights.

    The box head's 7x7 "convolution" over a 7x7 pooled ROI is a fully connected layer; written as a
    convolution, XLA's CPU backend ran it 9x slower than this product forward and 19x slower forward and
    backward (``experiments/results/forms.md``). The layer keeps its Conv2D kernel, so weights load and
    save unchanged.
    """
    if tuple(x.shape[1:3]) != tuple(conv.kernel_size):
        raise ValueError(
            f"{conv.name}: input window {tuple(x.shape[1:3])} is not the kernel's {conv.kernel_size}"
        )
    kernel = ops.cast(ops.reshape(conv.kernel, (-1, conv.filters)), x.dtype)
    y = ops.matmul(ops.reshape(x, (-1, kernel.shape[0])), kernel)
    if conv.use_bias:
        y = y + ops.cast(conv.bias, x.dtype)
    return conv.activation(ops.reshape(y, (-1, 1, 1, conv.filters)))


def upsample_2x(deconv: layers.Conv2DTranspose, x):
    """``deconv(x)`` for a 2x2 transposed convolution of stride 2, computed as one matrix product and a
    depth-to-space reshape: (N, H, W, C) -> (N, 2H, 2W, filters), exactly the layer's numbers.

    With kernel = stride the output windows do not overlap: output pixel (2i + a, 2j + b) is input pixel
    (i, j) times kernel tap (a, b). XLA's CPU forward and backward of the transposed convolution ran
    38x slower than the product's (``experiments/results/forms.md``); the layer keeps its kernel
    (2, 2, filters, C).
    """
    if tuple(deconv.kernel_size) != (2, 2) or tuple(deconv.strides) != (2, 2) or deconv.padding != "valid":
        raise ValueError(f"{deconv.name}: upsample_2x needs kernel 2, stride 2, padding 'valid'")
    n, h, w = ops.shape(x)[0], x.shape[1], x.shape[2]
    kernel = ops.cast(deconv.kernel, x.dtype)
    y = ops.einsum("nhwc,aboc->nhawbo", x, kernel)
    y = ops.reshape(y, (n, 2 * h, 2 * w, deconv.filters))
    if deconv.use_bias:
        y = y + ops.cast(deconv.bias, x.dtype)
    return deconv.activation(y)


@keras.saving.register_keras_serializable(package="maskrcnn")
class ObjectPrior(keras.initializers.Initializer):
    """Bias of interleaved (background, object) logit pairs: 0 and log(p / (1 - p)), so that a softmax
    over each pair starts near objectness ``probability`` (RetinaNet's prior, Lin et al. 2017, section
    4.1). At 0.5 every bias is 0, Keras's default."""

    def __init__(self, probability: float = 0.5):
        self.probability = probability

    def __call__(self, shape, dtype=None):
        if len(shape) != 1 or shape[0] % 2:
            raise ValueError(f"ObjectPrior initialises (background, object) pairs, not shape {shape}")
        pair = [0.0, math.log(self.probability / (1.0 - self.probability))]
        return ops.cast(ops.tile(ops.convert_to_tensor(pair), (shape[0] // 2,)), dtype)

    def get_config(self):
        return {"probability": self.probability}


class RPNHead(keras.layers.Layer):
    """Region proposal head shared across pyramid levels.

    Call with a list of maps (B, H_l, W_l, C). Returns ``(logits, deltas)``: logits (B, A, 2) float
    (background, object) and deltas (B, A, 4) float (dy, dx, log dh, log dw, divided by the RPN box std
    devs), A = sum_l H_l * W_l * anchors_per_location, ordered level, row, column, anchor: the order of
    :func:`maskrcnn.ops.generate_anchors`. ``object_prior``: the objectness its logits' biases start at
    (:class:`ObjectPrior`).
    """

    def __init__(self, anchors_per_location: int = 3, width: int = 512, object_prior: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.anchors_per_location = anchors_per_location
        self.width = width
        self.object_prior = object_prior
        self.shared = layers.Conv2D(width, 3, padding="same", activation="relu", name="rpn_conv_shared")
        self.class_raw = layers.Conv2D(
            2 * anchors_per_location, 1, bias_initializer=ObjectPrior(object_prior), name="rpn_class_raw"
        )
        self.bbox_pred = layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred")

    def call(self, pyramid):
        logits, deltas = [], []
        for feature in pyramid:
            shared = self.shared(feature)
            batch = ops.shape(feature)[0]
            logits.append(ops.reshape(self.class_raw(shared), (batch, -1, 2)))
            deltas.append(ops.reshape(self.bbox_pred(shared), (batch, -1, 4)))
        return ops.concatenate(logits, axis=1), ops.concatenate(deltas, axis=1)

    def get_config(self):
        return {
            **super().get_config(),
            "anchors_per_location": self.anchors_per_location,
            "width": self.width,
            "object_prior": self.object_prior,
        }


class BoxHead(keras.layers.Layer):
    """Classifier and class-specific box regressor over 7x7 pooled ROIs.

    Call with pooled features (B, R, P, P, C). Returns ``(class_logits, box_deltas)``: (B, R, K) and
    (B, R, K, 4) with K = num_classes + 1 (index 0 is background). The first convolution spans the whole
    PxP window, acting as a ``width``-wide fully connected layer, as in Matterport.
    """

    def __init__(
        self, num_classes: int, pool_size: int = 7, width: int = 1024, train_bn: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.pool_size = pool_size
        self.width = width
        self.train_bn = train_bn
        self.conv1 = layers.Conv2D(width, pool_size, padding="valid", name="mrcnn_class_conv1")
        self.bn1 = layers.BatchNormalization(name="mrcnn_class_bn1")
        self.conv2 = layers.Conv2D(width, 1, name="mrcnn_class_conv2")
        self.bn2 = layers.BatchNormalization(name="mrcnn_class_bn2")
        self.class_logits = layers.Dense(num_classes + 1, name="mrcnn_class_logits")
        self.bbox_fc = layers.Dense(4 * (num_classes + 1), name="mrcnn_bbox_fc")

    def build(self, pooled_shape):
        # conv1 and conv2 run through window_dense, not their own call, so they are built here.
        self.conv1.build((None, self.pool_size, self.pool_size, pooled_shape[-1]))
        self.conv2.build((None, 1, 1, self.width))
        self.built = True

    def call(self, pooled, training=False):
        batch, rois = ops.shape(pooled)[0], ops.shape(pooled)[1]
        x = ops.reshape(pooled, (-1, *ops.shape(pooled)[2:]))
        bn_training = training and self.train_bn
        x = ops.relu(self.bn1(window_dense(self.conv1, x), training=bn_training))
        x = ops.relu(self.bn2(window_dense(self.conv2, x), training=bn_training))
        x = ops.reshape(x, (batch, rois, self.width))
        logits = self.class_logits(x)
        deltas = ops.reshape(self.bbox_fc(x), (batch, rois, self.num_classes + 1, 4))
        return logits, deltas

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "pool_size": self.pool_size,
            "width": self.width,
            "train_bn": self.train_bn,
        }


class MaskHead(keras.layers.Layer):
    """Per-class mask predictor over 14x14 pooled ROIs.

    Call with pooled features (B, R, P, P, C). Returns mask logits (B, R, 2P, 2P, num_classes), one
    channel per foreground class (apply a sigmoid for probabilities): four 3x3 convolutions with batch
    norm, a stride-2 transposed convolution, and a 1x1 convolution, as Matterport's ``build_fpn_mask_graph``.
    """

    def __init__(self, num_classes: int, width: int = 256, train_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.width = width
        self.train_bn = train_bn
        self.convs = [
            layers.Conv2D(width, 3, padding="same", name=f"mrcnn_mask_conv{i}") for i in range(1, 5)
        ]
        self.bns = [layers.BatchNormalization(name=f"mrcnn_mask_bn{i}") for i in range(1, 5)]
        self.deconv = layers.Conv2DTranspose(width, 2, strides=2, activation="relu", name="mrcnn_mask_deconv")
        self.output_conv = layers.Conv2D(num_classes, 1, name="mrcnn_mask")

    def build(self, pooled_shape):
        # The deconvolution runs through upsample_2x, not its own call, so it is built here.
        self.deconv.build((None, pooled_shape[-3], pooled_shape[-2], self.width))
        self.built = True

    def call(self, pooled, training=False):
        batch, rois = ops.shape(pooled)[0], ops.shape(pooled)[1]
        x = ops.reshape(pooled, (-1, *ops.shape(pooled)[2:]))
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = ops.relu(bn(conv(x), training=training and self.train_bn))
        x = self.output_conv(upsample_2x(self.deconv, x))
        return ops.reshape(x, (batch, rois, *ops.shape(x)[1:]))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "width": self.width,
            "train_bn": self.train_bn,
        }
