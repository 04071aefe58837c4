"""Feature pyramid network (Lin et al. 2017) laid out as Matterport's: P2-P5 from C2-C5, P6 by subsampling."""

from __future__ import annotations

import keras
from keras import layers


class FPN(keras.layers.Layer):
    """Top-down pathway with lateral 1x1 convolutions, then a 3x3 convolution per level.

    Call with ``[C2, C3, C4, C5]`` (B, H/s, W/s, C_l) for strides 4..32; returns ``[P2, P3, P4, P5, P6]``
    with ``channels`` channels each and strides 4, 8, 16, 32, 64. H and W must be multiples of 64 so
    that every upsampled map lines up with its lateral. Layer names follow Matterport (``fpn_c5p5``,
    ``fpn_p2`` ...) so its weights can be mapped onto these layers.
    """

    def __init__(self, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.lateral = [layers.Conv2D(channels, 1, name=f"fpn_c{i}p{i}") for i in (2, 3, 4, 5)]
        self.output_convs = [
            layers.Conv2D(channels, 3, padding="same", name=f"fpn_p{i}") for i in (2, 3, 4, 5)
        ]
        self.upsample = layers.UpSampling2D(2, interpolation="nearest")
        # Matterport's P6: a 1x1 max-pool with stride 2, i.e. every other pixel of P5.
        self.p6 = layers.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")

    def call(self, features):
        laterals = [conv(c) for conv, c in zip(self.lateral, features, strict=True)]
        merged = [laterals[3]]
        for lateral in reversed(laterals[:3]):
            merged.insert(0, lateral + self.upsample(merged[0]))
        pyramid = [conv(m) for conv, m in zip(self.output_convs, merged, strict=True)]
        return pyramid + [self.p6(pyramid[3])]

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}
