import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from maskrcnn.evaluation import pairwise_instance_iou, panoptic_quality, relabel


def reference_fast_pq(true, pred, match_iou=0.5):
    """get_fast_pq as published by the HoVer-Net / PanNuke authors, after their remap_label, in loops."""

    def remap(x):
        out = np.zeros(x.shape, np.int64)
        for new, old in enumerate(sorted(set(np.unique(x)) - {0})):
            out[x == old] = new + 1
        return out

    true, pred = remap(true), remap(pred)
    t_ids, p_ids = (
        list(np.unique(true))[1:] if true.any() else [],
        list(np.unique(pred))[1:] if pred.any() else [],
    )
    iou = np.zeros((len(t_ids), len(p_ids)))
    for t in t_ids:
        t_mask = (true == t).astype(np.uint8)
        for p in np.unique(pred[t_mask > 0]):
            if p == 0:
                continue
            p_mask = (pred == p).astype(np.uint8)
            total, inter = (t_mask + p_mask).sum(), (t_mask * p_mask).sum()
            iou[t - 1, p - 1] = inter / (total - inter)
    if match_iou >= 0.5:
        paired = iou[iou > match_iou]
    else:
        r, c = linear_sum_assignment(-iou)
        paired = iou[r, c][iou[r, c] > match_iou]
    tp, fp, fn = len(paired), len(p_ids) - len(paired), len(t_ids) - len(paired)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = paired.sum() / (tp + 1.0e-6)
    return dq, sq, dq * sq, tp, fp, fn


def random_label_map(rng, size=48, count=12, id_scale=1):
    labels = np.zeros((size, size), np.int64)
    for _ in range(count):
        y, x = rng.integers(0, size - 4, 2)
        h, w = rng.integers(3, 12, 2)
        labels[y : y + h, x : x + w] = rng.integers(1, 1000) * id_scale
    return labels


def perturb(rng, labels):
    """A prediction: shifted instances, some dropped, some new, ids scrambled."""
    shifted = np.roll(labels, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    ids = np.unique(shifted)[1:]
    for i in ids[rng.random(len(ids)) < 0.2]:
        shifted[shifted == i] = 0
    extra = random_label_map(rng, labels.shape[0], count=2) * 7
    return np.where(extra > 0, extra + 5000, shifted)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_matches_get_fast_pq(seed, threshold):
    rng = np.random.default_rng(seed)
    id_scale = [1, 300, 70_000, 3_000_000][seed % 4]  # ids above 255 and 65535 stay distinct
    true = random_label_map(rng, id_scale=id_scale)
    pred = perturb(rng, true)
    got = panoptic_quality(true, pred, iou_threshold=threshold)
    expected = reference_fast_pq(true, pred, threshold)
    np.testing.assert_allclose(got[:3], expected[:3], rtol=1e-12)
    assert got[3:] == expected[3:]


def test_hand_worked_example():
    true = np.zeros((10, 10), np.int32)
    true[0:4, 0:4] = 7  # 16 pixels
    pred = np.zeros((10, 10), np.int32)
    pred[0:4, 1:5] = 300  # 12 shared pixels, union 20: IoU 0.6
    pred[8:10, 8:10] = 2  # a false positive
    got = panoptic_quality(true, pred)
    assert (got.tp, got.fp, got.fn) == (1, 1, 0)
    assert got.dq == pytest.approx(1 / 1.5)
    assert got.sq == pytest.approx(0.6 / (1 + 1e-6), rel=1e-12)
    assert got.pq == pytest.approx(got.dq * got.sq)


def test_iou_of_exactly_half_does_not_pair():
    true = np.zeros((4, 4), np.int32)
    true[:, :2] = 1
    pred = np.zeros((4, 4), np.int32)
    pred[:2, :2] = 1  # 4 pixels inside an 8-pixel instance: IoU 0.5
    got = panoptic_quality(true, pred)
    assert (got.tp, got.fp, got.fn, got.pq) == (0, 1, 1, 0.0)


def test_empty_maps():
    empty = np.zeros((8, 8), np.int32)
    one = empty.copy()
    one[2:5, 2:5] = 1
    assert np.isnan(panoptic_quality(empty, empty).pq)
    assert panoptic_quality(empty, one)[2:] == (0.0, 0, 1, 0)
    assert panoptic_quality(one, empty)[2:] == (0.0, 0, 0, 1)


def test_relabel_and_pairwise_iou():
    labels = np.array([[0, 70000, 70000], [5, 5, 0]])
    mapped, ids = relabel(labels)
    np.testing.assert_array_equal(mapped, [[0, 2, 2], [1, 1, 0]])
    np.testing.assert_array_equal(ids, [5, 70000])
    iou = pairwise_instance_iou(labels, np.array([[0, 1, 0], [1, 1, 1]]))
    np.testing.assert_allclose(iou, [[2 / 4], [1 / 5]])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pred must be an integer"):
        panoptic_quality(np.zeros((4, 4), np.int32), np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError, match="differ in shape"):
        panoptic_quality(np.zeros((4, 4), np.int32), np.zeros((5, 4), np.int32))
