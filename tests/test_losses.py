"""The five Mask R-CNN losses against answers worked by hand."""

import math

import numpy as np
import pytest

from maskrcnn import losses


def test_rpn_class_loss_averages_over_sampled_anchors_only():
    # Anchor 0 positive with p(object) = 0.5, anchor 1 negative with p(background) = e / (e + 1),
    # anchor 2 ignored (its huge wrong logit must not count).
    logits = np.array([[[0.0, 0.0], [1.0, 0.0], [0.0, 100.0]]], np.float32)
    labels = np.array([[1, -1, 0]], np.int32)
    expected = (math.log(2) + math.log1p(math.exp(-1))) / 2
    assert float(losses.rpn_class_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_rpn_focal_loss_known_answer_and_cross_entropy_at_gamma_zero():
    # Anchor 0 positive at p = 1/2: 0.25 * (1/2)^2 * ln 2. Anchor 1 negative at p(background) = e / (e + 1):
    # 0.75 * (1 / (e + 1))^2 * ln(1 + 1/e). Anchor 2 ignored. Divided by the one positive, not by two anchors.
    logits = np.array([[[0.0, 0.0], [1.0, 0.0], [0.0, 100.0]]], np.float32)
    labels = np.array([[1, -1, 0]], np.int32)
    by_hand = 0.25 * 0.25 * math.log(2) + 0.75 * (1 / (math.e + 1)) ** 2 * math.log1p(math.exp(-1))
    assert float(losses.rpn_focal_loss(logits, labels)) == pytest.approx(by_hand, rel=1e-6)
    # gamma 0 and alpha 1/2: half the cross-entropy, summed and divided by the positives.
    two = np.array([[1, -1, -1]], np.int32)
    summed = 3 * float(losses.rpn_class_loss(logits, two))  # its mean over the three labelled anchors
    assert float(losses.rpn_focal_loss(logits, two, alpha=0.5, gamma=0.0)) == pytest.approx(
        summed / 2, rel=1e-6
    )
    # Without a positive the sum is divided by 1; without a labelled anchor it is 0.
    negatives = np.array([[0, -1, 0]], np.int32)
    expected = 0.75 * (1 / (math.e + 1)) ** 2 * math.log1p(math.exp(-1))
    assert float(losses.rpn_focal_loss(logits, negatives)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.rpn_focal_loss(logits, np.zeros((1, 3), np.int32))) == 0.0


def test_perfect_deltas_give_zero_box_losses_and_smooth_l1_known_answers():
    target = np.array([[[0.1, -0.2, 0.3, 0.05], [2.0, 2.0, 2.0, 2.0]]], np.float32)
    labels = np.array([[1, -1]], np.int32)  # the second anchor is negative: its deltas do not count
    off = target.copy()
    off[0, 1] = 0.0
    assert float(losses.rpn_box_loss(off, target, labels)) == 0.0
    # One positive ROI of class 2 of 3: only that class's deltas count (a 0.5 error -> 0.125, a 3 -> 2.5).
    deltas = np.zeros((1, 1, 4, 4), np.float32)
    deltas[0, 0, 1] = 9.0  # another class's deltas: ignored
    deltas[0, 0, 2] = [0.5, 3.0, 0.0, 0.0]
    roi_target = np.zeros((1, 1, 4), np.float32)
    classes, positive = np.array([[2]], np.int32), np.array([[True]])
    assert float(losses.box_loss(deltas, roi_target, classes, positive)) == pytest.approx((0.125 + 2.5) / 4)
    deltas[0, 0, 2] = 0.0
    assert float(losses.box_loss(deltas, roi_target, classes, positive)) == 0.0


def test_class_and_mask_losses_known_answers():
    logits = np.log(np.array([[[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]], np.float32))
    classes = np.array([[1, 2]], np.int32)
    valid = np.array([[True, False]])
    assert float(losses.class_loss(logits, classes, valid)) == pytest.approx(-math.log(0.5), rel=1e-6)
    # A 1x2 mask of class 1 (channel 0): logit 0 on a foreground pixel and logit +inf-ish on background.
    mask_logits = np.zeros((1, 1, 1, 2, 2), np.float32)
    mask_logits[0, 0, 0, 1, 0] = 20.0
    mask_logits[..., 1] = -50.0  # class 2's channel: not read
    target = np.array([[[[1.0, 0.0]]]], np.float32)
    expected = (math.log(2) + (20 + math.log1p(math.exp(-20)))) / 2
    got = losses.mask_loss(mask_logits, target, np.array([[1]]), np.array([[True]]))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_empty_ground_truth_gives_finite_zeros():
    # An image without nuclei: no positive anchor or ROI, no valid ROI for the classifier.
    a, r, k, m = 6, 4, 2, 3
    rng = np.random.default_rng(0)
    no_anchor = np.zeros((1, a), np.int32)
    none = np.zeros((1, r), bool)
    zero_classes = np.zeros((1, r), np.int32)
    values = {
        "rpn_class": losses.rpn_class_loss(rng.normal(size=(1, a, 2)), no_anchor),
        "rpn_box": losses.rpn_box_loss(rng.normal(size=(1, a, 4)), rng.normal(size=(1, a, 4)), no_anchor),
        "class": losses.class_loss(rng.normal(size=(1, r, k + 1)), zero_classes, none),
        "box": losses.box_loss(rng.normal(size=(1, r, k + 1, 4)), np.zeros((1, r, 4)), zero_classes, none),
        "mask": losses.mask_loss(
            rng.normal(size=(1, r, m, m, k)), np.zeros((1, r, m, m)), zero_classes, none
        ),
    }
    for name, value in values.items():
        assert np.isfinite(float(value)) and float(value) == 0.0, name


def test_a_class_agnostic_channel_serves_every_class():
    values = np.arange(6, dtype=np.float32).reshape(1, 2, 3)  # (B, R, C) with C = 3 classes
    np.testing.assert_array_equal(losses.class_channel(values, np.array([[2, 0]]), axis=-1), [[2.0, 3.0]])
    agnostic = values[..., :1]
    np.testing.assert_array_equal(losses.class_channel(agnostic, np.array([[2, 0]]), axis=-1), [[0.0, 3.0]])
