import numpy as np
import pytest

from maskrcnn.evaluation import (
    COCO_IOU_THRESHOLDS,
    average_precision,
    coco_mask_ap,
    instances_from_label_map,
    label_map_from_instances,
    mask_iou,
    match_predictions,
    mean_average_precision,
)
from tests.evaluation import references as ref


def discs(centres, size=32, radius=4):
    yy, xx = np.mgrid[:size, :size]
    return np.array([(yy - y) ** 2 + (xx - x) ** 2 <= radius**2 for y, x in centres], bool).reshape(
        -1, size, size
    )


def random_image(rng, size=32):
    """True discs, and predictions: jittered copies (some twice), misses, and strays; random scores."""
    true = discs(rng.integers(3, size - 3, (int(rng.integers(0, 8)), 2)), size, radius=3)
    copies = [np.roll(t, tuple(rng.integers(-1, 2, 2)), axis=(0, 1)) for t in true if rng.random() < 0.8]
    copies += [np.roll(t, 1, axis=0) for t in true if rng.random() < 0.2]  # duplicates
    strays = discs(rng.integers(3, size - 3, (int(rng.integers(0, 4)), 2)), size, radius=3)
    pred = np.concatenate([np.zeros((0, size, size), bool), *([np.stack(copies)] if copies else []), strays])
    scores = np.round(rng.random(len(pred)), 1)  # coarse scores: ties happen
    return true, pred, scores


def test_hand_worked_ap():
    true = discs([(8, 8), (24, 24)])
    pred = discs([(8, 8), (8, 24), (24, 24)])
    # Score order: hit (P 1, R 1/2), miss (P 1/2), hit (P 2/3, R 1): AP = 1/2 * 1 + 1/2 * 2/3.
    assert average_precision(true, pred, [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    # The miss last: both hits first, AP 1.
    assert average_precision(true, pred, [0.9, 0.1, 0.7]) == pytest.approx(1.0)
    # The miss first: P 0, 1/2 (R 1/2), 2/3 (R 1): the envelope is 2/3 everywhere.
    assert average_precision(true, pred, [0.5, 0.9, 0.1]) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(match_predictions(true, pred, [0.5, 0.9, 0.1]), [-1, 0, 1])


def test_a_ground_truth_is_matched_once():
    true = discs([(8, 8), (24, 24)])
    pred = discs([(8, 8), (8, 8), (24, 24)])  # the top prediction has a duplicate
    scores = [0.9, 0.8, 0.7]
    assert average_precision(true, pred, scores) == pytest.approx(0.5 + 1 / 3)
    assert ref.matterport_ap(true, pred, scores) == pytest.approx(0.5 + 1 / 3)
    # Matterport's `gt_match[j] > 0` lets the duplicate match again: recall reaches 3/2 and AP exceeds 1.
    assert ref.matterport_ap(true, pred, scores, double_match_bug=True) > 1.0


def test_iou_exactly_at_threshold_matches():
    true = np.zeros((1, 4, 4), bool)
    true[0, :, :2] = True
    pred = np.zeros((1, 4, 4), bool)
    pred[0, :2, :2] = True  # IoU 0.5: a match for AP (>=), unlike PQ (>)
    assert average_precision(true, pred, [1.0]) == 1.0
    assert average_precision(true, pred, [1.0], iou_threshold=0.51) == 0.0


def test_empty_cases():
    none = np.zeros((0, 32, 32), bool)
    some = discs([(8, 8)])
    assert np.isnan(average_precision(none, none, []))
    assert average_precision(none, some, [0.5]) == 0.0
    assert average_precision(some, none, []) == 0.0
    assert mean_average_precision([(none, none, []), (some, some, [1.0]), (some, none, [])]) == 0.5
    assert np.isnan(mean_average_precision([(none, none, [])]))
    assert ref.matterport_ap(some, none, []) == 0.0  # Matterport agrees where it is defined


@pytest.mark.parametrize("seed", range(6))
def test_matches_matterport_on_random_images(seed):
    rng = np.random.default_rng(seed)
    for _ in range(10):
        true, pred, scores = random_image(rng)
        if len(true) == 0:
            continue  # Matterport divides by zero
        for threshold in (0.5, 0.75):
            expected = ref.matterport_ap(true, pred, scores, threshold)
            assert average_precision(true, pred, scores, threshold) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_coco_ap_matches_the_cocoeval_loops(seed):
    rng = np.random.default_rng(seed)
    images = [random_image(rng) for _ in range(8)]
    got = coco_mask_ap(images)
    expected = ref.coco_ap(images, COCO_IOU_THRESHOLDS)
    np.testing.assert_allclose(list(got["per_threshold"].values()), expected, rtol=1e-12)
    assert got["ap"] == pytest.approx(np.mean(expected), rel=1e-12)
    assert got["ap50"] == pytest.approx(expected[0]) and got["ap75"] == pytest.approx(expected[5])
    capped = coco_mask_ap(images, iou_thresholds=[0.5], max_detections=2)
    assert capped["ap"] == pytest.approx(ref.coco_ap(images, [0.5], max_dets=2)[0], rel=1e-12)
    assert np.isnan(capped["ap75"])


def test_coco_ap_without_any_detection_is_zero_and_without_truth_nan():
    true = np.zeros((2, 8, 8), bool)
    true[0, :2, :2] = true[1, 4:, 4:] = True
    none = np.zeros((0, 8, 8), bool)
    got = coco_mask_ap([(true, none, np.zeros(0)), (true[:1], none, np.zeros(0))])
    assert got["ap"] == got["ap50"] == 0.0
    assert np.isnan(coco_mask_ap([(none, true, np.ones(2))])["ap"])


def test_coco_ap_matches_pycocotools():
    coco = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    rle = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(42)
    images = [random_image(rng) for _ in range(10)]
    gts, dts = [], []
    for i, (true, pred, scores) in enumerate(images):
        for m in true:
            enc = rle.encode(np.asfortranarray(m.astype(np.uint8)))
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": 1, "segmentation": enc,
                        "area": float(m.sum()), "iscrowd": 0, "bbox": list(rle.toBbox(enc))})  # fmt: skip
        for m, s in zip(pred, scores, strict=True):
            enc = rle.encode(np.asfortranarray(m.astype(np.uint8)))
            dts.append({"image_id": i, "category_id": 1, "segmentation": enc, "score": float(s)})
    truth = coco.COCO()
    truth.dataset = {"images": [{"id": i, "height": 32, "width": 32} for i in range(len(images))],
                     "annotations": gts, "categories": [{"id": 1, "name": "nucleus"}]}  # fmt: skip
    truth.createIndex()
    evaluation = cocoeval.COCOeval(truth, truth.loadRes(dts), "segm")
    evaluation.params.maxDets = [1, 10, 1000]
    evaluation.evaluate()
    evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, 0, 0, -1]  # (T, R) at area "all", maxDets 1000
    got = coco_mask_ap(images)
    np.testing.assert_allclose(list(got["per_threshold"].values()), precision.mean(1), atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_mask_iou_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    a = np.concatenate([random_image(rng)[1], np.zeros((1, 32, 32), bool)])  # overlapping, one empty
    b = np.concatenate([random_image(rng)[0], a[:2], np.ones((1, 32, 32), bool)])
    np.testing.assert_allclose(mask_iou(a, b), ref.mask_iou(a, b), rtol=1e-15)
    assert mask_iou(a[:0], b).shape == (0, len(b)) and mask_iou(a, b[:0]).shape == (len(a), 0)


def test_mask_iou_and_conversions():
    labels = np.array([[0, 9, 9], [70000, 9, 0], [70000, 0, 0]])
    stack = instances_from_label_map(labels)
    assert stack.shape == (2, 3, 3) and stack[0].sum() == 3 and stack[1][2, 0]
    np.testing.assert_array_equal(label_map_from_instances(stack), (labels == 9) + 2 * (labels == 70000))
    np.testing.assert_allclose(mask_iou(stack, stack[:1]), [[1.0], [0.0]])
    overlapping = np.stack([labels > 0, labels == 9])
    np.testing.assert_array_equal(label_map_from_instances(overlapping, scores=[0.1, 0.9]),
                                  np.where(labels == 9, 2, labels > 0))  # fmt: skip
    assert label_map_from_instances(np.zeros((0, 3, 3), bool)).shape == (3, 3)


def test_bad_input_is_named():
    some = discs([(8, 8)])
    with pytest.raises(ValueError, match=r"got 2 pred_scores for 1 predicted masks"):
        average_precision(some, some, [0.1, 0.2])
    with pytest.raises(ValueError, match=r"true_instances must be a boolean \(N, H, W\) mask stack"):
        average_precision(some[0], some, [0.1])
    with pytest.raises(ValueError, match="differ in image size"):
        average_precision(some, discs([(8, 8)], size=16), [0.1])
