"""Proposals, detections, mask pasting and label maps, on cases worked by hand."""

import jax.numpy as jnp
import numpy as np

from maskrcnn import postprocess
from maskrcnn.ops import BOX_STD


def _logits(probs):
    return jnp.log(jnp.asarray(probs, jnp.float32))


def _detect(probs, rois, min_confidence, max_detections=4, valid=None):
    probs = np.asarray(probs, np.float32)
    return postprocess.detect(
        _logits(probs),
        jnp.zeros((len(rois), probs.shape[1], 4)),
        jnp.asarray(rois, jnp.float32),
        jnp.ones(len(rois), bool) if valid is None else jnp.asarray(valid),
        image_size=(64, 64),
        min_confidence=min_confidence,
        nms_threshold=0.5,
        max_detections=max_detections,
    )


def test_a_nucleus_split_between_classes_is_kept():
    # Background 0.1, neoplastic 0.45, epithelial 0.45: the argmax rule with threshold 0.5 lost it.
    out = _detect([[0.1, 0.45, 0.0, 0.45]], [[10, 10, 20, 20]], min_confidence=0.3)
    assert out["valid"].tolist() == [True, True, False, False]
    np.testing.assert_allclose(out["scores"][:2], [0.45, 0.45], rtol=1e-5)
    assert sorted(out["classes"][:2].tolist()) == [1, 3]
    np.testing.assert_allclose(out["boxes"][:2], [[10, 10, 20, 20]] * 2, atol=1e-4)
    # Background 0.4 with two classes at 0.3: background is the argmax, yet both classes are candidates.
    out = _detect([[0.4, 0.3, 0.3]], [[10, 10, 20, 20]], min_confidence=0.25)
    assert out["valid"].sum() == 2


def test_low_scores_come_through_for_a_one_class_model():
    probs = [[0.8, 0.2], [0.94, 0.06], [0.99, 0.01]]
    rois = [[0, 0, 10, 10], [30, 30, 40, 40], [50, 50, 60, 60]]
    out = _detect(probs, rois, min_confidence=0.05)
    assert out["valid"].tolist() == [True, True, False, False]
    np.testing.assert_allclose(out["scores"][:2], [0.2, 0.06], rtol=1e-5)  # descending
    assert out["classes"][:2].tolist() == [1, 1]


def test_nms_is_per_class_and_invalid_and_empty_rois_are_dropped():
    probs = [[0.1, 0.9, 0.0], [0.1, 0.8, 0.1], [0.1, 0.0, 0.9], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    rois = [[10, 10, 20, 20], [10, 11, 20, 21], [10, 11, 20, 21], [30, 30, 40, 40], [64, 5, 70, 9]]
    out = _detect(probs, rois, min_confidence=0.5, max_detections=5, valid=[True, True, True, False, True])
    # ROI 1 (class 1) is suppressed by ROI 0 (IoU 0.82); ROI 2's class 2 survives beside it; ROI 3 is
    # padding; ROI 4 lies below the image and clips to zero height.
    assert out["valid"].tolist() == [True, True, False, False, False]
    assert sorted(out["classes"][:2].tolist()) == [1, 2]
    np.testing.assert_allclose(out["scores"][:2], [0.9, 0.9], rtol=1e-5)


def test_detection_deltas_are_those_of_the_scored_class():
    deltas = np.zeros((1, 3, 4), np.float32)
    deltas[0, 2] = np.array([0.1, 0.0, 0.0, 0.0]) / np.asarray(BOX_STD)  # class 2 moves 1 px down (h = 10)
    out = postprocess.detect(
        _logits([[0.1, 0.3, 0.6]]),
        jnp.asarray(deltas),
        jnp.asarray([[10.0, 10.0, 20.0, 20.0]]),
        jnp.array([True]),
        image_size=(64, 64),
        min_confidence=0.2,
        nms_threshold=0.5,
        max_detections=2,
    )
    by_class = {int(c): np.asarray(b) for c, b in zip(out["classes"], out["boxes"], strict=True)}
    np.testing.assert_allclose(by_class[2], [11, 10, 21, 20], atol=1e-4)
    np.testing.assert_allclose(by_class[1], [10, 10, 20, 20], atol=1e-4)


def test_refined_rois_move_each_roi_by_its_best_foreground_class_and_clip_it():
    deltas = np.zeros((2, 3, 4), np.float32)
    deltas[0, 2] = np.array([0.1, 0.0, 0.0, 0.0]) / np.asarray(BOX_STD)  # class 2 moves ROI 0 1 px down
    deltas[0, 1] = np.array([0.0, 0.5, 0.0, 0.0]) / np.asarray(BOX_STD)  # class 1 would move it 5 px right
    deltas[1, 1] = np.array([0.0, -0.5, 0.0, 0.0]) / np.asarray(BOX_STD)  # ROI 1, class 1: 5 px left
    deltas[1, 0] = np.array([0.0, 0.5, 0.0, 0.0]) / np.asarray(BOX_STD)  # background: never used
    refined = postprocess.refined_rois(
        _logits([[0.1, 0.3, 0.6], [0.8, 0.15, 0.05]]),  # ROI 1 is background, then class 1
        jnp.asarray(deltas),
        jnp.asarray([[10.0, 10.0, 20.0, 20.0], [10.0, 2.0, 20.0, 12.0]]),
        image_size=(64, 64),
    )
    # ROI 1 moved to x -3..7 is clipped at the image's left edge.
    np.testing.assert_allclose(refined, [[11, 10, 21, 20], [10, 0, 20, 7]], atol=1e-4)
    agnostic = postprocess.refined_rois(
        _logits([[0.1, 0.3, 0.6]]),
        jnp.asarray(deltas[:1, 2:]),
        jnp.asarray([[10.0, 10.0, 20.0, 20.0]]),
        image_size=(64, 64),
    )
    np.testing.assert_allclose(agnostic, [[11, 10, 21, 20]], atol=1e-4)


def _propose(scores, anchors, **kw):
    scores = np.asarray(scores, np.float32)
    logits = jnp.stack([jnp.zeros(len(scores)), jnp.log(scores) - jnp.log1p(-scores)], axis=-1)
    return postprocess.propose(
        logits,
        jnp.zeros((len(scores), 4)),
        jnp.asarray(anchors, jnp.float32),
        image_size=(64, 64),
        nms_threshold=0.7,
        **kw,
    )


def test_proposals_drop_empty_boxes_and_keep_score_order():
    anchors = [[0, 0, 10, 10], [70, 70, 80, 80], [20, 20, 30, 30], [0, 1, 10, 11]]
    boxes, scores, valid = _propose([0.6, 0.99, 0.7, 0.5], anchors, pre_nms_limit=4, num_proposals=4)
    # Anchor 1 lies outside the image: clipped to nothing, dropped. Anchor 3 overlaps anchor 0 by 0.82.
    assert valid.tolist() == [True, True, False, False]
    np.testing.assert_allclose(scores[:2], [0.7, 0.6], rtol=1e-5)
    np.testing.assert_allclose(boxes[:2], [[20, 20, 30, 30], [0, 0, 10, 10]], atol=1e-4)


def test_per_level_top_k_gives_every_level_its_share():
    # Level 0 holds the four best scores; with a limit of 2 over all levels, level 1 gets nothing,
    # with a limit of 2 per level it gets its two.
    anchors = [
        [0, 0, 8, 8],
        [0, 10, 8, 18],
        [0, 20, 8, 28],
        [0, 30, 8, 38],
        [30, 0, 46, 16],
        [30, 20, 46, 36],
    ]
    scores = [0.9, 0.9, 0.9, 0.9, 0.5, 0.4]
    _, s_all, v_all = _propose(scores, anchors, pre_nms_limit=2, num_proposals=4)
    _, s_lvl, v_lvl = _propose(scores, anchors, pre_nms_limit=2, num_proposals=4, level_sizes=(4, 2))
    assert v_all.sum() == 2 and np.allclose(s_all[:2], 0.9)
    assert v_lvl.sum() == 4
    np.testing.assert_allclose(s_lvl, [0.9, 0.9, 0.5, 0.4], rtol=1e-5)


def test_a_full_mask_fills_its_box_exactly():
    masks = jnp.ones((1, 28, 28))
    full = postprocess.paste_masks(masks, jnp.array([[4.0, 6.0, 12.0, 20.0]]), (32, 32))
    on = np.asarray(full[0]) >= 0.5
    expected = np.zeros((32, 32), bool)
    expected[4:12, 6:20] = True
    np.testing.assert_array_equal(on, expected)
    # At half resolution (scale 2: model pixels per output pixel) the box covers rows 2..5, columns 3..9.
    half = np.asarray(postprocess.paste_masks(masks, jnp.array([[4.0, 6.0, 12.0, 20.0]]), (16, 16), 2.0)[0])
    assert np.argwhere(half >= 0.5).min(0).tolist() == [2, 3] and np.argwhere(half >= 0.5).max(
        0
    ).tolist() == [5, 9]


def test_label_map_gives_overlaps_to_the_higher_score():
    masks = np.zeros((3, 8, 8), np.float32)
    masks[0, 0:4, 0:4] = 0.9
    masks[1, 2:6, 2:6] = 0.8
    masks[2, 6:8, 6:8] = 1.0
    labels = np.asarray(
        postprocess.instance_label_map(
            jnp.asarray(masks), jnp.array([0.5, 0.7, 0.9]), jnp.array([True, True, False])
        )
    )
    assert labels.dtype == np.int32
    assert labels[1, 1] == 1 and labels[3, 3] == 2 and labels[5, 5] == 2  # overlap to detection 1 (0.7)
    assert labels[7, 7] == 0  # invalid detection
    assert set(np.unique(labels)) == {0, 1, 2}


def test_objectness_weight_scores_by_the_geometric_mean_of_both_stages():
    # Two ROIs of one class at class probability 0.25 and 0.64, object probabilities 1.0 and 0.01. With
    # w = 1/2 the scores are sqrt(0.25 * 1.0) = 0.5 and sqrt(0.64 * 0.01) = 0.08, so the order flips and
    # a threshold of 0.3 keeps only the first; w = 0 keeps the class probabilities.
    rois = [[10, 10, 20, 20], [40, 40, 50, 50]]
    kw = dict(image_size=(64, 64), min_confidence=0.3, nms_threshold=0.5, max_detections=2)
    args = (_logits([[0.75, 0.25], [0.36, 0.64]]), jnp.zeros((2, 2, 4)), jnp.asarray(rois, jnp.float32))
    valid, objectness = jnp.ones(2, bool), jnp.asarray([1.0, 0.01])
    out = postprocess.detect(*args, valid, objectness, objectness_weight=0.5, **kw)
    assert out["valid"].tolist() == [True, False]
    np.testing.assert_allclose(out["scores"][0], 0.5, rtol=1e-5)
    np.testing.assert_allclose(out["boxes"][0], rois[0], atol=1e-4)
    plain = postprocess.detect(*args, valid, objectness, **kw)
    assert plain["valid"].tolist() == [True, False]  # 0.64 passes 0.3, 0.25 does not
    np.testing.assert_allclose(plain["scores"][0], 0.64, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------
# Test-time flips: the views' detections voted into one set (merge_views)


def _views():
    """Four views (3 slots each) of one image, boxes already in its frame: nucleus A in every view
    (0.9, 0.8, 0.7, 0.6, a pixel apart), B in view 2 only (0.9), C in views 1 and 3 (0.8 each), and in
    view 1 a class-2 box on A (0.95)."""
    a, b, c = [10, 10, 20, 20], [40, 40, 50, 50], [60, 60, 70, 70]
    shift = [[0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]]
    pad = [0, 0, 0, 0]
    a_views = [list(np.add(a, s)) for s in shift]
    boxes = [[a_views[0], pad, pad], [a_views[1], c, a], [a_views[2], b, pad], [a_views[3], c, pad]]
    scores = [[0.9, 0, 0], [0.8, 0.8, 0.95], [0.7, 0.9, 0], [0.6, 0.8, 0]]
    classes = [[1, 0, 0], [1, 1, 2], [1, 1, 0], [1, 1, 0]]
    valid = [[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]]
    return (
        jnp.asarray(boxes, jnp.float32),
        jnp.asarray(scores, jnp.float32),
        jnp.asarray(classes, jnp.int32),
        jnp.asarray(valid, bool),
    )


def test_flip_votes_average_each_box_over_the_views_and_keep_classes_apart():
    merged = postprocess.merge_views(*_views(), min_confidence=0.2, nms_threshold=0.3, max_detections=5)
    valid = np.asarray(merged["valid"])
    scores, boxes = np.asarray(merged["scores"])[valid], np.asarray(merged["boxes"])[valid]
    classes = np.asarray(merged["classes"])[valid]
    # A: (0.9 + 0.8 + 0.7 + 0.6) / 4 with view 0's box; C: (0.8 + 0.8) / 4; class 2: 0.95 / 4; B: 0.9 / 4.
    np.testing.assert_allclose(scores, [0.75, 0.4, 0.2375, 0.225], rtol=1e-6)
    np.testing.assert_array_equal(
        boxes, [[10, 10, 20, 20], [60, 60, 70, 70], [10, 10, 20, 20], [40, 40, 50, 50]]
    )
    np.testing.assert_array_equal(classes, [1, 1, 2, 1])
    assert valid.sum() == 4 and not np.asarray(merged["boxes"])[~valid].any()

    strict = postprocess.merge_views(*_views(), min_confidence=0.5, nms_threshold=0.3, max_detections=5)
    assert np.asarray(strict["valid"]).sum() == 1 and float(strict["scores"][0]) == np.float32(0.75)


def test_one_view_merges_into_its_own_detections():
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 48, (12, 2))
    rois = np.concatenate([yx, yx + rng.uniform(4, 16, (12, 2))], axis=1)
    probs = rng.dirichlet(np.ones(3), 12)
    found = _detect(probs, rois, min_confidence=0.2, max_detections=8)
    merged = postprocess.merge_views(
        *(found[k][None] for k in ("boxes", "scores", "classes", "valid")),
        min_confidence=0.2,
        nms_threshold=0.5,
        max_detections=8,
    )
    assert np.asarray(found["valid"]).sum() >= 3  # the case holds detections
    for key in ("boxes", "scores", "classes", "valid"):
        np.testing.assert_allclose(np.asarray(merged[key]), np.asarray(found[key]), rtol=1e-6)
