"""Parts named in configs by the tests, as a researcher's own package would hold them.

``model.mask_head = "tests.model.parts:small_mask_head"`` and the like: each is called with the ModelConfig
and returns the part; ``model.model_class = "tests.model.parts:DiceMaskRCNN"`` names a MaskRCNN subclass.
"""

import keras

from maskrcnn import losses
from maskrcnn.model import BoxHead, MaskHead, MaskRCNN


class DiceMaskRCNN(MaskRCNN):
    """Mask R-CNN with a soft-Dice term beside the mask loss (README: "A loss term")."""

    def loss_parts(self, out):
        parts = super().loss_parts(out)
        n, rois = out["num_pos"], out["rois"]
        parts["mask_dice"] = losses.mask_dice_loss(
            out["mask_logits"], rois["masks"][:, :n], rois["classes"][:, :n], rois["positive"][:, :n]
        )
        return parts


def small_mask_head(config):
    """Our mask head at a width of its own."""
    return MaskHead(config.num_classes, width=16, name="mask_head")


def agnostic_box_head(config):
    """A box head with one set of box deltas for every class."""
    return AgnosticBoxHead(config.num_classes, name="box_head")


class AgnosticBoxHead(keras.layers.Layer):
    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.logits = keras.layers.Dense(num_classes + 1)
        self.deltas = keras.layers.Dense(4)

    def call(self, pooled, training=False):
        batch, rois = keras.ops.shape(pooled)[0], keras.ops.shape(pooled)[1]
        x = self.hidden(keras.ops.reshape(pooled, (batch, rois, -1)))
        return self.logits(x), keras.ops.reshape(self.deltas(x), (batch, rois, 1, 4))


STRONG_L2 = 100.0


def l2_box_head(config):
    """Our box head with a strong L2 kernel regulariser on its two hidden layers."""
    head = BoxHead(config.num_classes, config.pool_size, config.box_head_width, name="box_head")
    for layer in (head.conv1, head.conv2):
        layer.kernel_regularizer = keras.regularizers.L2(STRONG_L2)
    return head
