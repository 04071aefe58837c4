"""The classical baseline: known answers on drawn nuclei, and tuning that never does worse than its start."""

import dataclasses

import numpy as np
import pytest

from maskrcnn import baseline, pannuke
from maskrcnn.evaluation import panoptic_quality
from maskrcnn.synthetic import make_fold

BACKGROUND = (235, 200, 225)  # eosin-pink
NUCLEUS = (70, 45, 130)  # haematoxylin blue-purple


def draw(discs, size=96):
    """An H&E-coloured image and its instance map with one disc per (row, col, radius)."""
    yy, xx = np.mgrid[:size, :size]
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BACKGROUND
    truth = np.zeros((size, size), np.int32)
    for k, (r, c, radius) in enumerate(discs, start=1):
        inside = (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
        image[inside] = NUCLEUS
        truth[inside & (truth == 0)] = k
    return image, truth


def test_separate_nuclei_are_found_one_each():
    image, truth = draw([(20, 20, 8), (60, 70, 10), (75, 20, 6)])
    labels, scores = baseline.segment(image, baseline.Params(sigma=1.0, min_distance=5, min_size=20))
    assert labels.max() == 3 and scores.shape == (3,)
    quality = panoptic_quality(truth, labels)
    assert quality.tp == 3 and quality.fp == 0 and quality.sq > 0.85


def test_touching_nuclei_are_split_by_the_watershed():
    image, truth = draw([(48, 36, 12), (48, 58, 12)])  # centres 22 px apart: the discs overlap
    assert len(np.unique(truth)) == 3
    labels, _ = baseline.segment(image, baseline.Params(sigma=1.0, min_distance=7, min_size=20))
    quality = panoptic_quality(truth, labels)
    assert labels.max() == 2 and quality.tp == 2


def test_small_objects_are_dropped_and_a_blank_image_has_no_nuclei():
    image, _ = draw([(30, 30, 10), (70, 70, 2)])  # the second is 13 px
    labels, _ = baseline.segment(image, baseline.Params(sigma=0.5, min_size=20))
    assert labels.max() == 1 and labels[30, 30] == 1 and labels[70, 70] == 0
    blank = np.full((64, 64, 3), BACKGROUND, np.uint8)
    labels, scores = baseline.segment(blank)
    assert labels.max() == 0 and scores.size == 0


def test_darker_nuclei_score_higher():
    image, truth = draw([(25, 25, 9), (70, 70, 9)])
    image[truth == 2] = (110, 90, 160)  # paler
    labels, scores = baseline.segment(image, baseline.Params(sigma=0.5, threshold_factor=0.7))
    assert labels.max() == 2
    dark, pale = labels[25, 25] - 1, labels[70, 70] - 1
    assert scores[dark] > scores[pale]


def test_tuning_searches_the_space_and_never_ends_below_its_start():
    images, masks, _ = make_fold(6, seed=5)
    images = [np.clip(np.rint(i), 0, 255).astype(np.uint8) for i in images]
    truths = [pannuke.instance_and_class_maps(m)[0] for m in masks]
    space = {"sigma": (0.5, 1.0), "threshold_factor": (0.8, 1.0), "min_size": (20,), "min_distance": (3, 6)}
    start = baseline.Params(sigma=1.0, threshold_factor=1.0, min_size=20, min_distance=6)
    best, history = baseline.tune(images, truths, space=space, start=start)
    scores = dict(history)
    assert scores[best] == max(scores.values()) >= scores[start]
    assert best.sigma in space["sigma"] and best.min_distance in space["min_distance"]
    assert scores[best] == pytest.approx(baseline.mean_pq(images, truths, best))
    assert all(dataclasses.asdict(p)["min_size"] == 20 for p in scores)


def test_bad_image_is_named():
    with pytest.raises(ValueError, match="RGB image"):
        baseline.segment(np.zeros((8, 8), np.uint8))
