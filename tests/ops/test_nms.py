import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn.ops import nms


def classic_nms(boxes, scores, iou_threshold, max_output_size):
    """The textbook loop: sort by score (ties by index), keep a box unless a kept box overlaps it."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if not np.isfinite(scores[i]) or len(kept) == max_output_size:
            continue
        ok = True
        for j in kept:
            yy = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            xx = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = yy * xx
            union = (
                (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
                - inter
            )
            if union > 0 and inter / union > iou_threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def clustered_boxes(rng, n, size=200.0):
    """Boxes around a few centres, so that suppression chains are long."""
    centres = rng.uniform(20, size - 20, (max(1, n // 20), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 4, (n, 2))
    hw = rng.uniform(8, 30, (n, 2))
    return np.concatenate([c - hw / 2, c + hw / 2], axis=1).astype(np.float32)


def check(boxes, scores, iou_threshold, max_output_size, **kwargs):
    idx, num = nms(
        jnp.asarray(boxes),
        jnp.asarray(scores),
        iou_threshold=iou_threshold,
        max_output_size=max_output_size,
        **kwargs,
    )
    expected = classic_nms(boxes, scores, iou_threshold, max_output_size)
    assert int(num) == len(expected)
    np.testing.assert_array_equal(np.asarray(idx), expected + [-1] * (max_output_size - len(expected)))


@pytest.mark.parametrize("n, tile", [(50, 256), (300, 64), (333, 16), (7, 3)])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.7])
def test_matches_classic_algorithm(n, tile, iou_threshold):
    rng = np.random.default_rng(n + tile)
    for _ in range(3):
        boxes = clustered_boxes(rng, n)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        check(boxes, scores, iou_threshold, max_output_size=n // 2 + 1, tile_size=tile)


def test_ties_break_by_lower_index_and_duplicates_are_suppressed():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.9, 0.5], np.float32)
    check(boxes, scores, 0.5, 4)
    idx, num = nms(boxes, scores, iou_threshold=0.5, max_output_size=4)
    np.testing.assert_array_equal(idx, [1, 3, -1, -1])


def test_iou_equal_to_threshold_is_not_suppressed():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU exactly 0.5
    idx, num = nms(boxes, np.array([0.9, 0.8], np.float32), iou_threshold=0.5, max_output_size=2)
    np.testing.assert_array_equal(idx, [0, 1])


def test_zero_area_padding_and_short_inputs():
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 4, 4], [0, 0, 4, 4]], np.float32)
    scores = np.array([0.9, 0.8, -np.inf, 0.1], np.float32)
    # Zero-area boxes never suppress each other; -inf is padding; output longer than the input.
    idx, num = nms(boxes, scores, iou_threshold=0.5, max_output_size=6)
    np.testing.assert_array_equal(idx, [0, 1, 3, -1, -1, -1])
    assert int(num) == 3
    idx, num = nms(
        np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), iou_threshold=0.5, max_output_size=3
    )
    np.testing.assert_array_equal(idx, [-1, -1, -1])
    assert int(num) == 0


def test_all_padding_keeps_nothing():
    idx, num = nms(
        np.ones((5, 4), np.float32), np.full(5, -np.inf, np.float32), iou_threshold=0.5, max_output_size=2
    )
    np.testing.assert_array_equal(idx, [-1, -1])


def test_jit_and_vmap():
    rng = np.random.default_rng(3)
    boxes = np.stack([clustered_boxes(rng, 120) for _ in range(3)])
    scores = rng.uniform(0, 1, (3, 120)).astype(np.float32)
    f = jax.jit(jax.vmap(lambda b, s: nms(b, s, iou_threshold=0.5, max_output_size=40, tile_size=32)))
    idx, num = f(boxes, scores)
    for i in range(3):
        expected = classic_nms(boxes[i], scores[i], 0.5, 40)
        assert int(num[i]) == len(expected)
        np.testing.assert_array_equal(np.asarray(idx[i])[: len(expected)], expected)
