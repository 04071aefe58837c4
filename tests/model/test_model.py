import dataclasses
import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from maskrcnn import losses, targets
from maskrcnn.config import StageConfig, load_config
from maskrcnn.model import (
    LOSS_NAMES,
    MaskRCNN,
    build_model,
    build_resnet,
    detections_to_label_maps,
    load_keras_applications_weights,
)
from maskrcnn.ops import generate_anchors
from tests.model.helpers import batch_from_labels, make_instances

STAGE_OUTPUTS = {
    "resnet50": ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"],
    "resnet101": ["conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"],
}


def tiny_batch(config, counts=(5, 3), seed=0):
    rng = np.random.default_rng(seed)
    size = config.data.image_size
    labels = [make_instances(rng, size, n) for n in counts]
    return batch_from_labels(labels, config.data.max_instances, config.data.mini_mask_size, rng), labels


@pytest.mark.parametrize(
    "name,application",
    [("resnet50", "ResNet50"), pytest.param("resnet101", "ResNet101", marks=pytest.mark.slow)],
)
def test_backbone_matches_keras_applications(name, application):
    reference = getattr(keras.applications, application)(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    rng = np.random.default_rng(1)
    # Non-trivial batch-norm statistics, so that a mis-mapped layer cannot go unnoticed.
    for layer in reference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 1.5, var.shape),
                ]
            )
    ours = build_resnet(name)
    assert load_keras_applications_weights(ours, reference) == sum(1 for lay in ours.layers if lay.weights)
    taps = keras.Model(reference.input, [reference.get_layer(n).output for n in STAGE_OUTPUTS[name]])
    x = rng.normal(0, 50, (2, 64, 64, 3)).astype("float32")
    for got, want in zip(ours(x, training=False), taps(x, training=False), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_stage_shapes(tiny):
    config, model = tiny
    cfg = config.model
    size = config.data.image_size
    images = jnp.zeros((2, size, size, 3), jnp.uint8)

    @jax.jit  # one compile of all the stages instead of one per eager op
    def stages(images):
        pyramid = model.features(images)
        return model.backbone(images.astype("float32")), pyramid, model.rpn_head(pyramid), model(images)

    c2_c5, pyramid, (logits, deltas), detections = stages(images)
    width = cfg.backbone_width
    for i, c in enumerate(c2_c5):
        assert c.shape == (2, size // 2 ** (i + 2), size // 2 ** (i + 2), 4 * width * 2**i)
    assert [p.shape for p in pyramid] == [
        (2, size // s, size // s, cfg.fpn_channels) for s in (4, 8, 16, 32, 64)
    ]
    num_anchors = generate_anchors(
        (size, size),
        strides=cfg.anchor_strides,
        scales=cfg.anchor_scales,
        ratios=cfg.anchor_ratios,
        octaves=cfg.anchor_octaves,
    ).shape[0]
    assert num_anchors == sum((size // s) ** 2 for s in cfg.anchor_strides) * 9  # 3 octaves x 3 ratios
    assert logits.shape == (2, num_anchors, 2) and deltas.shape == (2, num_anchors, 4)
    d = cfg.detection_max_instances
    assert detections["boxes"].shape == (2, d, 4)
    assert detections["masks"].shape == (2, d, cfg.mask_size, cfg.mask_size)
    assert detections["scores"].shape == detections["classes"].shape == detections["valid"].shape == (2, d)
    labels = detections_to_label_maps(detections, (64, 64), scale=size / 64)  # 2 model px per output px
    assert labels.shape == (2, 64, 64) and labels.dtype == jnp.int32


def _losses(model, batch, key, trainable=None):
    trainable = trainable if trainable is not None else [v.value for v in model.trainable_variables]
    parts, _ = model.stateless_call(
        trainable,
        [v.value for v in model.non_trainable_variables],
        batch["image"],
        batch,
        key=key,
        training=True,
    )
    return parts


def test_gradient_reaches_every_trainable_variable(tiny):
    config, model = tiny
    batch, _ = tiny_batch(config)

    def total(trainable):
        parts = _losses(model, batch, jax.random.PRNGKey(0), trainable)
        return sum(parts[n] for n in LOSS_NAMES)

    grads = jax.jit(jax.grad(total))([v.value for v in model.trainable_variables])
    norms = {v.path: float(jnp.linalg.norm(g)) for v, g in zip(model.trainable_variables, grads, strict=True)}
    assert all(np.isfinite(n) for n in norms.values())
    dead = [path for path, n in norms.items() if n == 0.0]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.slow  # a full compile of its own; the math is unit-tested elsewhere
def test_empty_ground_truth_gives_finite_losses(tiny):
    config, model = tiny
    batch, _ = tiny_batch(config)
    empty = {**batch, "valid": np.zeros_like(batch["valid"]), "classes": np.zeros_like(batch["classes"])}
    empty["boxes"] = np.zeros_like(batch["boxes"])
    parts = jax.jit(lambda b: _losses(model, b, jax.random.PRNGKey(0)))(empty)
    assert set(parts) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        assert np.isfinite(float(parts[name])), name
    assert float(parts["box"]) == 0.0 and float(parts["mask"]) == 0.0 and float(parts["rpn_box"]) == 0.0
    # Negatives still train the classifiers (a random init may already give background p = 1: loss 0).
    assert float(parts["rpn_class"]) > 0.0 and float(parts["class"]) >= 0.0
    grads = jax.jit(
        jax.grad(lambda t: sum(_losses(model, empty, jax.random.PRNGKey(0), t)[n] for n in LOSS_NAMES))
    )([v.value for v in model.trainable_variables])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_losses_are_deterministic_given_the_key(tiny):
    config, model = tiny
    batch, _ = tiny_batch(config)
    fn = jax.jit(lambda b, k: _losses(model, b, k))
    a, b = fn(batch, jax.random.PRNGKey(3)), fn(batch, jax.random.PRNGKey(3))
    assert all(float(a[n]) == float(b[n]) for n in LOSS_NAMES)


@pytest.mark.slow  # an eager forward pass; the contract tests in test_extend.py swap parts too
def test_swapping_a_part_is_a_constructor_argument():
    config = load_config("tiny")
    from maskrcnn.model import MaskHead

    head = MaskHead(config.model.num_classes, width=16, name="my_mask_head")
    model = build_model(config.model, config.data.image_size, mask_head=head)
    assert model.mask_head is head
    detections = model(jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.uint8))
    assert detections["masks"].shape[-1] == config.model.mask_size


def test_image_size_must_be_a_multiple_of_64(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="multiple of 64"):
        model(jnp.zeros((1, 96, 96, 3), jnp.uint8))


@pytest.mark.slow
def test_tiny_model_fits_a_handful_of_images():
    """A tiny model trained for a few hundred steps on four images segments them with PQ > 0.8."""
    from maskrcnn.evaluation import panoptic_quality
    from maskrcnn.train.step import prepare_stage, write_state

    config = load_config("tiny")
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, detection_min_confidence=0.5),
        train=dataclasses.replace(config.train, lr_per_step=True),
    )
    model = build_model(config.model, config.data.image_size)
    batch, labels = tiny_batch(config, counts=(6, 4, 8, 5), seed=7)
    steps = 300
    stage = StageConfig("all", "all", epochs=1, learning_rate=0.02)
    mask, _, _, state, step = prepare_stage(model, config.train, stage, steps)
    key = jax.random.PRNGKey(0)
    history = []
    for i in range(steps):
        state, metrics = step(state, batch, jax.random.fold_in(key, i))
        history.append(float(metrics["loss"]))
    assert np.mean(history[-20:]) < 0.5 * np.mean(history[:20])
    write_state(model, state, mask)
    predicted = np.asarray(detections_to_label_maps(model(batch["image"]), labels[0].shape))
    pq = [panoptic_quality(t, p).pq for t, p in zip(labels, predicted, strict=True)]
    assert np.mean(pq) > 0.8, (pq, history[-5:])


def test_get_config_and_from_config_round_trip(tiny):
    config, model = tiny
    again = MaskRCNN.from_config(model.get_config())
    assert again.config == model.config and again.mini_masks == model.mini_masks
    again.build((None, config.data.image_size, config.data.image_size, 3))
    assert [v.shape for v in again.weights] == [v.shape for v in model.weights]


@pytest.mark.parametrize("positive_iou,shifted_positive", [(0.5, False), (0.4, True)])
def test_roi_positive_iou_decides_which_sampled_rois_are_foreground(tiny, positive_iou, shifted_positive):
    # Each nucleus offered as a proposal shifted sideways by 0.38 of its width (box IoU 0.45 with it), and
    # as itself (add_gt_as_proposals): at 0.5 only the boxes themselves are foreground, at 0.4 both.
    config, _ = tiny
    model = build_model(
        dataclasses.replace(config.model, roi_positive_iou=positive_iou),
        config.data.image_size,
        mini_masks=True,
    )
    batch, _ = tiny_batch(config, counts=(5, 3))
    boxes, valid = np.asarray(batch["boxes"]), np.asarray(batch["valid"])
    width = boxes[..., 3] - boxes[..., 1]
    shift = 0.38 * width
    shifted = boxes + np.stack([0 * shift, shift, 0 * shift, shift], axis=-1)
    iou = (width[valid] - shift[valid]) / (width[valid] + shift[valid])  # equal heights: overlap / union in x
    assert np.all((iou > 0.44) & (iou < 0.46))
    proposals = np.zeros((2, config.model.post_nms_rois_training, 4), np.float32)
    proposals[:, : boxes.shape[1]] = shifted
    proposal_valid = np.zeros(proposals.shape[:2], bool)
    proposal_valid[:, : boxes.shape[1]] = valid
    size = (config.data.image_size,) * 2
    # Jitted: one compile instead of thousands of small eager ops.
    rois = jax.jit(lambda *a: model.training_targets(*a, size)[2])(
        jnp.asarray(proposals), jnp.asarray(proposal_valid), batch, jax.random.PRNGKey(0)
    )
    nuclei = valid.sum(axis=1)
    expected = nuclei * (2 if shifted_positive else 1)
    np.testing.assert_array_equal(np.asarray(rois["positive"]).sum(axis=1), expected)
    np.testing.assert_array_equal(np.asarray(rois["valid"]).sum(axis=1), 2 * nuclei)
    assert (np.asarray(rois["classes"]) > 0).sum() == expected.sum()


def test_focal_rpn_loss_trains_every_labelled_anchor(tiny):
    """``model.rpn_loss`` "focal": the RPN's labels are the assignment's own, every anchor it labels (the
    sampled default keeps ``rpn_train_anchors_per_image`` of them a tile), and its class loss is the focal
    loss of the RPN's logits over them."""
    config, plain = tiny
    model = build_model(
        dataclasses.replace(config.model, rpn_loss="focal"), config.data.image_size, mini_masks=True
    )
    batch, _ = tiny_batch(config)
    size = (config.data.image_size,) * 2
    proposals = np.zeros((2, config.model.post_nms_rois_training, 4), np.float32)
    proposal_valid = np.zeros(proposals.shape[:2], bool)
    args = (jnp.asarray(proposals), jnp.asarray(proposal_valid), batch, jax.random.PRNGKey(0))

    def rpn_labels(m):  # jitted: one compile instead of thousands of small eager ops
        return np.asarray(jax.jit(lambda *a: m.training_targets(*a, size)[0])(*args))

    labels = rpn_labels(model)
    assign = jax.jit(
        jax.vmap(
            functools.partial(targets.assign_anchors, model.anchors(size), **model.anchor_assignment(size))
        )
    )
    positive, negative, _ = assign(batch["boxes"], batch["valid"])
    np.testing.assert_array_equal(labels, np.where(positive, 1, np.where(negative, -1, 0)))
    assert (labels != 0).sum(axis=1).min() > config.model.rpn_train_anchors_per_image
    sampled = rpn_labels(plain)
    assert ((sampled != 0).sum(axis=1) == config.model.rpn_train_anchors_per_image).all()
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(*labels.shape, 2)), "float32")
    no_rois = {"classes": jnp.zeros((2, 1), "int32"), "valid": jnp.zeros((2, 1), bool)}
    no_rois |= {
        "positive": jnp.zeros((2, 1), bool),
        "deltas": jnp.zeros((2, 1, 4)),
        "masks": jnp.zeros((2, 1, 2, 2)),
    }
    out = {
        "rpn_logits": logits,
        "rpn_labels": jnp.asarray(labels),
        "rpn_deltas": jnp.zeros((*labels.shape, 4)),
    }
    out |= {"rpn_target_deltas": jnp.zeros((*labels.shape, 4)), "rois": no_rois, "num_pos": 1}
    out |= {"class_logits": jnp.zeros((2, 1, 2)), "box_deltas": jnp.zeros((2, 1, 1, 4))}
    out["mask_logits"] = jnp.zeros((2, 1, 2, 2, 1))
    focal = float(losses.rpn_focal_loss(logits, out["rpn_labels"]))
    assert float(model.loss_parts(out)["rpn_class"]) == pytest.approx(focal, rel=1e-6)
    assert float(plain.loss_parts(out)["rpn_class"]) != pytest.approx(focal, rel=1e-3)
