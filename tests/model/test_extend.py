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
from maskrcnn.train.step import prepare_stage
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


def _five_class_tiny():
    config = load_config("tiny")
    return apply_overrides(config, ["data.variant=all_classes"])


@pytest.mark.slow  # a full compile of its own; the math is unit-tested elsewhere
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
    stage = prepare_stage(model, config.train, StageConfig("all", "all", 1, 1e-2), 1)
    _, metrics = stage.step(stage.state, batch, jax.random.PRNGKey(0))
    assert bool(metrics["finite"]) and float(metrics["mask"]) > 0 and float(metrics["box"]) >= 0
    detections = model(batch["image"])
    assert np.isfinite(np.asarray(detections["masks"])).all()


def test_heads_that_do_not_fit_the_classes_are_refused_when_built():
    from maskrcnn.model import MaskHead, build_model

    config = _five_class_tiny()
    with pytest.raises(ValueError, match=r"the mask head gives masks \(28, 28, 3\), expected \(28, 28, 5\)"):
        build_model(config.model, 64, mask_head=MaskHead(3, width=16))


@pytest.mark.slow  # a training run with validation (the log itself: tests/train/test_log.py)
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


def _rebuilt_from_the_run(config, model, workdir):
    """``model`` saved as a run of ``config`` in ``workdir`` and loaded back as `maskrcnn evaluate` and
    `predict` do: the config and the model they rebuild, its weights checked equal to ``model``'s."""
    from maskrcnn.train.workdir import CONFIG_FILE, load_trained, save_weights

    workdir.mkdir()
    (workdir / CONFIG_FILE).write_text(config.to_json())
    save_weights(model, str(workdir))
    loaded_config, loaded = load_trained(str(workdir))
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    return loaded_config, loaded


def test_a_deeper_resnet_in_a_config_file_is_rebuilt_from_the_run_alone(tmp_path):
    # The README's ResNet152 recipe at test size: blocks per stage in the config, no global table edit.
    from maskrcnn.model import build_model

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
    loaded_config, _ = _rebuilt_from_the_run(config, model, tmp_path / "run")
    assert loaded_config.model.backbone_blocks == (1, 2, 3, 1)


def test_a_backbone_named_by_import_path_is_rebuilt_from_the_run_alone(tmp_path):
    # The fast half of the slow test below: no training, the same rebuild from the run's config.json.
    from maskrcnn.model import build_model

    config = apply_overrides(load_config("tiny"), ["model.backbone=tests.model.plain_backbone:build"])
    model = build_model(config.model, config.data.image_size)
    _, loaded = _rebuilt_from_the_run(config, model, tmp_path / "run")
    assert model.backbone.name == loaded.backbone.name == "plain"


# ------------------------------------------------------------------------------------ the backbone contract
def test_stages_train_the_groups_a_backbone_declares_and_a_groupless_one_trains_whole():
    from maskrcnn.model import build_model
    from maskrcnn.model.backbone import declare
    from maskrcnn.train.step import trainable_mask
    from tests.model import plain_backbone

    config = load_config("tiny")
    model = build_model(config.model, 64, backbone=plain_backbone.build())
    group_of = {id(v): 1 + int(v.path.split("/")[-2][4]) // 2 for v in model.backbone.weights}
    variables = model.trainable_variables
    for layers, trains in (("heads", lambda g: False), ("2+", lambda g: g >= 2), ("all", lambda g: True)):
        mask = trainable_mask(model, layers)
        for v, m in zip(variables, mask, strict=True):
            assert m == (trains(group_of[id(v)]) if id(v) in group_of else True), (layers, v.path)
    with pytest.raises(ValueError, match="has no group 3; its groups are \\[1, 2\\]"):
        trainable_mask(model, "3+")
    whole = plain_backbone.build()
    whole = declare(whole, strides=whole.feature_strides)  # no groups: trains only as a whole
    model = build_model(config.model, 64, backbone=whole)
    with pytest.raises(ValueError, match="plain declares none, so train it with 'heads' or 'all'"):
        trainable_mask(model, "4+")


def test_the_feature_strides_come_from_the_backbone():
    import dataclasses

    from maskrcnn.model import build_model
    from tests.model import plain_backbone

    config = load_config("tiny")
    coarse = plain_backbone.build(first_stride=8)
    with pytest.raises(ValueError, match=r"set model.anchor_strides=\(8, 16, 32, 64, 128\)"):
        build_model(config.model, 128, backbone=coarse)
    m = dataclasses.replace(
        config.model, anchor_strides=(8, 16, 32, 64, 128), anchor_scales=(16, 32, 64, 128, 256)
    )
    model = build_model(m, 128, backbone=coarse)
    assert model.feature_strides == (8, 16, 32, 64)
    # ROI pooling reads the declared strides: a 112 px box (FPN level 4 + log2(112 / 224) = 3) pools from
    # the map of stride 8, this backbone's first (it would be the second of a ResNet's).
    pyramid = [jnp.full((1, 128 // s, 128 // s, 2), i + 1.0) for i, s in enumerate(model.feature_strides)]
    pooled = model.roi_features(pyramid, jnp.array([[[0.0, 0.0, 112.0, 112.0]]]), 2)
    np.testing.assert_allclose(pooled, 1.0)
    with pytest.raises(ValueError, match="does not declare its feature strides"):
        build_model(config.model, 64, backbone=keras.Model(coarse.inputs, coarse.outputs, name="bare"))


@pytest.mark.slow  # two train-step compiles (40 s on 2 cores); its rebuild half is the fast test above
def test_a_backbone_named_in_a_config_file_trains_heads_then_all_and_is_rebuilt(tmp_path):
    # The contract end to end: a non-ResNet backbone named by import path in a config file trains in the
    # heads and the all stage, and `maskrcnn evaluate` / `predict` rebuild it from the run's config.json.
    import csv

    from maskrcnn.train.loop import train
    from maskrcnn.train.workdir import load_trained
    from tests.model import plain_backbone

    config = tiny_training_config(
        [StageConfig("heads", "heads", 1, 1e-2), StageConfig("all", "all", 1, 1e-2)], steps_per_epoch=1
    )
    config = apply_overrides(config, ["model.backbone=tests.model.plain_backbone:build"])
    model = train(config, str(tmp_path), validate=False, progress=False)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["stage"] for r in rows] == ["0", "1"] and all(np.isfinite(float(r["loss"])) for r in rows)
    keras.utils.set_random_seed(config.train.seed)  # the initial weights train started from
    initial = plain_backbone.build()
    pairs = zip(initial.weights, model.backbone.weights, strict=True)
    assert any(not np.array_equal(a.value, b.value) for a, b in pairs), "the all stage left the backbone"
    _, loaded = load_trained(str(tmp_path))
    assert loaded.backbone.name == "plain"
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))


@pytest.mark.slow  # MobileNetV2's train steps compile for about a minute on 2 cores
def test_a_keras_applications_backbone_trains_in_the_heads_and_all_stages():
    # The README's recipe: any Keras model becomes a backbone by naming four of its layers.
    from maskrcnn.model import build_model
    from maskrcnn.model.backbone import from_layers

    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3), alpha=0.35
    )
    backbone = from_layers(base, ["block_2_add", "block_5_add", "block_12_add", "out_relu"])
    assert backbone.feature_strides == (4, 8, 16, 32)
    config = load_config("tiny")
    model = build_model(config.model, 64, backbone=backbone)
    rng = np.random.default_rng(0)
    batch = batch_from_labels([make_instances(rng, 64, 3, (3, 6)) for _ in range(2)], 16, 14)
    for layers in ("heads", "all"):
        stage = prepare_stage(model, config.train, StageConfig(layers, layers, 1, 1e-2), 1)
        before = [np.asarray(v) for v in stage.state.trained]
        state, metrics = stage.step(stage.state, batch, jax.random.PRNGKey(0))
        assert bool(metrics["finite"]), layers
        changed = [not np.array_equal(a, np.asarray(b)) for a, b in zip(before, state.trained, strict=True)]
        assert any(changed), layers
        in_backbone = {id(v) for v in model.backbone.weights}
        pairs = zip(model.trainable_variables, stage.mask, strict=True)
        trained = [m for v, m in pairs if id(v) in in_backbone]
        assert any(trained) == (layers == "all") and (all(trained) or not any(trained))
