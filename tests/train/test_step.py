import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from maskrcnn.config import StageConfig, load_config
from maskrcnn.model import LOSS_NAMES, build_model
from maskrcnn.train.step import (
    REGULARIZATION,
    decay_mask,
    learning_rate_schedule,
    make_optimizer,
    prepare_stage,
    trainable_mask,
)
from tests.model.helpers import batch_from_labels, make_instances

SIZE = 64


def tiny_config():
    config = load_config("tiny")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, scale=SIZE / 256))


def tiny_batch(config, seed=0, count=3):
    rng = np.random.default_rng(seed)
    labels = [make_instances(rng, SIZE, count, radius=(3, 6)) for _ in range(2)]
    return batch_from_labels(labels, config.data.max_instances, config.data.mini_mask_size, rng)


def setup(config, layers):
    model = build_model(config.model, SIZE)
    stage = prepare_stage(model, config.train, StageConfig("s", layers, 2, 0.01), 10)
    return model, stage.mask, stage.state, stage.step


def test_schedule_follows_eq1_per_epoch_and_per_step():
    stage = StageConfig("all", "all", 30, 1e-4)
    per_epoch = learning_rate_schedule(stage, steps_per_epoch=100)
    # Epoch 0 runs at the start rate; epoch 29 (the last of 30) at 1e-4 * (1 - 29/30) = 3.33e-6 (the paper).
    np.testing.assert_allclose(
        [per_epoch(0), per_epoch(99), per_epoch(2900), per_epoch(2999)],
        [1e-4, 1e-4, 1e-4 / 30, 1e-4 / 30],
        rtol=1e-5,
    )
    np.testing.assert_allclose(per_epoch(1000), 1e-4 * (1 - 10 / 30), rtol=1e-5)
    per_step = learning_rate_schedule(stage, steps_per_epoch=100, per_step=True)
    np.testing.assert_allclose(per_step(150), 1e-4 * (1 - 1.5 / 30), rtol=1e-5)
    squared = learning_rate_schedule(StageConfig("h", "heads", 20, 1e-3), 10, power=2.0)
    np.testing.assert_allclose(squared(100), 1e-3 * 0.5**2, rtol=1e-5)


def test_each_stage_trains_the_documented_variables():
    model = build_model(tiny_config().model, SIZE)
    stage_of = {}  # ResNet stage from keras.applications' layer names: conv1_* / pool1_* 1, convN_* N
    for layer in model.backbone.layers:
        for v in layer.weights:
            head = layer.name.split("_")[0]
            stage_of[id(v)] = 1 if head in ("conv1", "pool1") else int(head[4:])
    assert sorted(model.backbone.trainable_groups) == [1, 2, 3, 4, 5]
    variables = model.trainable_variables
    backbone = [id(v) in stage_of for v in variables]
    assert any(backbone) and not all(backbone)
    heads = trainable_mask(model, "heads")
    assert all(m != b for m, b in zip(heads, backbone, strict=True))  # exactly the non-backbone variables
    assert all(trainable_mask(model, "all"))
    four = trainable_mask(model, "4+")
    for v, m, b in zip(variables, four, backbone, strict=True):
        assert m == (not b or stage_of[id(v)] >= 4), v.path
    with pytest.raises(ValueError, match=r"no group 6; its groups are \[1, 2, 3, 4, 5\]"):
        trainable_mask(model, "6+")
    with pytest.raises(ValueError, match="unknown"):
        trainable_mask(model, "backbone")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_updates_match_their_formulas(optimizer):
    """Two updates of the chain (clip to norm 5, L2 decay on kernels, SGD or Adam) against the formulas
    written out: SGD's trace m = g + 0.9 m, update -lr m; Adam's moments with bias correction."""
    train = dataclasses.replace(
        load_config("tiny").train, optimizer=optimizer, momentum=0.9, clip_global_norm=5.0, weight_decay=0.1
    )
    lr = 0.01
    params = [np.array([[1.0, -2.0]]), np.array([0.5])]  # a kernel (decayed) and a bias (not)
    grads = [[np.array([[30.0, 40.0]]), np.array([0.0])], [np.array([[0.3, -0.1]]), np.array([1.0])]]
    opt = make_optimizer(train, lambda step: lr, [True, False])
    state = opt.init([jnp.asarray(p) for p in params])
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, g in enumerate(grads, start=1):
        updates, state = opt.update([jnp.asarray(x) for x in g], state, [jnp.asarray(p) for p in params])
        norm = np.sqrt(sum(float(np.sum(x**2)) for x in g))
        clipped = [x * min(1.0, 5.0 / norm) for x in g]
        d = [clipped[0] + 0.1 * params[0], clipped[1]]
        want = []
        for i in range(2):
            if optimizer == "sgd":
                m[i] = d[i] + 0.9 * m[i]
                want.append(-lr * m[i])
            else:
                m[i] = 0.9 * m[i] + 0.1 * d[i]
                v[i] = 0.999 * v[i] + 0.001 * d[i] ** 2
                want.append(-lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8))
        for got, expected in zip(updates, want, strict=True):
            np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-9)  # float32
        params = [p + u for p, u in zip(params, want, strict=True)]


def test_weight_decay_skips_biases_and_batch_norm():
    model = build_model(tiny_config().model, SIZE)
    for v, decays in zip(model.trainable_variables, decay_mask(model), strict=True):
        is_kernel = v.path.endswith("kernel")
        assert decays == is_kernel, v.path


def test_a_stage_decays_only_the_variables_it_trains():
    # With weight decay alone (learning rate 1, no gradient), one optimizer update is -wd * w on exactly
    # the trained kernels: a frozen backbone kernel is neither updated nor decayed.
    config = tiny_config()
    model = build_model(config.model, SIZE)
    stage = prepare_stage(model, config.train, StageConfig("s", "4+", 1, 1.0), 1)
    trained = [v for v, m in zip(model.trainable_variables, stage.mask, strict=True) if m]
    zeros = [jnp.zeros_like(t) for t in stage.state.trained]
    update = jax.jit(stage.optimizer.update)  # one compile, not one per array shape
    updates, _ = update(zeros, stage.optimizer.init(stage.state.trained), stage.state.trained)
    assert len(updates) == len(trained) < len(model.trainable_variables)
    for v, value, update in zip(trained, stage.state.trained, updates, strict=True):
        expected = -config.train.weight_decay * value if v.path.endswith("kernel") else 0 * value
        np.testing.assert_allclose(update, expected, rtol=1e-6, atol=1e-12, err_msg=v.path)


@pytest.fixture(scope="module")
def heads_run():
    config = tiny_config()
    model, mask, state, step = setup(config, "heads")
    return config, model, mask, state, step


def test_step_updates_only_the_trained_variables_and_guards_nan(heads_run):
    config, model, mask, state, step = heads_run
    batch = tiny_batch(config)
    before = jax.tree.map(np.asarray, state)
    new, metrics = step(jax.tree.map(jnp.asarray, before), batch, jax.random.PRNGKey(0))
    assert bool(metrics["finite"]) and set(LOSS_NAMES) <= set(metrics)
    assert REGULARIZATION not in metrics  # no Keras regulariser in this model (test_named_parts.py has one)
    np.testing.assert_allclose(metrics["loss"], sum(metrics[k] for k in LOSS_NAMES), rtol=1e-5)
    assert float(metrics["lr"]) == pytest.approx(0.01)
    assert int(new.step) == 1
    changed = [not np.allclose(a, b) for a, b in zip(new.trained, before.trained, strict=True)]
    assert sum(changed) > len(changed) // 2
    for a, b in zip(new.frozen, before.frozen, strict=True):
        np.testing.assert_array_equal(a, b)
    # A NaN in the input: the update is skipped, the step still counts.
    bad = dict(batch, image=batch["image"].astype(np.float32) * np.nan)
    after_bad, metrics = step(jax.tree.map(jnp.asarray, before), bad, jax.random.PRNGKey(0))
    assert not bool(metrics["finite"])
    assert int(after_bad.step) == 1
    for a, b in zip(
        jax.tree.leaves(after_bad.trained) + jax.tree.leaves(after_bad.opt_state),
        jax.tree.leaves(before.trained) + jax.tree.leaves(before.opt_state),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_step_is_deterministic(heads_run):
    config, _, _, state, step = heads_run
    batch = tiny_batch(config, seed=1)
    start = jax.tree.map(np.asarray, state)
    _, m1 = step(jax.tree.map(jnp.asarray, start), batch, jax.random.PRNGKey(3))
    _, m2 = step(jax.tree.map(jnp.asarray, start), batch, jax.random.PRNGKey(3))
    for k in LOSS_NAMES:
        assert float(m1[k]) == float(m2[k])


@pytest.mark.slow  # a full compile of its own; the math is unit-tested elsewhere
def test_bf16_mixed_precision_keeps_losses_float32():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        config = tiny_config()
        model = build_model(config.model, SIZE)
        batch = tiny_batch(config)
        losses = model(batch["image"], targets=batch, key=jax.random.PRNGKey(0), training=True)
        detections = model(batch["image"])
    finally:
        keras.config.set_dtype_policy(policy)
    for k in LOSS_NAMES:
        assert losses[k].dtype == jnp.float32 and np.isfinite(float(losses[k])), k
    assert detections["boxes"].dtype == jnp.float32


TWO_DEVICES = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, numpy as np
    sys.path.insert(0, {root!r})
    from tests.train.test_step import setup, tiny_batch, tiny_config
    from maskrcnn.train.step import data_mesh, replicate, shard_batch
    assert jax.device_count() == 2
    config = tiny_config()
    batch = tiny_batch(config)
    out = {{}}
    for name, devices in (("one", jax.devices()[:1]), ("two", jax.devices())):
        keras_seed = __import__("keras").utils.set_random_seed(0)
        model, mask, state, step = setup(config, "all")
        mesh = data_mesh(devices)
        new, metrics = step(replicate(state, mesh), shard_batch(batch, mesh), jax.random.PRNGKey(1))
        out[name] = [np.asarray(x) for x in jax.tree.leaves(new.trained)] + [np.asarray(metrics["loss"])]
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(out["one"], out["two"]))
    print("max difference", worst)
    assert worst < 1e-4, worst
    """
)


@pytest.mark.slow
def test_two_devices_give_the_update_of_one():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES.format(root=root)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
