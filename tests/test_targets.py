"""RPN anchor assignment, ROI sampling and mask targets, on cases worked by hand and against loops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn import input_pipeline as ip
from maskrcnn import targets
from maskrcnn.ops import anchors_per_level, generate_anchors, pairwise_iou

KEY = jax.random.PRNGKey(0)


def _jitted(fn, **static):
    """``fn`` jitted with its static (int) arguments bound: one compile instead of one per eager op."""
    return jax.jit(functools.partial(fn, **static))


def test_an_anchor_at_iou_exactly_the_threshold_is_positive():
    # A 10x10 box; an anchor of 10x7 inside it has IoU 0.7 exactly, one of 10x6 has 0.6.
    gt = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    anchors = jnp.array([[0.0, 0.0, 10.0, 7.0], [0.0, 0.0, 10.0, 6.0], [20.0, 20.0, 30.0, 30.0]])
    # Without the best-anchor rule getting in the way: a second, better anchor.
    anchors = jnp.concatenate([anchors, gt])
    positive, negative, matched = targets.assign_anchors(anchors, gt, jnp.array([True]))
    assert positive.tolist() == [True, False, False, True]
    assert negative.tolist() == [False, False, True, False]
    assert matched.tolist() == [0, 0, 0, 0]
    lower = targets.assign_anchors(anchors, gt, jnp.array([True]), positive_iou=0.6, negative_iou=0.65)
    assert lower[0].tolist() == [True, True, False, True] and lower[1].tolist() == [False, False, True, False]


def test_padded_ground_truth_never_matches_and_best_anchor_rule():
    gt = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    anchors = jnp.array([[0.0, 0.0, 10.0, 4.0], [50.0, 50.0, 60.0, 60.0]])  # IoU 0.4 and 0
    positive, negative, _ = targets.assign_anchors(anchors, gt, jnp.array([True, False]))
    assert positive.tolist() == [True, False]  # the box's best anchor, though below 0.7
    nothing = targets.assign_anchors(anchors, gt, jnp.array([False, False]))
    assert nothing[0].tolist() == [False, False] and nothing[1].tolist() == [True, True]


def test_anchors_near_an_ignored_nucleus_are_not_negatives():
    gt = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    ignored = jnp.array([[40.0, 40.0, 50.0, 50.0], [0.0, 0.0, 0.0, 0.0]])
    anchors = jnp.array(
        [[40.0, 40.0, 50.0, 55.0], [40.0, 40.0, 50.0, 80.0], [0.0, 0.0, 10.0, 10.0]]
    )  # IoU 2/3, 1/4
    positive, negative, _ = targets.assign_anchors(
        anchors, gt, jnp.array([True]), ignore_boxes=ignored, ignore_valid=jnp.array([True, False])
    )
    assert positive.tolist() == [False, False, True]
    assert negative.tolist() == [False, True, False]


def _atss_loop(anchors, gt, level_sizes, k, per_location=1):
    """ATSS (Zhang et al. 2020, Algorithm 1) written out box by box; with ``per_location`` > 1 the
    candidates are every anchor of the k nearest locations (the authors' ``TOPK * num_anchors_per_loc``)."""
    anchors, gt = np.asarray(anchors, np.float64), np.asarray(gt, np.float64)
    iou = np.asarray(pairwise_iou(anchors, gt), np.float64)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    positive_for = np.full((len(anchors), len(gt)), False)
    for g, box in enumerate(gt):
        centre = (box[:2] + box[2:]) / 2
        candidates, first = [], 0
        for size in level_sizes:
            locations = centres[first : first + size : per_location]
            dist = np.sum((locations - centre) ** 2, axis=1)
            for location in np.argsort(dist, kind="stable")[:k]:
                candidates += [first + location * per_location + j for j in range(per_location)]
            first += size
        values = iou[candidates, g]
        threshold = values.mean() + values.std(ddof=1)
        for a in candidates:
            cy, cx = centres[a]
            inside = box[0] < cy < box[2] and box[1] < cx < box[3]
            if iou[a, g] >= threshold and inside and iou[a, g] > 0:
                positive_for[a, g] = True
    positive = positive_for.any(axis=1)
    matched = np.where(positive_for, iou, -1).argmax(axis=1)
    return positive, matched


@pytest.mark.parametrize("candidates", ["anchors", "locations"])
def test_atss_matches_the_algorithm_written_out(candidates):
    rng = np.random.default_rng(0)
    size, strides = (64, 64), (4, 8, 16)
    anchors = generate_anchors(size, strides=strides, scales=(8, 16, 32), ratios=(0.5, 1.0, 2.0))
    level_sizes = tuple(anchors_per_level(size, strides, 3))
    centre = rng.uniform(8, 56, (6, 2))
    half = rng.uniform(3, 14, (6, 2))
    gt = np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
    valid = np.array([True] * 5 + [False])
    positive, negative, matched = targets.assign_anchors(
        jnp.asarray(anchors),
        jnp.asarray(gt),
        jnp.asarray(valid),
        rule="atss",
        topk=9,
        level_sizes=level_sizes,
        atss_candidates=candidates,
        anchors_per_location=3,
    )
    per_location = 3 if candidates == "locations" else 1
    want_positive, want_matched = _atss_loop(anchors, gt[valid], level_sizes, 9, per_location)
    np.testing.assert_array_equal(np.asarray(positive), want_positive)
    np.testing.assert_array_equal(np.asarray(matched)[want_positive], want_matched[want_positive])
    assert want_positive.sum() >= 5 and not np.any(np.asarray(positive) & np.asarray(negative))


def test_atss_candidates_by_location_with_one_anchor_a_location_are_the_nearest_anchors():
    size, strides = (64, 64), (4, 8)
    anchors = jnp.asarray(generate_anchors(size, strides=strides, scales=(8, 16), ratios=(1.0,)))
    level_sizes = tuple(anchors_per_level(size, strides, 1))
    gt, valid = jnp.asarray([[10.0, 12.0, 30.0, 27.0], [40.0, 33.0, 52.0, 60.0]]), jnp.asarray([True, True])
    kw = dict(rule="atss", topk=5, level_sizes=level_sizes)
    by_anchor = targets.assign_anchors(anchors, gt, valid, atss_candidates="anchors", **kw)
    by_location = targets.assign_anchors(anchors, gt, valid, atss_candidates="locations", **kw)
    for a, b in zip(by_anchor, by_location, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(by_anchor[0]).sum() > 0


def test_rpn_targets_never_sample_an_ignored_nucleus_as_background():
    # Three nuclei, two slots: the input pipeline keeps two and reports the third as ignored.
    labels = np.zeros((64, 64), np.int32)
    labels[4:16, 4:16], labels[28:40, 28:40], labels[48:60, 8:20] = 1, 2, 3  # on anchor centres
    out = ip.instance_targets(labels, (labels > 0).astype(np.uint8), 2, 14, rng=np.random.default_rng(0))
    assert out["num_truncated"] == 1
    anchors = jnp.asarray(generate_anchors((64, 64), strides=(4, 8), scales=(12, 24), ratios=(1.0,)))
    labels_, _ = targets.rpn_targets(
        anchors,
        jnp.asarray(out["boxes"]),
        jnp.asarray(out["valid"]),
        KEY,
        num_samples=10_000,
        ignore_boxes=jnp.asarray(out["ignore_boxes"]),
        ignore_valid=jnp.asarray(out["ignore_valid"]),
    )
    overlap = np.asarray(pairwise_iou(anchors, jnp.asarray(out["ignore_boxes"][:1])))[:, 0]
    assert np.any(overlap >= 0.7)
    assert not np.any(np.asarray(labels_)[overlap >= 0.3] == -1)  # neither positive nor negative there
    assert not np.any(np.asarray(labels_)[overlap >= 0.7] == 1)
    unaware, _ = targets.rpn_targets(
        anchors, jnp.asarray(out["boxes"]), jnp.asarray(out["valid"]), KEY, num_samples=10_000
    )
    assert np.any(np.asarray(unaware)[overlap >= 0.7] == -1)  # what happened before: taught as background


def test_rpn_targets_without_sampling_keep_every_labelled_anchor():
    # Two nuclei on a 64 px grid of 12 px anchors: far more negatives than the 8 a sample would keep.
    anchors = jnp.asarray(generate_anchors((64, 64), strides=(4,), scales=(12,), ratios=(1.0,)))
    gt = jnp.array([[4.0, 4.0, 16.0, 16.0], [30.0, 28.0, 42.0, 40.0]])
    valid = jnp.array([True, True])
    positive, negative, matched = targets.assign_anchors(anchors, gt, valid)
    labels, deltas = targets.rpn_targets(anchors, gt, valid, KEY, num_samples=None)
    np.testing.assert_array_equal(np.asarray(labels), np.where(positive, 1, np.where(negative, -1, 0)))
    assert np.asarray(negative).sum() > 8 and np.asarray(positive).sum() >= 2
    np.testing.assert_allclose(
        np.asarray(deltas)[np.asarray(positive)],
        np.asarray(targets.encode_boxes(gt[matched], anchors))[np.asarray(positive)],
        atol=1e-6,
    )
    sampled, _ = targets.rpn_targets(anchors, gt, valid, KEY, num_samples=8)
    assert (np.asarray(sampled) != 0).sum() == 8


def _roi_case(ignore_valid):
    gt = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    proposals = jnp.array([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0], [60.0, 60.0, 70.0, 70.0]])
    sample = _jitted(targets.sample_rois, num_rois=3, positive_fraction=0.34, mask_size=4)
    return sample(
        proposals,
        jnp.array([True, True, True]),
        gt,
        jnp.array([1]),
        jnp.ones((1, 4, 4)),
        jnp.array([True]),
        KEY,
        ignore_boxes=jnp.array([[30.0, 30.0, 40.0, 41.0]]),
        ignore_valid=jnp.array([ignore_valid]),
    )


def test_roi_sampling_positives_first_and_ignored_nuclei_are_not_negatives():
    rois = _roi_case(True)
    assert rois["positive"].tolist() == [True, False, False]
    assert rois["valid"].tolist() == [True, True, False]  # the proposal on the ignored nucleus is left out
    np.testing.assert_array_equal(rois["rois"][1], [60, 60, 70, 70])
    assert rois["classes"].tolist() == [1, 0, 0]
    assert _roi_case(False)["valid"].tolist() == [True, True, True]


def test_roi_sampling_caps_positives_at_the_ratio():
    rng = np.random.default_rng(0)
    gt = jnp.asarray(rng.uniform(0, 50, (8, 2)) @ np.array([[1, 0, 1, 0], [0, 1, 0, 1]]) + [0, 0, 10, 10])
    proposals = jnp.concatenate([gt, gt + 0.5, jnp.asarray([[90.0, 90.0, 99.0, 99.0]] * 16)])
    sample = _jitted(targets.sample_rois, num_rois=12, positive_fraction=0.33, mask_size=4)
    rois = sample(
        proposals,
        jnp.ones(32, bool),
        gt.astype(jnp.float32),
        jnp.ones(8, jnp.int32),
        jnp.ones((8, 4, 4)),
        jnp.ones(8, bool),
        KEY,
    )
    positive = np.asarray(rois["positive"])
    assert positive.sum() == round(12 * 0.33) and positive[:4].all() and not positive[4:].any()
    assert np.asarray(rois["valid"]).all()


def test_weighted_random_subset_draws_in_proportion_to_the_weights():
    # One draw among four candidates of weights 1, 1, 2, 4 (a fifth entry is no candidate): the chosen
    # one is i with probability w_i / 8 (Efraimidis and Spirakis); 8,000 draws, binomial sd <= 0.006.
    candidates = jnp.array([True, True, True, True, False])
    weights = jnp.array([1.0, 1.0, 2.0, 4.0, 100.0])
    draw = jax.jit(jax.vmap(lambda key: targets.random_subset(candidates, 1, key, weights=weights)))
    chosen = np.asarray(draw(jax.random.split(KEY, 8000)))
    assert (chosen.sum(axis=1) == 1).all()
    np.testing.assert_allclose(chosen.mean(axis=0), [1 / 8, 1 / 8, 2 / 8, 4 / 8, 0], atol=0.025)
    # All the candidates when there are fewer than the slots, and a traced limit caps the count.
    every = targets.random_subset(candidates, 5, KEY, weights=weights)
    assert np.asarray(every).tolist() == [True, True, True, True, False]
    assert int(targets.random_subset(candidates, 5, KEY, limit=jnp.int32(2), weights=weights).sum()) == 2


def test_per_nucleus_sampling_spreads_the_positives_over_the_nuclei():
    # A large nucleus with 30 positive proposals and ten small ones with one each (their own boxes), 11
    # positive slots (round(33 * 0.33)). Uniform: each of the 40 positives is drawn with probability
    # 11/40, so 1 + 10 * 11/40 = 3.75 nuclei are covered on average. Per nucleus: the ten small ones each
    # weigh 1 against 1/30 for every proposal of the large one: compared with the obvious sequential draw
    # (one at a time, in proportion to the weights left), about 9.9 of the 11 on average.
    large = jnp.array([[0.0, 0.0, 60.0, 60.0]])
    small = jnp.array([[70.0 + 12 * i, 70.0, 78.0 + 12 * i, 78.0] for i in range(10)])
    gt = jnp.concatenate([large, small])
    shifts = jnp.arange(30, dtype=jnp.float32)[:, None] * jnp.array([0.1, 0.1, 0.1, 0.1])
    background = jnp.array([[200.0, 200.0, 210.0, 210.0]] * 30)
    proposals = jnp.concatenate([large + shifts, small, background])
    sample = functools.partial(
        targets.sample_rois,
        proposals,
        jnp.ones(70, bool),
        gt,
        jnp.ones(11, jnp.int32),
        jnp.ones((11, 4, 4)),
        jnp.ones(11, bool),
        num_rois=33,
        positive_fraction=0.33,
        mask_size=4,
    )
    covered = {}
    for rule in ("uniform", "per_nucleus"):
        rois = jax.jit(jax.vmap(functools.partial(sample, positive_sampling=rule)))(
            jax.random.split(KEY, 400)
        )
        positive = np.asarray(rois["positive"])
        assert (positive.sum(axis=1) == 11).all()
        best = np.asarray(pairwise_iou(rois["rois"].reshape(-1, 4), gt)).argmax(axis=1).reshape(400, 33)
        covered[rule] = np.mean([len(set(b[p])) for b, p in zip(best, positive, strict=True)])
    assert 3.3 < covered["uniform"] < 4.2
    rng, weights = np.random.default_rng(0), np.array([1 / 30] * 30 + [1.0] * 10)
    left, nucleus = np.ones((4000, 40)), np.array([0] * 30 + list(range(1, 11)))
    for _ in range(11):
        cumulative = np.cumsum(left * weights, axis=1)
        pick = (cumulative < rng.uniform(size=(4000, 1)) * cumulative[:, -1:]).sum(axis=1)
        left[np.arange(4000), pick] = 0
    sequential = np.mean([len(set(nucleus[row == 0])) for row in left])
    assert abs(covered["per_nucleus"] - sequential) < 0.15  # sd of the mean of 400 draws: about 0.04
    with pytest.raises(ValueError, match="positive_sampling='size'"):
        sample(KEY, positive_sampling="size")


@pytest.mark.parametrize("grow", [0.0, 2.0, 3.5])
def test_mask_targets_from_mini_masks_equal_those_from_full_masks(grow):
    # A 14x14 box and a 14x14 mini-mask: the mini-mask is the crop itself, so any difference in the
    # targets is the border handling. The ROI is `grow` px larger than the box on every side.
    full = np.zeros((40, 40), np.float32)
    yy, xx = np.mgrid[:14, :14]
    shape = ((yy - 6.5) ** 2 / 49 + (xx - 6.5) ** 2 / 30 <= 1.0) | (yy == 0) | (xx == 13)  # touches edges
    full[10:24, 12:26] = shape
    box = jnp.array([[10.0, 12.0, 24.0, 26.0]])
    roi = box + jnp.array([-grow, -grow, grow, grow])
    from_full = targets.crop_mask_targets(jnp.asarray(full)[None], box, roi, 28, mini_masks=False)
    from_mini = targets.crop_mask_targets(jnp.asarray(shape, jnp.float32)[None], box, roi, 28)
    np.testing.assert_array_equal(np.asarray(from_mini), np.asarray(from_full))
    assert np.asarray(from_full).sum() > 100


def _atss_every_anchor(anchors, gt, valid, level_sizes, topk, group):
    """ATSS ranking every anchor of each level (the form before the window): candidate sets, and the
    positives and matches of those candidates. ``group``: 1 (by anchor) or anchors a location."""
    iou = jnp.where(valid[None, :], pairwise_iou(anchors, gt), -1.0)
    a_centre, g_centre = (anchors[:, :2] + anchors[:, 2:]) / 2, (gt[:, :2] + gt[:, 2:]) / 2
    candidate, first = np.zeros(iou.shape, bool), 0
    for size in level_sizes:
        centres = a_centre[first : first + size : group]
        dist = jnp.sum((g_centre[:, None, :] - centres[None, :, :]) ** 2, axis=-1)
        _, nearest = jax.lax.top_k(-dist, min(topk, centres.shape[0]))
        for m, row in enumerate(np.asarray(nearest)):
            for n in row:
                candidate[first + n * group : first + (n + 1) * group, m] = True
        first += size
    return candidate


@pytest.mark.parametrize("candidates", ["anchors", "locations"])
def test_atss_window_finds_the_candidates_of_ranking_every_anchor(candidates):
    # The `learning` preset's anchors (256 px, 5 levels, 3 octaves x 3 ratios; P6 is 4 x 4, smaller than
    # the window), boxes anywhere including the image's edges and centres on location boundaries (ties).
    from maskrcnn.config import load_config
    from maskrcnn.model.maskrcnn import anchor_assignment, config_anchors

    config = load_config("learning")
    anchors = jnp.asarray(config_anchors(config.model, (256, 256)))
    kw = {**anchor_assignment(config.model, (256, 256)), "atss_candidates": candidates}
    rng = np.random.default_rng(7)
    centre = np.concatenate([rng.uniform(0, 256, (50, 2)), rng.integers(0, 33, (14, 2)) * 8.0])  # ties
    centre[:4] = [[0, 0], [256, 256], [0, 255], [3.5, 250]]
    half = rng.uniform(2, 40, (64, 2))
    gt = np.clip(np.concatenate([centre - half, centre + half], axis=1), 0, 256).astype(np.float32)
    valid = jnp.asarray(np.arange(64) < 60)
    group = kw["anchors_per_location"] if candidates == "locations" else 1
    want = _atss_every_anchor(anchors, jnp.asarray(gt), valid, kw["level_sizes"], kw["topk"], group)
    got = targets._atss_candidates(
        anchors,
        jnp.asarray(gt),
        kw["level_sizes"],
        kw["level_shapes"],
        kw["topk"],
        kw["anchors_per_location"],
        candidates,
    )
    got_sets = np.zeros_like(want)
    for m, row in enumerate(np.asarray(got)):
        got_sets[row, m] = True
    np.testing.assert_array_equal(got_sets, want)
    assert np.all(np.asarray(got)[:, : kw["topk"]] < kw["level_sizes"][0])  # level by level, P2 first
