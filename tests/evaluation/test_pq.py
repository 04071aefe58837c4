import numpy as np
import pytest
from scipy import ndimage

from maskrcnn.evaluation import aji, aji_plus, overlaps, pairwise_instance_iou, panoptic_quality, relabel
from tests.evaluation import references as ref


def blobs(rng, size=48, count=12, ids=None):
    """An (H, W) label map of overlapping ellipses (later ones on top) with the given ids."""
    labels = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    ids = np.arange(1, count + 1) if ids is None else ids
    for i in ids:
        y, x = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(1.5, 7, 2)
        labels[((yy - y) / ry) ** 2 + ((xx - x) / rx) ** 2 <= 1] = i
    return labels


def predict(rng, true, id_pool):
    """A plausible prediction: instances shifted, grown or shrunk, dropped, split, merged, plus new ones."""
    pred = np.zeros_like(true)
    for i in np.unique(true)[1:]:
        mask = true == i
        r = rng.random()
        if r < 0.15:
            continue  # missed
        if r < 0.3:
            mask = ndimage.binary_dilation(mask)
        elif r < 0.45:
            mask = ndimage.binary_erosion(mask)
        mask = np.roll(mask, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
        pred[mask] = rng.choice(id_pool)
        if rng.random() < 0.1:  # split: the right half gets another id
            cols = np.nonzero(mask.any(0))[0]
            if cols.size:
                pred[mask & (np.arange(true.shape[1]) >= cols.mean())] = rng.choice(id_pool)
    extra = blobs(rng, true.shape[0], count=3)
    pred[extra > 0] = rng.choice(id_pool, 3)[extra[extra > 0] - 1]
    return pred


ID_SCALES = [1, 300, 70_000, 3_000_000_000]  # above 255, 65535 and 2**31 (the sort path) stay distinct


@pytest.mark.parametrize("seed", range(12))
def test_matches_get_fast_pq_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    scale = ID_SCALES[seed % 4]
    for _ in range(10):
        count = int(rng.integers(0, 25))
        true = blobs(rng, count=count, ids=rng.choice(np.arange(1, 5000), count, replace=False) * scale)
        pred = predict(rng, true, id_pool=np.arange(1, 9000) * scale + 7)
        for threshold in (0.5, 0.3, 0.75, 0.0):
            if not true.any() and not pred.any():
                continue
            got = panoptic_quality(true, pred, iou_threshold=threshold)
            expected = ref.get_fast_pq(true, pred, threshold)
            np.testing.assert_allclose(got[:3], expected[:3], rtol=1e-12, atol=0)
            assert got[3:] == expected[3:]


@pytest.mark.parametrize("seed", range(6))
def test_aji_matches_get_fast_aji(seed):
    rng = np.random.default_rng(100 + seed)
    scale = ID_SCALES[seed % 4]
    for _ in range(8):
        true = blobs(rng, count=int(rng.integers(1, 20))) * scale
        pred = predict(rng, true, id_pool=np.arange(1, 50) * 3)
        if not pred.any():
            continue  # the reference's argmax fails on an empty prediction
        assert aji(true, pred) == pytest.approx(ref.get_fast_aji(true, pred), rel=1e-12)
        assert aji_plus(true, pred) == pytest.approx(ref.get_fast_aji_plus(true, pred), rel=1e-12)


def test_hand_worked_pq():
    true = np.zeros((10, 10), np.int32)
    true[0:4, 0:4] = 7  # 16 pixels
    true[6:8, 0:2] = 70_000  # 4 pixels, missed
    pred = np.zeros((10, 10), np.int32)
    pred[0:4, 1:5] = 300  # 12 shared pixels, union 20: IoU 0.6
    pred[8:10, 8:10] = 2  # a false positive
    got = panoptic_quality(true, pred)
    assert (got.tp, got.fp, got.fn) == (1, 1, 1)
    assert got.dq == pytest.approx(1 / 2)  # 1 / (1 + 1/2 + 1/2)
    assert got.sq == pytest.approx(0.6 / (1 + 1e-6), rel=1e-15)  # get_fast_pq's 1e-6
    assert got.pq == pytest.approx(0.3 / (1 + 1e-6), rel=1e-15)


def test_hand_worked_aji():
    true = np.zeros((4, 8), np.int32)
    true[:, 0:4] = 1  # 16 pixels
    true[:, 4:8] = 2  # 16 pixels
    pred = np.zeros((4, 8), np.int32)
    pred[:, 1:7] = 5  # one merged prediction over both: 12 shared with each, union 28 each
    pred[0, 0] = 9  # a small prediction inside true 1, 1 pixel
    # AJI: both trues take pred 5 (IoU 12/28 > 1/16): inter 24, union 28 + 28, plus unused pred 9 (1).
    assert aji(true, pred) == pytest.approx(24 / 57)
    # AJI+: one to one: true 1 - pred 5 or true 2 - pred 5 (same IoU, Hungarian picks one), the other
    # true pairs with pred 9 (IoU 1/16): inter 12 + 1, union 28 + 16.
    assert aji_plus(true, pred) == pytest.approx(13 / 44)


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
    both = panoptic_quality(empty, empty)
    assert np.isnan(both.pq) and np.isnan(both.dq) and np.isnan(both.sq) and both[3:] == (0, 0, 0)
    with pytest.raises(ZeroDivisionError):  # what the reference does; we say NaN instead
        ref.get_fast_pq(empty, empty)
    assert panoptic_quality(empty, one) == (0.0, 0.0, 0.0, 0, 1, 0)
    assert panoptic_quality(one, empty) == (0.0, 0.0, 0.0, 0, 0, 1)
    assert np.isnan(aji(empty, empty)) and np.isnan(aji_plus(empty, empty))
    assert aji(one, empty) == aji(empty, one) == aji_plus(one, empty) == aji_plus(empty, one) == 0.0


def test_relabel_lookup_and_sort_paths_agree():
    rng = np.random.default_rng(0)
    small = blobs(rng, count=30, ids=rng.choice(np.arange(1, 1000), 30, replace=False))
    # A lookup table below about 4 * pixels + 65536, a sort above (10**12).
    for labels in (small, small + 65_000 * (small > 0), small * 10**12 + (small > 0)):
        mapped, ids = relabel(labels)
        assert mapped.dtype == np.int64 and mapped.max() == len(ids)
        np.testing.assert_array_equal(ids, np.unique(labels)[1:])
        np.testing.assert_array_equal(mapped, ref.remap_label(labels))
    mapped, ids = relabel(np.array([[3, 5], [5, 3]], np.uint16))  # no background at all
    np.testing.assert_array_equal(mapped, [[1, 2], [2, 1]])
    np.testing.assert_array_equal(ids, [3, 5])


def test_overlaps_and_pairwise_iou():
    labels = np.array([[0, 70000, 70000], [5, 5, 0]])
    pred = np.array([[0, 1, 0], [1, 1, 1]])
    inter, t_area, p_area = overlaps(labels, pred)
    np.testing.assert_array_equal(inter, [[2], [1]])
    np.testing.assert_array_equal(t_area, [2, 2])
    np.testing.assert_array_equal(p_area, [4])
    np.testing.assert_allclose(pairwise_instance_iou(labels, pred), [[2 / 4], [1 / 5]])


def test_whole_number_floats_and_bools_are_accepted():
    true = np.zeros((6, 6))
    true[1:4, 1:4] = 2.0
    assert panoptic_quality(true, true.astype(bool)).tp == 1


@pytest.mark.parametrize(
    "pred, message",
    [
        (
            np.zeros((4, 4, 3), np.int32),
            r"pred must be an \(H, W\) instance label map, got shape \(4, 4, 3\)",
        ),
        (np.full((4, 4), 1.5), "pred must hold whole-number instance ids"),
        (np.full((4, 4), np.nan), "pred must hold whole-number instance ids"),
        (-np.ones((4, 4), np.int32), r"pred must hold ids >= 0 \(0 is background\), got -1"),
        (np.zeros((5, 4), np.int32), r"differ in shape: \(4, 4\) vs \(5, 4\)"),
        (np.full((4, 4), "a"), "pred must be an integer"),
    ],
)
def test_bad_input_is_named(pred, message):
    with pytest.raises(ValueError, match=message):
        panoptic_quality(np.zeros((4, 4), np.int32), pred)


def test_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(np.ones((2, 2), np.int32), np.ones((2, 2), np.int32), iou_threshold=-0.1)
