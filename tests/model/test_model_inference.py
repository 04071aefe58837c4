"""The model's inference options, each against its definition written out: detection masks in chunks,
test-time flips, rescoring on the refined boxes, and the box head's context."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn.config import load_config
from maskrcnn.model import build_model
from tests.model.helpers import classifier_near_half


def test_chunked_detection_masks_equal_the_direct_computation(tiny):
    config, model = tiny
    rng = np.random.default_rng(4)
    size, slots = config.data.image_size, config.model.detection_max_instances
    pyramid = model.features(jnp.asarray(rng.integers(0, 255, (2, size, size, 3)), jnp.uint8))[:4]
    yx = rng.uniform(0, size - 20, (2, slots, 2))
    boxes = jnp.asarray(np.concatenate([yx, yx + rng.uniform(4, 20, (2, slots, 2))], -1), jnp.float32)
    valid = jnp.arange(slots)[None] < jnp.array([[slots - 3], [5]])  # the first image fills every chunk
    detections = {"boxes": boxes, "classes": jnp.ones((2, slots), jnp.int32), "valid": valid}
    got = jax.jit(model.detection_masks)(pyramid, detections)
    direct = jax.nn.sigmoid(
        model.mask_head(model.roi_features(pyramid, boxes, config.model.mask_pool_size))[..., 0]
    )
    np.testing.assert_allclose(
        np.asarray(got)[np.asarray(valid)], np.asarray(direct)[np.asarray(valid)], atol=1e-5
    )


def test_test_time_flips_give_mirrored_detections_for_a_mirrored_image():
    """The four views are closed under mirroring, so the voted detections of a mirrored image are the
    mirrored detections of the image. Mapping a view's boxes or masks back wrongly (or not at all) breaks
    this: the mirrored image's views are the same four images, which would give the same, unmirrored set."""
    config = load_config("tiny")
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, test_time_flips=True, detection_min_confidence=0.05)
    )
    model = classifier_near_half(config)
    size = config.data.image_size
    images = jnp.asarray(np.random.default_rng(5).integers(0, 255, (1, size, size, 3)), jnp.uint8)
    variables = [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]
    run = jax.jit(lambda x: model.stateless_call(*variables, x)[0])  # one compile for the three calls
    plain = {k: np.asarray(v)[0] for k, v in run(images).items()}
    n = int(plain["valid"].sum())
    assert n >= 5  # the case holds detections
    for axis in (1, 2):  # top-bottom, left-right
        mirrored = {k: np.asarray(v)[0] for k, v in run(jnp.flip(images, axis)).items()}
        assert int(mirrored["valid"].sum()) == n
        expected = plain["boxes"][:n].copy()
        lo, hi = axis - 1, axis + 1  # y1, y2 or x1, x2
        expected[:, [lo, hi]] = size - plain["boxes"][:n, [hi, lo]]
        pair = [int(np.argmin(np.abs(mirrored["boxes"][:n] - b).max(axis=1))) for b in expected]
        assert sorted(pair) == list(range(n))
        np.testing.assert_allclose(mirrored["boxes"][pair], expected, atol=1e-3)
        np.testing.assert_allclose(mirrored["scores"][pair], plain["scores"][:n], atol=1e-5)
        np.testing.assert_allclose(mirrored["masks"][pair], np.flip(plain["masks"][:n], axis), atol=1e-4)


def test_rescoring_averages_the_heads_probabilities_on_each_roi_and_on_its_refined_box():
    """``model.rescore_refined_boxes`` against the two box-head passes written out: the probabilities are
    the mean of the head's on the proposal and on the box its best foreground class refines it to, and the
    deltas (so the detections' boxes) are the first pass's."""
    from maskrcnn import postprocess

    config = load_config("tiny")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, rescore_refined_boxes=True))
    model = classifier_near_half(config)
    size, pool = config.data.image_size, config.model.pool_size

    @jax.jit
    def passes(images):
        levels = model.features(images)  # P2-P6: the RPN's; P2-P5: the heads'
        proposals, _, _ = model.proposals(*model.rpn_head(levels), (size, size))
        pyramid = levels[:4]
        logits, deltas = model.classify(pyramid, proposals, (size, size))
        first, first_deltas = model.box_head(model.roi_features(pyramid, proposals, pool))
        refined = postprocess.refined_rois(first[0], first_deltas[0], proposals[0], image_size=(size, size))
        second, _ = model.box_head(model.roi_features(pyramid, refined[None], pool))
        return logits, deltas, first, first_deltas, second, refined - proposals[0]

    images = jnp.asarray(np.random.default_rng(6).integers(0, 255, (1, size, size, 3)), jnp.uint8)
    logits, deltas, first, first_deltas, second, moved = passes(images)
    assert float(jnp.abs(moved).max()) > 0.01  # the refinement moves the ROIs
    expected = (jax.nn.softmax(first, axis=-1) + jax.nn.softmax(second, axis=-1)) / 2
    np.testing.assert_allclose(jax.nn.softmax(logits, axis=-1), expected, atol=1e-6)
    # The classifier scores near a half (classifier_near_half), so the second pass moves them by 1e-5 or so:
    # ten times the tolerance above, so a rescoring that kept the first pass alone fails it.
    assert float(jnp.abs(jax.nn.softmax(first, axis=-1) - expected).max()) > 1e-5
    np.testing.assert_array_equal(deltas, first_deltas)


def test_box_context_pools_each_roi_scaled_about_its_centre(tiny):
    """``model.box_context`` 2: the box head's input is ROIAlign of the boxes made twice as large about
    their centres, worked by hand; 1 (the fixture's model) pools the boxes themselves."""
    config, plain = tiny
    model = build_model(
        dataclasses.replace(config.model, box_context=2.0), config.data.image_size, mini_masks=True
    )
    size, pool = config.data.image_size, config.model.pool_size
    rng = np.random.default_rng(4)
    pyramid = [jnp.asarray(rng.normal(size=(1, size // s, size // s, 8)), "float32") for s in (4, 8, 16, 32)]
    rois = jnp.asarray([[[10.0, 20.0, 18.0, 26.0], [40.0, 40.0, 60.0, 70.0]]])
    by_hand = jnp.asarray([[[6.0, 17.0, 22.0, 29.0], [30.0, 25.0, 70.0, 85.0]]])  # centre kept, sides x2
    np.testing.assert_allclose(
        model.box_features(pyramid, rois), model.roi_features(pyramid, by_hand, pool), atol=1e-6
    )
    np.testing.assert_array_equal(plain.box_features(pyramid, rois), plain.roi_features(pyramid, rois, pool))
    assert not np.allclose(model.box_features(pyramid, rois), plain.box_features(pyramid, rois))
