import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn.ops import (
    BOX_STD,
    LOG_SIZE_CLIP,
    box_area,
    boxes_from_masks,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    pairwise_iou,
)


def random_boxes(rng, n, size=100.0, min_side=1.0):
    yx = rng.uniform(0, size, (n, 2))
    hw = rng.uniform(min_side, size / 2, (n, 2))
    return np.concatenate([yx, yx + hw], axis=1).astype(np.float32)


def test_area_and_iou_by_hand():
    a = jnp.array([[0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 5.0, 9.0]])  # 4 pixels; a zero-height box
    b = jnp.array([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 5.0, 9.0]])
    np.testing.assert_allclose(box_area(a), [4.0, 0.0])
    np.testing.assert_allclose(box_area(jnp.array([3.0, 3.0, 1.0, 5.0])), 0.0)  # inverted
    iou = pairwise_iou(a, b)
    np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)


def test_iou_matches_loop_reference():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    expected = np.zeros((30, 20))
    for i, (ay1, ax1, ay2, ax2) in enumerate(a):
        for j, (by1, bx1, by2, bx2) in enumerate(b):
            inter = max(0, min(ay2, by2) - max(ay1, by1)) * max(0, min(ax2, bx2) - max(ax1, bx1))
            union = (ay2 - ay1) * (ax2 - ax1) + (by2 - by1) * (bx2 - bx1) - inter
            expected[i, j] = inter / union
    np.testing.assert_allclose(pairwise_iou(a, b), expected, rtol=1e-5, atol=1e-7)


def test_clip():
    boxes = jnp.array([[-5.0, 3.0, 40.0, 70.0]])
    np.testing.assert_array_equal(clip_boxes(boxes, 32, 64), [[0.0, 3.0, 32.0, 64.0]])


def test_boxes_from_masks_on_pixel_edges():
    masks = np.zeros((3, 10, 12), bool)
    masks[0, 3:6, 2:9] = True  # rows 3..5, cols 2..8
    masks[1, 9, 11] = True  # the last pixel
    got = np.asarray(boxes_from_masks(jnp.asarray(masks)))
    np.testing.assert_array_equal(got, [[3, 2, 6, 9], [9, 11, 10, 12], [0, 0, 0, 0]])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(jax.jit(boxes_from_masks)(masks), got)


def test_encode_by_hand():
    anchor = jnp.array([0.0, 0.0, 10.0, 20.0])  # centre (5, 10), size (10, 20)
    box = jnp.array([5.0, 0.0, 25.0, 20.0])  # centre (15, 10), size (20, 20)
    expected = np.array([10 / 10, 0.0, np.log(2.0), 0.0]) / np.array(BOX_STD)
    np.testing.assert_allclose(encode_boxes(box, anchor), expected, rtol=1e-6)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(1)
    anchors, boxes = random_boxes(rng, 500), random_boxes(rng, 500)
    deltas = encode_boxes(boxes, anchors)
    np.testing.assert_allclose(decode_boxes(deltas, anchors), boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        encode_boxes(decode_boxes(deltas, anchors), anchors), deltas, rtol=1e-4, atol=1e-4
    )


def test_decode_clamps_log_size():
    anchor = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    huge = jnp.array([[0.0, 0.0, 1000.0, 1000.0]])  # log-size delta 5000 would overflow exp
    box = decode_boxes(huge, anchor)
    assert np.isfinite(np.asarray(box)).all()
    np.testing.assert_allclose(box[0, 2] - box[0, 0], 10.0 * np.exp(LOG_SIZE_CLIP), rtol=1e-5)


@pytest.mark.parametrize("std", [BOX_STD, (1.0, 1.0, 1.0, 1.0)])
def test_encode_is_jittable_and_batched(std):
    rng = np.random.default_rng(2)
    anchors, boxes = random_boxes(rng, 12).reshape(3, 4, 4), random_boxes(rng, 12).reshape(3, 4, 4)
    eager = encode_boxes(boxes, anchors, std=std)
    jitted = jax.jit(lambda b, a: encode_boxes(b, a, std=std))(boxes, anchors)
    assert eager.shape == (3, 4, 4)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
