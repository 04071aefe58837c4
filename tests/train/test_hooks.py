"""Hooks add behaviour to training without editing the loop: an extra metric, a schedule, an EMA."""

import csv

import h5py
import numpy as np
import pytest

from maskrcnn.config import StageConfig
from maskrcnn.train.hooks import Hook, WarmUp, WeightEMA
from maskrcnn.train.loop import train
from tests.model.helpers import tiny_training_config


class Recorder(Hook):
    """Records every call, adds a metric at each epoch end and keeps each step's learning rate."""

    def __init__(self):
        self.calls, self.lrs = [], []

    def before_stage(self, run):
        self.calls.append(("before_stage", run.stage.name, run.step))

    def after_step(self, run, metrics):
        self.lrs.append(float(metrics["lr"]))
        self.calls.append(("after_step", run.step))

    def after_epoch(self, run, logs):
        logs["my_metric"] = 10.0 * run.epoch  # at an epoch's end, the epochs done
        self.calls.append(("after_epoch", run.epoch))

    def after_checkpoint(self, run, path):
        self.calls.append(("after_checkpoint", run.step, path.rsplit("/", 1)[1]))

    def after_stage(self, run):
        self.calls.append(("after_stage", run.stage.name))


class Keep(Hook):
    """Keeps the trained weights after every step."""

    def __init__(self):
        self.seen = []

    def after_step(self, run, metrics):
        self.seen.append([np.asarray(v) for v in run.state.trained])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of 2 epochs of 2 steps with every hook of these tests (one compile for all of them)."""
    workdir = tmp_path_factory.mktemp("hooks")
    config = tiny_training_config([StageConfig("all", "all", 2, 1e-2)], steps_per_epoch=2)
    recorder, keep, ema = Recorder(), Keep(), WeightEMA(decay=0.5)
    model = train(
        config,
        str(workdir),
        hooks=[WarmUp(steps=2, start_factor=0.0), recorder, keep, ema],
        validate=False,
        progress=False,
    )
    return workdir, model, recorder, keep, ema


def test_hooks_are_called_in_order_and_an_added_metric_is_logged(trained):
    workdir, _, recorder, _, _ = trained
    assert recorder.calls == [
        ("before_stage", "all", 0),
        ("after_step", 1),
        ("after_step", 2),
        ("after_checkpoint", 2, "0-00000002"),
        ("after_epoch", 1),
        ("after_step", 3),
        ("after_step", 4),
        ("after_checkpoint", 4, "0-00000004"),
        ("after_epoch", 2),
        ("after_stage", "all"),
    ]
    with open(workdir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = [r for r in rows if r["split"] == "epoch"]
    assert [float(r["my_metric"]) for r in epochs] == [10.0, 20.0]
    assert all(r["my_metric"] == "" for r in rows if r["split"] == "train")  # the column was added later


def test_a_warm_up_hook_changes_the_schedule_the_step_uses(trained):
    recorder = trained[2]
    # The paper's decay, constant within an epoch (2 steps): 1e-2 * (1 - epoch / 2); the ramp over the
    # first 2 steps: 0, 1/2, then 1.
    expected = [1e-2 * (1 - (s // 2) / 2) * min(s / 2, 1.0) for s in range(4)]
    assert expected == pytest.approx([0.0, 5e-3, 5e-3, 5e-3])
    np.testing.assert_allclose(recorder.lrs, expected, rtol=1e-6, atol=1e-12)


def test_the_ema_hook_writes_the_average_of_the_trained_weights(trained):
    workdir, model, _, keep, ema = trained
    # EMA with decay 1/2 over four steps: w1 / 8 + w2 / 8 + w3 / 4 + w4 / 2.
    expected = [a / 8 + b / 8 + c / 4 + d / 2 for a, b, c, d in zip(*keep.seen, strict=True)]
    with h5py.File(workdir / WeightEMA.FILE) as f, h5py.File(workdir / "model.weights.h5") as g:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        differs = sum(not np.array_equal(f[n][()], g[n][()]) for n in names)
    assert differs > 0  # the EMA file is not the model's own weights
    np.testing.assert_allclose(
        np.concatenate([np.ravel(x) for x in ema.average]),
        np.concatenate([np.ravel(x) for x in expected]),
        rtol=1e-5,
        atol=1e-30,  # XLA flushes float32 subnormals to zero
    )
    np.testing.assert_array_equal(np.asarray(model.trainable_variables[0].value), keep.seen[-1][0])
