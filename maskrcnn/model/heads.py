"""The three heads of Mask R-CNN. They hold layers only; targets, losses and post-processing are pure
functions elsewhere (maskrcnn.targets, maskrcnn.losses, maskrcnn.postprocess).

Structure and layer names follow Matterport's ``rpn_graph``, ``fpn_classifier_graph`` and
``build_fpn_mask_graph`` so that its COCO weights can be mapped onto them.
"""

from __future__ import annotations

import keras
from keras import layers, ops


class RPNHead(keras.layers.Layer):
    """Region proposal head shared across pyramid levels.

    Call with a list of maps (B, H_l, W_l, C). Returns ``(logits, deltas)``: logits (B, A, 2) float
    (background, object) and deltas (B, A, 4) float (dy, dx, log dh, log dw, divided by the RPN box std
    devs), A = sum_l H_l * W_l * anchors_per_location, ordered level, row, column, anchor: the order of
    :func:`maskrcnn.ops.generate_anchors`.
    """

    def __init__(self, anchors_per_location: int = 3, width: int = 512, **kwargs):
        super().__init__(**kwargs)
        self.anchors_per_location = anchors_per_location
        self.width = width
        self.shared = layers.Conv2D(width, 3, padding="same", activation="relu", name="rpn_conv_shared")
        self.class_raw = layers.Conv2D(2 * anchors_per_location, 1, name="rpn_class_raw")
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

    def call(self, pooled, training=False):
        batch, rois = ops.shape(pooled)[0], ops.shape(pooled)[1]
        x = ops.reshape(pooled, (-1, *ops.shape(pooled)[2:]))
        bn_training = training and self.train_bn
        x = ops.relu(self.bn1(self.conv1(x), training=bn_training))
        x = ops.relu(self.bn2(self.conv2(x), training=bn_training))
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

    def call(self, pooled, training=False):
        batch, rois = ops.shape(pooled)[0], ops.shape(pooled)[1]
        x = ops.reshape(pooled, (-1, *ops.shape(pooled)[2:]))
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = ops.relu(bn(conv(x), training=training and self.train_bn))
        x = self.output_conv(self.deconv(x))
        return ops.reshape(x, (batch, rois, *ops.shape(x)[1:]))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "width": self.width,
            "train_bn": self.train_bn,
        }
