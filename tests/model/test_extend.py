"""The README's "change the architecture" recipes, run: a new loss term and a swapped backbone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn import losses
from maskrcnn.config import StageConfig, load_config
from maskrcnn.model import MaskRCNN
from maskrcnn.model.backbone import build_resnet
from maskrcnn.train.step import (
    decay_mask,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    trainable_mask,
)
from tests.model.helpers import batch_from_labels, make_instances


def test_dice_loss_known_answers():
    target = np.zeros((1, 1, 4, 4), np.float32)
    target[..., :2, :2] = 1  # 4 pixels
    classes, positive = np.ones((1, 1), np.int32), np.ones((1, 1), bool)
    sure = np.where(target > 0, 50.0, -50.0)[..., None]
    assert float(losses.mask_dice_loss(sure, target, classes, positive)) == pytest.approx(0.0, abs=1e-6)
    unsure = np.zeros((1, 1, 4, 4, 1), np.float32)  # p = 0.5 everywhere: Dice (2*2 + 1) / (8 + 4 + 1)
    assert float(losses.mask_dice_loss(unsure, target, classes, positive)) == pytest.approx(1 - 5 / 13)
    assert float(losses.mask_dice_loss(unsure, target, classes, ~positive)) == 0.0


class DiceMaskRCNN(MaskRCNN):
    def loss_parts(self, out):
        parts = super().loss_parts(out)
        n = out["num_pos"]
        rois = out["rois"]
        parts["mask_dice"] = losses.mask_dice_loss(
            out["mask_logits"], rois["masks"][:, :n], rois["classes"][:, :n], rois["positive"][:, :n]
        )
        return parts


def test_an_added_loss_term_is_trained():
    config = load_config("tiny")
    size = 64
    model = DiceMaskRCNN(config.model, backbone=build_resnet("tiny", width=8))
    model.build((None, size, size, 3))
    rng = np.random.default_rng(0)
    batch = batch_from_labels([make_instances(rng, size, 3, (3, 6)) for _ in range(2)], 16, 14)
    mask = trainable_mask(model, "all")
    schedule = learning_rate_schedule(StageConfig("all", "all", 1, 1e-2), 1)
    optimizer = make_optimizer(config.train, schedule, decay_mask(model))
    step = make_train_step(model, optimizer, mask, schedule)
    _, metrics = step(init_state(model, optimizer, mask), batch, jax.random.PRNGKey(0))
    assert "mask_dice" in metrics and 0 <= float(metrics["mask_dice"]) <= 1
    parts = ("rpn_class", "rpn_box", "class", "box", "mask", "mask_dice")
    np.testing.assert_allclose(metrics["loss"], sum(float(metrics[k]) for k in parts), rtol=1e-5)
    assert jnp.isfinite(metrics["grad_norm"])
