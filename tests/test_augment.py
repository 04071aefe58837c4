"""Stain and colour augmentation: the colour-deconvolution round trip, known answers, and that only the
pixels change."""

import dataclasses

import numpy as np
import pytest

from maskrcnn import augment
from maskrcnn import input_pipeline as ip
from maskrcnn.config import load_config
from tests.model.helpers import make_instances


def _he_image(rng, size=64):
    """Pink background, purple nuclei, a little noise: an H&E-like uint8 image and its label map."""
    labels = make_instances(rng, size, 6, radius=(4, 8))
    image = np.where((labels > 0)[..., None], [90, 50, 140], [230, 170, 200]).astype(float)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def test_deconvolution_round_trip_and_known_values():
    rng = np.random.default_rng(0)
    image, _ = _he_image(rng)
    np.testing.assert_allclose(augment.hed_to_rgb(augment.rgb_to_hed(image)), image, atol=1e-9)
    # White (255) is no stain at all; pure haematoxylin of density d has RGB 256 * exp(-d * h) - 1.
    np.testing.assert_allclose(augment.rgb_to_hed(np.full((1, 1, 3), 255, np.uint8)), 0.0, atol=1e-12)
    stains = np.array([[[0.8, 0.0, 0.0]]])
    np.testing.assert_allclose(augment.rgb_to_hed(augment.hed_to_rgb(stains)), stains, atol=1e-12)
    assert np.argmin(augment.hed_to_rgb(stains)[0, 0]) == 1  # haematoxylin absorbs green most: purple-blue


def test_no_strength_changes_nothing_and_draws_nothing():
    image, _ = _he_image(np.random.default_rng(1))
    rng = np.random.default_rng(5)
    assert augment.color_jitter(image, rng) is image
    assert rng.random() == np.random.default_rng(5).random()


def test_hed_jitter_follows_its_draws():
    image, _ = _he_image(np.random.default_rng(2))
    out = augment.color_jitter(image, np.random.default_rng(3), hed=0.05)
    draws = np.random.default_rng(3)
    alpha, beta = draws.uniform(0.95, 1.05, 3), draws.uniform(-0.05, 0.05, 3)
    expected = augment.hed_to_rgb(augment.rgb_to_hed(image) * alpha + beta)
    np.testing.assert_array_equal(out, np.clip(np.rint(expected), 0, 255).astype(np.uint8))
    assert np.abs(out.astype(int) - image).max() > 0


@pytest.mark.parametrize("field", ["brightness", "contrast", "saturation"])
def test_colour_factors(field):
    image, _ = _he_image(np.random.default_rng(4))
    out = augment.color_jitter(image, np.random.default_rng(6), **{field: 0.3}).astype(float)
    factor = np.random.default_rng(6).uniform(0.7, 1.3)
    luma = np.array([0.299, 0.587, 0.114])
    x = image.astype(float)
    if field == "brightness":
        expected = x * factor
    elif field == "contrast":
        mean = np.mean(x @ luma)
        expected = mean + (x - mean) * factor
    else:
        grey = (x @ luma)[..., None]
        expected = grey + (x - grey) * factor
    np.testing.assert_allclose(out, np.clip(np.rint(expected), 0, 255), atol=0)


def test_prepare_jitters_the_image_and_leaves_boxes_and_masks_alone():
    rng = np.random.default_rng(7)
    image, labels = _he_image(rng, 256)
    example = {
        "image": image,
        "instances": labels,
        "classes": (labels > 0).astype(np.uint8),
        "tissue": 0,
        "fold": 1,
        "index": 0,
    }
    base = dataclasses.replace(
        load_config("tiny").data, hed_jitter=0.0, brightness=0.0, contrast=0.0, saturation=0.0
    )
    plain = ip.prepare(example, base, np.random.default_rng(11))
    jitter = dataclasses.replace(base, hed_jitter=0.05, brightness=0.1, contrast=0.1, saturation=0.1)
    jittered = ip.prepare(example, jitter, np.random.default_rng(11))
    for key in ("boxes", "classes", "masks", "valid", "ignore_boxes", "ignore_valid"):
        np.testing.assert_array_equal(plain[key], jittered[key])
    assert np.abs(plain["image"].astype(int) - jittered["image"]).mean() > 1
    evaluation = ip.prepare(example, jitter)  # no rng: evaluation, never jittered
    np.testing.assert_array_equal(evaluation["image"], ip.prepare(example, base)["image"])
