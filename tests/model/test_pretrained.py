"""Initial weights from Matterport's Keras 2 files and keras.applications' ImageNet ResNets.

Neither real file can be downloaded here, so the tests write files in exactly the layout Keras 2's
``save_weights`` produced (root ``layer_names``, one group per layer with ``weight_names``, weights stored
under their names, weightless layers present with an empty list, Matterport's RPN as a nested model) under
Matterport's names, through a name table written out by hand below rather than the loader's translation.
"""

import dataclasses
import types
import urllib.error

import h5py
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras import layers

from maskrcnn.cli import main as cli
from maskrcnn.config import ModelConfig, load_config
from maskrcnn.model import build_model, build_resnet
from maskrcnn.model.pretrained import initialize, read_keras2_weights

# Our tiny backbone's layers (one bottleneck per stage) and Matterport's names for them (resnet_graph:
# conv_block "a"; branch1 is the shortcut, 2a/2b/2c the bottleneck's three convolutions).
TINY_BACKBONE_NAMES = {
    "conv1_conv": "conv1",
    "conv1_bn": "bn_conv1",
    "conv2_block1_0_conv": "res2a_branch1",
    "conv2_block1_0_bn": "bn2a_branch1",
    "conv2_block1_1_conv": "res2a_branch2a",
    "conv2_block1_1_bn": "bn2a_branch2a",
    "conv2_block1_2_conv": "res2a_branch2b",
    "conv2_block1_2_bn": "bn2a_branch2b",
    "conv2_block1_3_conv": "res2a_branch2c",
    "conv2_block1_3_bn": "bn2a_branch2c",
    "conv3_block1_0_conv": "res3a_branch1",
    "conv3_block1_0_bn": "bn3a_branch1",
    "conv3_block1_1_conv": "res3a_branch2a",
    "conv3_block1_1_bn": "bn3a_branch2a",
    "conv3_block1_2_conv": "res3a_branch2b",
    "conv3_block1_2_bn": "bn3a_branch2b",
    "conv3_block1_3_conv": "res3a_branch2c",
    "conv3_block1_3_bn": "bn3a_branch2c",
    "conv4_block1_0_conv": "res4a_branch1",
    "conv4_block1_0_bn": "bn4a_branch1",
    "conv4_block1_1_conv": "res4a_branch2a",
    "conv4_block1_1_bn": "bn4a_branch2a",
    "conv4_block1_2_conv": "res4a_branch2b",
    "conv4_block1_2_bn": "bn4a_branch2b",
    "conv4_block1_3_conv": "res4a_branch2c",
    "conv4_block1_3_bn": "bn4a_branch2c",
    "conv5_block1_0_conv": "res5a_branch1",
    "conv5_block1_0_bn": "bn5a_branch1",
    "conv5_block1_1_conv": "res5a_branch2a",
    "conv5_block1_1_bn": "bn5a_branch2a",
    "conv5_block1_2_conv": "res5a_branch2b",
    "conv5_block1_2_bn": "bn5a_branch2b",
    "conv5_block1_3_conv": "res5a_branch2c",
    "conv5_block1_3_bn": "bn5a_branch2c",
}
FPN = ["fpn_c5p5", "fpn_c4p4", "fpn_c3p3", "fpn_c2p2", "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5"]
RPN = ["rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"]  # inside the nested "rpn_model"
BOX_HEAD = ["mrcnn_class_conv1", "mrcnn_class_bn1", "mrcnn_class_conv2", "mrcnn_class_bn2"]
CLASS_LAYERS = ["mrcnn_class_logits", "mrcnn_bbox_fc"]
MASK_HEAD = [f"mrcnn_mask_{kind}{i}" for i in (1, 2, 3, 4) for kind in ("conv", "bn")] + ["mrcnn_mask_deconv"]
# Weightless layers Keras 2 also lists (with an empty weight_names): a few of Matterport's.
WEIGHTLESS = ["input_image", "zero_padding2d_1", "activation_1", "max_pooling2d_1", "fpn_p5upsampled"]


def write_keras2_weights(path, groups):
    """Writes ``[(group name, [(weight name, array), ...]), ...]`` as Keras 2's ``save_weights`` did."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode("utf8") for name, _ in groups])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.6"
        for name, weights in groups:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in weights])
            for weight_name, value in weights:
                group.create_dataset(weight_name, data=value)


def test_read_keras2_weights_of_a_whole_model_file_with_split_attributes(tmp_path):
    """model.save() puts the weights under "model_weights"; Keras 2 splits an attribute over 64 KB into
    ``layer_names0``, ``layer_names1`` ..."""
    kernel, bias = np.arange(6.0).reshape(1, 1, 2, 3), np.ones(3)
    with h5py.File(tmp_path / "whole.h5", "w") as f:
        f.attrs["model_config"] = b"{}"
        root = f.create_group("model_weights")
        root.attrs["layer_names0"] = np.array([b"input_image"])
        root.attrs["layer_names1"] = np.array([b"fpn_c5p5"])
        root.create_group("input_image").attrs["weight_names"] = np.array([])
        group = root.create_group("fpn_c5p5")
        group.attrs["weight_names"] = np.array([b"fpn_c5p5/kernel:0", b"fpn_c5p5/bias:0"])
        group.create_dataset("fpn_c5p5/kernel:0", data=kernel)
        group.create_dataset("fpn_c5p5/bias:0", data=bias)
    file = read_keras2_weights(str(tmp_path / "whole.h5"))
    assert list(file) == ["fpn_c5p5"]
    np.testing.assert_array_equal(file["fpn_c5p5"]["kernel"], kernel)
    np.testing.assert_array_equal(file["fpn_c5p5"]["bias"], bias)


def layer_weights(model):
    """Our layer name -> {weight name: array}, from the variables' paths."""
    out = {}
    for v in model.weights:
        *_, layer, weight = v.path.split("/")
        out.setdefault(layer, {})[weight] = np.asarray(v)
    return out


def keras2_weights(layer, weights):
    # Keras 2 names a layer's weights "<layer>/<weight>:0"; the order is kernel, bias or gamma, beta,
    # moving_mean, moving_variance, as our variables.
    return [(f"{layer}/{name}:0", value) for name, value in weights.items()]


def matterport_file(path, model, *, rng, drop=(), replace=None):
    """Writes ``model``'s weights as Matterport's mask_rcnn_*.h5 (``drop``: layers left out; ``replace``:
    {Matterport layer: {weight: array}} written instead of ours)."""
    ours = layer_weights(model)
    theirs = {TINY_BACKBONE_NAMES[name]: w for name, w in ours.items() if name in TINY_BACKBONE_NAMES}
    for name in FPN + RPN + BOX_HEAD + CLASS_LAYERS + MASK_HEAD:
        theirs[name] = ours[name]
    # Matterport's mask output has a background channel first: a random one here, which must be dropped.
    mask = ours["mrcnn_mask"]
    theirs["mrcnn_mask"] = {
        "kernel": np.concatenate([rng.normal(size=mask["kernel"].shape[:-1] + (1,)), mask["kernel"]], -1),
        "bias": np.concatenate([[7.0], mask["bias"]]),
    }
    theirs.update(replace or {})
    groups = [(name, []) for name in WEIGHTLESS]
    for name, weights in theirs.items():
        if name in drop or name in RPN:
            continue
        groups.append((name, keras2_weights(name, weights)))
    rpn = [w for name in RPN if name not in drop for w in keras2_weights(name, theirs[name])]
    groups.append(("rpn_model", rpn))
    write_keras2_weights(path, groups)


def randomise(model, seed, variance=(0.5, 1.5)):
    """Random weights everywhere, batch-norm statistics included, so a mis-mapped tensor shows. Kernels
    are scaled by their fan-in so that deep networks keep finite activations."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        name = v.path.split("/")[-1]
        if name == "moving_variance":
            value = rng.uniform(*variance, v.shape)
        elif name == "gamma":
            value = rng.uniform(0.5, 1.5, v.shape)
        elif name == "kernel":
            value = rng.normal(0, 1 / np.sqrt(np.prod(v.shape[:-1])), v.shape)
        else:
            value = rng.normal(0, 0.1, v.shape)
        v.assign(value.astype("float32"))
    return model


def matterport_config(**model_changes):
    config = load_config("tiny")
    model = dataclasses.replace(config.model, backbone_style="matterport", **model_changes)
    return dataclasses.replace(config, model=model)


def outputs(model, images, seed=0):
    """Everything the weights decide: the pyramid, the RPN's outputs, both heads on random pooled ROIs."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    pyramid = model.features(images)
    pooled = rng.normal(size=(1, 3, cfg.pool_size, cfg.pool_size, cfg.fpn_channels)).astype("float32")
    mask_pooled = rng.normal(size=(1, 3, cfg.mask_pool_size, cfg.mask_pool_size, cfg.fpn_channels))
    return [
        *pyramid,
        *model.rpn_head(pyramid),
        *model.box_head(pooled),
        model.mask_head(mask_pooled.astype("float32")),
    ]


@pytest.fixture(scope="module")
def source():
    config = matterport_config()
    keras.utils.set_random_seed(1)
    return config, randomise(build_model(config.model, 64), seed=1)


def fresh(config, seed=2):
    keras.utils.set_random_seed(seed)
    return build_model(config.model, 64)


def test_matterport_file_reproduces_the_source_model(tmp_path, source):
    config, model = source
    path = tmp_path / "mask_rcnn_test.h5"
    matterport_file(path, model, rng=np.random.default_rng(0))
    target = fresh(config)
    report = initialize(target, str(path))
    assert report.loaded == {"backbone": 34, "fpn": 8, "rpn": 3, "box head": 6, "mask head": 10}
    assert not report.skipped and not report.uninitialised and not report.unused
    images = jnp.asarray(np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3)), jnp.float32)
    for got, want in zip(outputs(target, images), outputs(model, images), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_read_keras2_weights_flattens_the_nested_rpn_model(tmp_path, source):
    path = tmp_path / "m.h5"
    matterport_file(path, source[1], rng=np.random.default_rng(0))
    file = read_keras2_weights(str(path))
    assert set(RPN) <= set(file) and "rpn_model" not in file
    assert list(file["bn_conv1"]) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert not set(WEIGHTLESS) & set(file)


def test_class_specific_layers_are_skipped_when_the_class_count_differs(tmp_path, source):
    config, model = source
    path = tmp_path / "coco_like.h5"
    matterport_file(path, model, rng=np.random.default_rng(0))  # 1 class + background
    five = dataclasses.replace(config.model, num_classes=5)
    target = fresh(
        dataclasses.replace(config, model=five, data=dataclasses.replace(config.data, variant="all_classes"))
    )
    before = layer_weights(target)
    report = initialize(target, str(path))
    assert report.loaded["box head"] == 4 and report.loaded["mask head"] == 9
    assert "1 classes + background, the model 5 + background" in report.skipped[0]
    after, src = layer_weights(target), layer_weights(model)
    for name in ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"):
        np.testing.assert_array_equal(after[name]["kernel"], before[name]["kernel"])
    np.testing.assert_array_equal(after["mrcnn_mask_deconv"]["kernel"], src["mrcnn_mask_deconv"]["kernel"])
    np.testing.assert_array_equal(
        after["conv5_block1_3_bn"]["moving_mean"], src["conv5_block1_3_bn"]["moving_mean"]
    )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"drop": ("res3a_branch2b",)}, "layer res3a_branch2b (backbone) is missing"),
        ({"drop": ("rpn_bbox_pred",)}, "layer rpn_bbox_pred (rpn) is missing"),
        (
            {"replace": {"fpn_p3": {"kernel": np.zeros((3, 3, 32, 16)), "bias": np.zeros(16)}}},
            "fpn_p3/kernel: shape (3, 3, 32, 16) in the file, (3, 3, 32, 32) in the model",
        ),
        (
            {"replace": {"res4b_branch2a": {"kernel": np.zeros((1, 1, 128, 32)), "bias": np.zeros(32)}}},
            "the file's ResNet has layers ours (tiny) lacks: res4b_branch2a",
        ),
    ],
)
def test_a_file_that_does_not_fit_is_refused_and_nothing_loaded(tmp_path, source, change, message):
    config, model = source
    path = tmp_path / "bad.h5"
    matterport_file(path, model, rng=np.random.default_rng(0), **change)
    target = fresh(config)
    before = layer_weights(target)
    with pytest.raises(ValueError, match="nothing was loaded") as error:
        initialize(target, str(path))
    assert message in str(error.value)
    after = layer_weights(target)
    for name in before:
        for weight in before[name]:
            np.testing.assert_array_equal(after[name][weight], before[name][weight])


def test_matterport_weights_need_the_matterport_backbone_style(tmp_path, source):
    config, model = source
    path = tmp_path / "m.h5"
    matterport_file(path, model, rng=np.random.default_rng(0))
    keras_style = dataclasses.replace(config, model=dataclasses.replace(config.model, backbone_style="keras"))
    with pytest.raises(ValueError, match="backbone_style='matterport'"):
        initialize(fresh(keras_style), str(path))


def matterports_resnet(blocks, width):
    """Matterport's resnet_graph written out: a conv_block ("a", with a shortcut convolution) then
    identity_blocks ("b", "c", ...) per stage, Keras' default batch-norm epsilon (its BatchNorm subclasses
    Keras' without changing it) and a stem max-pool with padding 'same'."""

    def bottleneck(x, stage, block, filters, strides):
        name = f"{stage}{chr(ord('a') + block)}_branch"
        y = layers.Conv2D(filters, 1, strides=strides, name=f"res{name}2a")(x)
        y = layers.Activation("relu")(layers.BatchNormalization(epsilon=1e-3, name=f"bn{name}2a")(y))
        y = layers.Conv2D(filters, 3, padding="same", name=f"res{name}2b")(y)
        y = layers.Activation("relu")(layers.BatchNormalization(epsilon=1e-3, name=f"bn{name}2b")(y))
        y = layers.Conv2D(4 * filters, 1, name=f"res{name}2c")(y)
        y = layers.BatchNormalization(epsilon=1e-3, name=f"bn{name}2c")(y)
        if block == 0:
            x = layers.Conv2D(4 * filters, 1, strides=strides, name=f"res{name}1")(x)
            x = layers.BatchNormalization(epsilon=1e-3, name=f"bn{name}1")(x)
        return layers.Activation("relu")(layers.Add()([y, x]))

    image = keras.Input((None, None, 3))
    x = layers.ZeroPadding2D(3)(image)
    x = layers.Conv2D(width, 7, strides=2, name="conv1")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="bn_conv1")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    outputs = []
    for stage, count in zip((2, 3, 4, 5), blocks, strict=True):
        for block in range(count):
            strides = 2 if block == 0 and stage > 2 else 1
            x = bottleneck(x, stage, block, width * 2 ** (stage - 2), strides)
        outputs.append(x)
    return keras.Model(image, outputs)


@pytest.mark.parametrize(
    "backbone,width,blocks,variance",
    [
        # Variances near the epsilon, so that 1e-3 against keras.applications' 1.001e-5 shows.
        ("tiny", 8, (1, 1, 1, 1), (1e-3, 1e-2)),
        # The real shapes and names (blocks "a" to "w" in conv4); variances that keep 33 blocks finite.
        pytest.param("resnet101", 64, (3, 4, 23, 3), (0.5, 1.5), marks=pytest.mark.slow),
    ],
)
def test_a_loaded_backbone_computes_what_matterports_resnet_computes(
    tmp_path, backbone, width, blocks, variance
):
    config = matterport_config(backbone=backbone, backbone_width=width)
    keras.utils.set_random_seed(5)
    reference = randomise(matterports_resnet(blocks, width), seed=5, variance=variance)
    path = tmp_path / "resnet_only.h5"
    groups = [
        (lay.name, keras2_weights(lay.name, layer_weights(lay).get(lay.name, {}))) for lay in reference.layers
    ]
    write_keras2_weights(path, groups)
    target = fresh(config)
    report = initialize(target, str(path))
    assert report.loaded == {"backbone": sum(1 for lay in reference.layers if lay.weights)}
    assert report.uninitialised == ["fpn", "rpn", "box head", "mask head"]
    x = np.random.default_rng(6).normal(0, 50, (2, 64, 64, 3)).astype("float32")
    for got, want in zip(target.backbone(x), reference(x), strict=True):
        want = np.asarray(want)
        assert want.std() > 0.1
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * want.std())
    # The same weights in keras.applications' ResNet compute something else: the style matters.
    keras_style = build_resnet(backbone, width=width, style="keras")
    keras_style.set_weights(target.backbone.get_weights())
    assert np.abs(np.asarray(keras_style(x)[0]) - np.asarray(reference(x)[0])).max() > 1e-2


def test_train_cli_starts_from_the_init_file(tmp_path, source):
    """`maskrcnn train --init FILE` with zero epochs saves exactly the file's weights."""
    config, model = source
    path = tmp_path / "m.h5"
    matterport_file(path, model, rng=np.random.default_rng(0))
    config_file = tmp_path / "init_config.py"
    config_file.write_text(
        "import dataclasses\n"
        "from maskrcnn.config import StageConfig, load_config\n\n"
        "def get_config():\n"
        "    c = load_config('tiny')\n"
        "    return dataclasses.replace(\n"
        "        c,\n"
        "        data=dataclasses.replace(\n"
        "            c.data, builder='synthetic', synthetic_images_per_fold=4, scale=0.25\n"
        "        ),\n"
        "        model=dataclasses.replace(c.model, backbone_style='matterport'),\n"
        "        train=dataclasses.replace(c.train, stages=(StageConfig('heads', 'heads', 0, 1e-3),)),\n"
        "    )\n"
    )
    workdir = tmp_path / "run"
    cli(
        [
            "train",
            "--config",
            str(config_file),
            "--workdir",
            str(workdir),
            "--init",
            str(path),
            "--no-validation",
        ]
    )
    assert "initial weights from" in (workdir / "init.txt").read_text()
    trained = fresh(config, seed=9)
    trained.load_weights(str(workdir / "model.weights.h5"))
    for name, weights in layer_weights(model).items():
        for weight, value in weights.items():
            np.testing.assert_array_equal(layer_weights(trained)[name][weight], value)


# --------------------------------------------------------------------------------------------------
def test_imagenet_offline_names_the_file_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached copy

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    model = types.SimpleNamespace(config=ModelConfig(backbone="resnet50", bgr=True))
    with pytest.raises(RuntimeError, match="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5") as error:
        initialize(model, "imagenet")
    assert "--init PATH" in str(error.value)


def test_imagenet_weights_need_a_matching_config():
    model = types.SimpleNamespace(config=ModelConfig(backbone="tiny", backbone_width=8))
    with pytest.raises(ValueError) as error:
        initialize(model, "imagenet")
    for problem in ("model.backbone='tiny'", "backbone_width=8", "model.bgr must be True"):
        assert problem in str(error.value)


def test_imagenet_weights_from_a_local_keras_applications_file(tmp_path):
    """A keras.applications ResNet50 weights file (Keras 2 layout, its own layer names) given as a path."""
    keras.utils.set_random_seed(7)
    application = randomise(keras.applications.ResNet50(weights=None, include_top=False), seed=7)
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras2_weights(
        path,
        [
            (lay.name, keras2_weights(lay.name, layer_weights(lay).get(lay.name, {})))
            for lay in application.layers
        ],
    )
    model = types.SimpleNamespace(
        config=ModelConfig(backbone="resnet50", bgr=True), backbone=build_resnet("resnet50")
    )
    report = initialize(model, str(path))
    assert report.loaded == {"backbone": sum(1 for lay in model.backbone.layers if lay.weights)}
    x = np.random.default_rng(8).normal(0, 50, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(model.backbone(x)[-1]), np.asarray(application(x)), rtol=1e-4, atol=1e-4
    )
