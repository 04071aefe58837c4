"""The README's "change the architecture" recipes, run: a new loss term and a swapped backbone."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from maskrcnn import losses
from maskrcnn.config import StageConfig, apply_overrides, load_config
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
from tests.model.helpers import batch_from_labels, make_instances, tiny_training_config


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


def _five_class_tiny():
    config = load_config("tiny")
    return apply_overrides(config, ["data.variant=all_classes"])


def test_a_class_agnostic_mask_and_box_head_train_and_detect():
    from maskrcnn.model import MaskHead, build_model

    config = _five_class_tiny()
    m = config.model

    class AgnosticBoxHead(keras.layers.Layer):  # class logits, and one set of box deltas for all classes
        def __init__(self, **kw):
            super().__init__(**kw)
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.logits = keras.layers.Dense(m.num_classes + 1)
            self.deltas = keras.layers.Dense(4)

        def call(self, pooled, training=False):
            batch, rois = keras.ops.shape(pooled)[0], keras.ops.shape(pooled)[1]
            x = self.hidden(keras.ops.reshape(pooled, (batch, rois, -1)))
            return self.logits(x), keras.ops.reshape(self.deltas(x), (batch, rois, 1, 4))

    model = build_model(
        m, 64, mask_head=MaskHead(1, width=16, name="mask_head"), box_head=AgnosticBoxHead(name="box_head")
    )
    rng = np.random.default_rng(0)
    batch = batch_from_labels([make_instances(rng, 64, 3, (3, 6)) for _ in range(2)], 16, 14)
    batch["classes"] = np.where(batch["valid"], 4, 0).astype(np.int32)  # class 4 of 5: beyond one channel
    mask = trainable_mask(model, "all")
    schedule = learning_rate_schedule(StageConfig("all", "all", 1, 1e-2), 1)
    optimizer = make_optimizer(config.train, schedule, decay_mask(model))
    step = make_train_step(model, optimizer, mask, schedule)
    _, metrics = step(init_state(model, optimizer, mask), batch, jax.random.PRNGKey(0))
    assert bool(metrics["finite"]) and float(metrics["mask"]) > 0 and float(metrics["box"]) >= 0
    detections = model(batch["image"])
    assert np.isfinite(np.asarray(detections["masks"])).all()


def test_heads_that_do_not_fit_the_classes_are_refused_when_built():
    from maskrcnn.model import MaskHead, build_model

    config = _five_class_tiny()
    with pytest.raises(ValueError, match=r"the mask head gives masks \(28, 28, 3\), expected \(28, 28, 5\)"):
        build_model(config.model, 64, mask_head=MaskHead(3, width=16))


def test_an_added_loss_term_is_logged_and_validated(tmp_path):
    import csv

    from maskrcnn.train.loop import train

    config = tiny_training_config([StageConfig("all", "all", 1, 1e-2)], steps_per_epoch=2)
    model = DiceMaskRCNN(config.model, backbone=build_resnet("tiny", width=8))
    model.build((None, 64, 64, 3))
    train(config, str(tmp_path), model=model, progress=False)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"train", "validation"} == {r["split"] for r in rows}
    for row in rows:
        assert 0 <= float(row["mask_dice"]) <= 1, row
        parts = ("rpn_class", "rpn_box", "class", "box", "mask", "mask_dice")
        assert float(row["loss"]) == pytest.approx(sum(float(row[k]) for k in parts), rel=1e-4)


def test_a_deeper_resnet_in_a_config_file_is_rebuilt_from_the_run_alone(tmp_path):
    # The README's ResNet152 recipe at test size: blocks per stage in the config, no global table edit.
    from maskrcnn.model import build_model
    from maskrcnn.train.loop import load_trained

    path = tmp_path / "deeper.py"
    path.write_text(
        "import dataclasses\nfrom maskrcnn.config import load_config\n\n"
        "def get_config():\n    base = load_config('tiny')\n"
        "    model = dataclasses.replace(\n"
        "        base.model, backbone='resnet_deeper', backbone_blocks=(1, 2, 3, 1))\n"
        "    return dataclasses.replace(base, name='deeper', model=model)\n"
    )
    config = load_config(str(path))
    model = build_model(config.model, config.data.image_size)
    names = {layer.name for layer in model.backbone.layers}
    assert "conv4_block3_out" in names and "conv4_block4_out" not in names and "conv3_block2_out" in names
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json())
    model.save_weights(str(workdir / "model.weights.h5"))
    loaded_config, loaded = load_trained(str(workdir))  # as `maskrcnn evaluate` / `predict` do
    assert loaded_config.model.backbone_blocks == (1, 2, 3, 1)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
