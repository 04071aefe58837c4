import numpy as np
import pytest

from maskrcnn.evaluation import average_precision, instances_from_label_map, mean_average_precision


def disc_masks(centres, size=32, radius=4):
    yy, xx = np.mgrid[:size, :size]
    return np.stack([(yy - y) ** 2 + (xx - x) ** 2 <= radius**2 for y, x in centres])


def reference_ap(true, pred, scores, threshold):
    """Matterport's compute_matches + compute_ap, with a ground truth matched at most once."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    pred = pred[order]
    gt_match = -np.ones(len(true))
    pred_match = -np.ones(len(pred))
    for i in range(len(pred)):
        ious = []
        for t in true:
            inter = np.logical_and(pred[i], t).sum()
            union = np.logical_or(pred[i], t).sum()
            ious.append(inter / union if union else 0.0)
        for j in np.argsort(ious)[::-1]:
            if gt_match[j] > -1:
                continue
            if ious[j] < threshold:
                break
            gt_match[j], pred_match[i] = i, j
            break
    precisions = np.cumsum(pred_match > -1) / (np.arange(len(pred_match)) + 1)
    recalls = np.cumsum(pred_match > -1).astype(np.float64) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = max(precisions[i], precisions[i + 1])
    idx = np.where(recalls[:-1] != recalls[1:])[0] + 1
    return np.sum((recalls[idx] - recalls[idx - 1]) * precisions[idx])


def test_hand_worked_ap():
    true = disc_masks([(8, 8), (24, 24)])
    pred = disc_masks([(8, 8), (8, 24), (24, 24)])
    # Score order: hit (P 1, R .5), miss (P .5), hit (P 2/3, R 1): AP = .5 * 1 + .5 * 2/3.
    assert average_precision(true, pred, [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    # The miss last: both hits first, AP 1.
    assert average_precision(true, pred, [0.9, 0.1, 0.7]) == pytest.approx(1.0)


def test_a_ground_truth_is_matched_once():
    true = disc_masks([(8, 8)])
    pred = disc_masks([(8, 8), (8, 8)])
    assert average_precision(true, pred, [0.9, 0.8]) == pytest.approx(1.0)
    # Two ground truths, one found twice: recall stops at 1/2.
    true = disc_masks([(8, 8), (24, 24)])
    assert average_precision(true, pred, [0.9, 0.8]) == pytest.approx(0.5)


def test_empty_cases():
    none = np.zeros((0, 32, 32), bool)
    some = disc_masks([(8, 8)])
    assert np.isnan(average_precision(none, none, []))
    assert average_precision(none, some, [0.5]) == 0.0
    assert average_precision(some, none, []) == 0.0
    assert mean_average_precision([(none, none, []), (some, some, [1.0])]) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_on_random_images(seed):
    rng = np.random.default_rng(seed)
    true = disc_masks(rng.integers(4, 28, (6, 2)), radius=3)
    pred = disc_masks(rng.integers(4, 28, (9, 2)), radius=3)
    pred = np.concatenate([pred, np.roll(true[:4], 1, axis=2)])
    scores = rng.random(len(pred))
    for threshold in (0.5, 0.75):
        expected = reference_ap(true, pred, scores, threshold)
        assert average_precision(true, pred, scores, threshold) == pytest.approx(expected)


def test_instances_from_label_map():
    labels = np.array([[0, 9], [70000, 9]])
    stack = instances_from_label_map(labels)
    assert stack.shape == (2, 2, 2) and stack[0].sum() == 2 and stack[1][1, 0]
