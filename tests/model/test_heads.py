"""The heads' matrix-product forms give the numbers of the Keras layers whose weights they use; the RPN's
objectness starts at its prior."""

import dataclasses

import keras
import numpy as np
import pytest
from keras import layers

from maskrcnn.config import load_config
from maskrcnn.model import MaskRCNN
from maskrcnn.model.heads import BoxHead, MaskHead, ObjectPrior, RPNHead, upsample_2x, window_dense


def test_window_dense_is_the_valid_convolution():
    rng = np.random.default_rng(0)
    conv = layers.Conv2D(6, 3, padding="valid", activation="relu")
    x = rng.normal(size=(5, 3, 3, 4)).astype("float32")
    conv.build(x.shape)
    conv.bias.assign(rng.normal(size=6).astype("float32"))
    expected = np.asarray(conv(x))  # XLA's convolution
    got = np.asarray(window_dense(conv, x))
    assert got.shape == (5, 1, 1, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_window_dense_refuses_a_window_that_is_not_the_kernel():
    conv = layers.Conv2D(6, 3, padding="valid")
    conv.build((None, 3, 3, 4))
    with pytest.raises(ValueError, match="not the kernel"):
        window_dense(conv, np.zeros((1, 5, 5, 4), "float32"))


def test_upsample_2x_is_the_transposed_convolution():
    rng = np.random.default_rng(1)
    deconv = layers.Conv2DTranspose(3, 2, strides=2, activation="relu")
    x = rng.normal(size=(2, 4, 5, 7)).astype("float32")
    deconv.build(x.shape)
    deconv.bias.assign(rng.normal(size=3).astype("float32"))
    expected = np.asarray(deconv(x))
    got = np.asarray(upsample_2x(deconv, x))
    assert got.shape == (2, 8, 10, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_upsample_2x_by_hand():
    # One input pixel, one channel: the 2x2 output block is the kernel times the pixel.
    deconv = layers.Conv2DTranspose(1, 2, strides=2, use_bias=False)
    deconv.build((None, 1, 1, 1))
    deconv.kernel.assign(np.array([1.0, 2.0, 3.0, 4.0], "float32").reshape(2, 2, 1, 1))
    got = np.asarray(upsample_2x(deconv, np.full((1, 1, 1, 1), 2.0, "float32")))[0, :, :, 0]
    np.testing.assert_array_equal(got, [[2.0, 4.0], [6.0, 8.0]])


def test_heads_match_their_layers_called_one_by_one():
    rng = np.random.default_rng(2)
    box = BoxHead(num_classes=2, pool_size=7, width=16, name="box_head")
    pooled = rng.normal(size=(2, 3, 7, 7, 8)).astype("float32")
    logits, deltas = box(pooled)
    x = pooled.reshape(-1, 7, 7, 8)
    x = np.maximum(np.asarray(box.bn1(box.conv1(x))), 0)
    x = np.maximum(np.asarray(box.bn2(box.conv2(x))), 0).reshape(2, 3, 16)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(box.class_logits(x)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(deltas), np.asarray(box.bbox_fc(x)).reshape(2, 3, 3, 4), rtol=1e-4, atol=1e-5
    )

    mask = MaskHead(num_classes=2, width=8, name="mask_head")
    pooled = rng.normal(size=(2, 3, 14, 14, 8)).astype("float32")
    got = np.asarray(mask(pooled))
    x = pooled.reshape(-1, 14, 14, 8)
    for conv, bn in zip(mask.convs, mask.bns, strict=True):
        x = np.maximum(np.asarray(bn(conv(x))), 0)
    x = np.asarray(mask.output_conv(mask.deconv(x)))
    np.testing.assert_allclose(got, x.reshape(2, 3, 28, 28, 2), rtol=1e-4, atol=1e-5)
    # The weights are the layers' own, under the names they had when the layers ran themselves.
    assert [v.path for v in box.conv1.weights] == [
        "box_head/mrcnn_class_conv1/kernel",
        "box_head/mrcnn_class_conv1/bias",
    ]
    assert mask.deconv.kernel.path == "mask_head/mrcnn_mask_deconv/kernel"


@pytest.mark.parametrize("prior", [0.01, 0.5])
def test_rpn_head_starts_every_anchor_at_its_object_prior(prior):
    # On all-zero features the ReLU'd shared map is 0, so each logit pair is its bias alone,
    # (0, log(p / (1 - p))), whose softmax is objectness p (RetinaNet's initialisation; 0.5: zero biases).
    head = RPNHead(anchors_per_location=3, width=8, object_prior=prior)
    pyramid = [np.zeros((2, 4, 4, 5), "float32"), np.zeros((2, 2, 2, 5), "float32")]
    logits, _ = head(pyramid)
    assert logits.shape == (2, (16 + 4) * 3, 2)
    np.testing.assert_allclose(np.asarray(logits)[..., 0], 0.0)
    np.testing.assert_allclose(np.asarray(keras.ops.softmax(logits))[..., 1], prior, rtol=1e-5)
    assert RPNHead.from_config(head.get_config()).object_prior == prior


def test_the_config_sets_the_rpn_object_prior():
    config = load_config("tiny")
    model = MaskRCNN(dataclasses.replace(config.model, rpn_object_prior=0.01))
    assert model.rpn_head.object_prior == 0.01
    # An odd number of biases is not (background, object) pairs.
    with pytest.raises(ValueError, match="not shape"):
        ObjectPrior(0.01)((3,))
