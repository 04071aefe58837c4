import numpy as np

from maskrcnn.inference import mean_aji


def test_mean_aji_known_answer_skips_images_without_nuclei():
    same = np.zeros((6, 6), np.int32)
    same[1:3, 1:3] = 1
    truth = np.zeros((6, 6), np.int32)
    truth[0:2, 0:2] = 7
    pred = np.zeros((6, 6), np.int32)
    pred[0:2, 0:4] = 3  # covers the true 4 px and 4 more: intersection 4, union 8
    empty, spurious = np.zeros((6, 6), np.int32), same.copy()
    assert mean_aji([same, truth, empty], [same, pred, spurious]) == 0.75
    assert np.isnan(mean_aji([empty], [spurious]))
