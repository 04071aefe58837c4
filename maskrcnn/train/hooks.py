"""Hooks: what a researcher adds to training without editing the loop (Keras callbacks, detectron2's hooks).

``train(config, workdir, hooks=[...])`` calls every hook at fixed points of :func:`maskrcnn.train.loop.train`
with the :class:`Run` it is in. A hook overrides the methods it needs:

- ``before_stage(run)``: before the stage's optimizer and step are built; may replace ``run.schedule``
  (step -> learning rate, e.g. a warm-up around the paper's linear decay).
- ``after_step(run, metrics)``: after every step, with the step's metrics as device arrays (reading one
  waits for the device: keep it cheap, or read only every N steps); ``run.state`` is the new state.
- ``after_epoch(run, logs)``: at every epoch end, with that epoch's logs (the validation losses when
  validation runs); entries a hook adds to ``logs`` are written to ``log.csv`` and TensorBoard.
- ``after_checkpoint(run, path)``: after every checkpoint is written.
- ``after_stage(run)``: when a stage ends, after the model holds its weights.

:class:`WarmUp` and :class:`WeightEMA` are two ready hooks, and examples of the pattern.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class Run:
    """Where training is: what every hook gets. ``state`` and ``step`` move on with every step."""

    config: object  # the Config being trained
    model: object  # the MaskRCNN; its variables hold the weights only at a stage's end (``state`` has them)
    workdir: str
    stage_index: int
    stage: object  # the StageConfig
    steps_per_epoch: int
    schedule: Callable  # step within the stage -> learning rate
    state: object = None  # the TrainState (maskrcnn.train.step)
    mask: list | None = None  # which of model.trainable_variables the stage trains
    step: int = 0  # steps done in this stage

    @property
    def epoch(self) -> int:
        """The epoch the next step belongs to, from 0 (at an epoch's end: the epochs done)."""
        return self.step // self.steps_per_epoch


class Hook:
    """Does nothing at every point; subclass it and override what you need (see the module docstring)."""

    def before_stage(self, run: Run) -> None:
        pass

    def after_step(self, run: Run, metrics: dict) -> None:
        pass

    def after_epoch(self, run: Run, logs: dict) -> None:
        pass

    def after_checkpoint(self, run: Run, path: str) -> None:
        pass

    def after_stage(self, run: Run) -> None:
        pass


class WarmUp(Hook):
    """Linear learning-rate warm-up over the first ``steps`` steps of every stage, on top of its schedule
    (Goyal et al. 2017): the rate rises from ``start_factor`` times the schedule's to the schedule's."""

    def __init__(self, steps: int, start_factor: float = 0.001):
        self.steps, self.start_factor = steps, start_factor

    def before_stage(self, run: Run) -> None:
        base, steps, start = run.schedule, self.steps, self.start_factor

        def warmed(step):
            ramp = start + (1.0 - start) * jnp.minimum(step / steps, 1.0)
            return base(step) * ramp

        run.schedule = warmed


class WeightEMA(Hook):
    """An exponential moving average of the trained weights, updated on the device after every step and
    written as ``<workdir>/ema.weights.h5`` at every stage end (load it into a model built from the run's
    config like the run's own weights)."""

    FILE = "ema.weights.h5"

    def __init__(self, decay: float = 0.999):
        self.decay = decay
        self.average = None
        self._update = jax.jit(lambda avg, new, d: jax.tree.map(lambda a, n: d * a + (1 - d) * n, avg, new))

    def before_stage(self, run: Run) -> None:
        self.average = None  # a stage trains its own set of variables

    def after_step(self, run: Run, metrics: dict) -> None:
        trained = run.state.trained
        if self.average is None:
            self.average = jax.tree.map(jnp.copy, trained)
        else:
            self.average = self._update(self.average, trained, self.decay)

    def after_stage(self, run: Run) -> None:
        """Saves the model with the averaged weights in place of the trained ones; the model keeps its own."""
        trained = [v for v, m in zip(run.model.trainable_variables, run.mask, strict=True) if m]
        kept = [v.value for v in trained]
        for variable, value in zip(trained, self.average, strict=True):
            variable.assign(value)
        try:
            run.model.save_weights(os.path.join(run.workdir, self.FILE))
        finally:
            for variable, value in zip(trained, kept, strict=True):
                variable.assign(value)
