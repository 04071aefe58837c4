"""The training loop: stages, epochs, logs, validation, checkpoints, resume and hooks.

One readable loop around the jitted step of :mod:`maskrcnn.train.step`: :func:`train` sets the run up and
runs each stage (:func:`_run_stage`), which runs its epochs (:func:`_run_epoch`), which runs the steps.
Every ``checkpoint_every_steps`` steps and at every epoch end the whole train state is checkpointed
atomically; ``resume=True`` continues from the newest checkpoint with the same step, schedule position,
optimizer state and data order, so a killed run continues as an uninterrupted one would. Hooks
(:mod:`maskrcnn.train.hooks`) add behaviour at each of these points without editing the loop.
"""

from __future__ import annotations

import json
import os

import jax
import keras
from tqdm.auto import tqdm

from maskrcnn import input_pipeline
from maskrcnn.config import Config
from maskrcnn.model import MaskRCNN, build_model, pretrained
from maskrcnn.train import checkpoint
from maskrcnn.train.hooks import Hook, Run
from maskrcnn.train.log import CsvLog, Monitor, NonFiniteLossError, tensorboard_writer
from maskrcnn.train.step import (
    data_mesh,
    learning_rate_schedule,
    make_eval_step,
    prepare_stage,
    replicate,
    shard_batch,
    write_state,
)
from maskrcnn.train.workdir import CONFIG_FILE, open_workdir, save_weights


def _step_key(seed: int, stage: int, step: int):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stage), step)


def _model_batch(batch):
    return {k: batch[k] for k in input_pipeline.MODEL_INPUTS}


def validation_loss(loss_fn, state, config: Config, *, max_batches: int | None = None) -> dict:
    """Mean loss parts of ``loss_fn(state, batch)`` (:func:`maskrcnn.train.step.make_eval_step`) over the
    validation split (no augmentation), and their sum ``loss``."""
    sums, count = {}, 0
    for i, batch in enumerate(input_pipeline.make_eval_iterator(config, config.data.val_split)):
        if max_batches is not None and i >= max_batches:
            break
        for name, value in loss_fn(state, _model_batch(batch)).items():  # every part
            sums[name] = sums.get(name, 0.0) + float(value)
        count += 1
    means = {k: v / max(count, 1) for k, v in sums.items()}
    means["loss"] = sum(means.values())
    return means


def train(
    config: Config,
    workdir: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stages: tuple[int, ...] | None = None,
    model: MaskRCNN | None = None,
    validate: bool = True,
    progress: bool = True,
    log_every: int = 10,
    hooks: tuple[Hook, ...] | list[Hook] = (),
) -> MaskRCNN:
    """Trains ``config`` in ``workdir`` and returns the trained model (its weights also in ``workdir``).

    Args:
      stages: indices into ``config.train.stages`` to run (default: all, in order).
      resume: continue from the newest readable checkpoint in ``workdir`` (see :func:`open_workdir`).
      overwrite: delete the run already in ``workdir`` first; without it or ``resume`` a used workdir is
        refused.
      model: start from this model's weights instead of a fresh initialisation (or ``train.init``).
      hooks: :class:`maskrcnn.train.hooks.Hook` objects called at each stage, step, epoch and checkpoint.
    """
    restored = open_workdir(workdir, config, resume=resume, overwrite=overwrite)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    model = _initial_model(config, workdir, model, initialise=restored is None)
    steps_per_epoch = config.train.steps_per_epoch or input_pipeline.steps_per_epoch(config)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training split {config.data.train_split!r} has fewer images than one batch "
            f"({config.train.batch_size}); lower train.batch_size"
        )
    start_stage, start_step = 0, 0
    if restored is not None:
        with open(os.path.join(restored, "meta.json")) as f:
            meta = json.load(f)
        start_stage, start_step = int(meta["stage"]), int(meta["step"])
        print(f"resume: {restored} (stage {start_stage}, step {start_step})")
    log = CsvLog(os.path.join(workdir, "log.csv"))
    board = tensorboard_writer(workdir)
    monitor = Monitor(log, board, log_every=log_every, max_nonfinite=config.train.max_consecutive_nonfinite)
    loop = _Loop(config, workdir, model, monitor, hooks, validate, progress, last_saved=restored)
    try:
        for s in stages if stages is not None else range(len(config.train.stages)):
            if s < start_stage:
                continue
            resume_from = (restored, start_step) if restored is not None and s == start_stage else None
            loop.run_stage(s, steps_per_epoch, resume_from)
    except NonFiniteLossError as error:
        raise NonFiniteLossError(f"{error} {loop.recovery_advice()}") from None
    finally:
        log.close()
        if board is not None:
            board.close()
    return model


def _initial_model(config: Config, workdir: str, model: MaskRCNN | None, *, initialise: bool) -> MaskRCNN:
    """The model training starts from: ``model`` if given, else built from the config with the same seed
    (the same initial weights), with ``train.init``'s weights loaded unless a checkpoint will hold them."""
    if config.train.mixed_precision:
        # bf16 activations and matmuls, float32 variables; the losses are computed in float32.
        keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.set_random_seed(config.train.seed)
    if model is not None:
        return model
    model = build_model(
        config.model, config.data.image_size, mini_masks=config.data.mini_mask_size is not None
    )
    if initialise and config.train.init is not None:
        report = pretrained.initialize(model, config.train.init).summary()
        print(report)
        with open(os.path.join(workdir, "init.txt"), "w") as f:
            f.write(report + "\n")
    return model


class _Loop:
    """The stages, epochs and steps of one :func:`train` call, and the checkpoint they last wrote."""

    def __init__(self, config, workdir, model, monitor, hooks, validate, progress, last_saved):
        self.config, self.workdir, self.model, self.monitor = config, workdir, model, monitor
        self.hooks, self.validate, self.progress = list(hooks), validate, progress
        self.last_saved = last_saved  # the checkpoint whose weights the coming steps start from
        self.mesh = data_mesh()

    def _call(self, method: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, method)(*args)

    def run_stage(self, s: int, steps_per_epoch: int, resume_from) -> None:
        tcfg = self.config.train
        stage = tcfg.stages[s]
        schedule = learning_rate_schedule(
            stage, steps_per_epoch, power=tcfg.lr_power, per_step=tcfg.lr_per_step
        )
        run = Run(self.config, self.model, self.workdir, s, stage, steps_per_epoch, schedule)
        self._call("before_stage", run)
        prepared = prepare_stage(self.model, tcfg, stage, steps_per_epoch, schedule=run.schedule)
        run.mask, run.state = prepared.mask, prepared.state
        if resume_from is not None:
            run.state, _ = checkpoint.load(resume_from[0], run.state)
            run.step = resume_from[1]
        run.state = replicate(run.state, self.mesh)
        eval_step = make_eval_step(self.model, run.mask) if self.validate else None
        while run.step < stage.epochs * steps_per_epoch:
            self._run_epoch(run, prepared.step, eval_step)
        write_state(self.model, run.state, run.mask)
        save_weights(self.model, self.workdir)
        self._call("after_stage", run)

    def _run_epoch(self, run: Run, train_step, eval_step) -> None:
        """The steps from ``run.step`` to the end of its epoch (or of the stage), then validation."""
        tcfg, monitor = self.config.train, self.monitor
        per_epoch, total = run.steps_per_epoch, run.stage.epochs * run.steps_per_epoch
        epoch = run.epoch
        bar = tqdm(
            total=per_epoch,
            initial=run.step % per_epoch,
            desc=f"{run.stage.name} epoch {epoch + 1}/{run.stage.epochs}",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        monitor.start_epoch(run.stage_index, epoch, per_epoch, bar)
        pending = None  # metrics are read one step late, so the device never waits for the host
        for batch in input_pipeline.make_train_iterator(
            self.config, epoch=epoch, start_step=run.step % per_epoch
        ):
            key = _step_key(tcfg.seed, run.stage_index, run.step)
            run.state, metrics = train_step(run.state, shard_batch(_model_batch(batch), self.mesh), key)
            run.step += 1
            if pending is not None:
                monitor.record(*pending)
            pending = (run.step, metrics)
            self._call("after_step", run, metrics)
            epoch_end = run.step % per_epoch == 0
            if run.step % tcfg.checkpoint_every_steps == 0 or epoch_end or run.step >= total:
                monitor.record(*pending)
                pending = None
                self._checkpoint(run)
            if epoch_end or run.step >= total:
                break
        if pending is not None:
            monitor.record(*pending)
        bar.close()
        if run.step % per_epoch == 0:
            logs = {}
            if eval_step is not None:
                logs = validation_loss(eval_step, run.state, self.config)
            self._call("after_epoch", run, logs)
            if logs:
                split = "validation" if eval_step is not None else "epoch"
                monitor.log_epoch(run.stage_index, epoch, run.step, logs, split)
                if eval_step is not None:
                    print(
                        f"{run.stage.name} epoch {epoch + 1}: validation loss {logs['loss']:.4f} "
                        + " ".join(f"{k} {v:.3f}" for k, v in logs.items() if k != "loss")
                    )

    def _checkpoint(self, run: Run) -> None:
        monitor = self.monitor
        if not monitor.healthy() and self.last_saved and os.path.isdir(self.last_saved):
            checkpoint.mark_unhealthy(self.last_saved)  # the steps since then ran from its weights too
        meta = {
            "stage": run.stage_index,
            "stage_name": run.stage.name,
            "steps_per_epoch": run.steps_per_epoch,
            "step": run.step,
            "skipped": monitor.skipped,
            "healthy": monitor.healthy(),
            "config": self.config.to_dict(),
        }
        self.last_saved = checkpoint.save(self.workdir, run.state, meta)
        monitor.checkpointed()
        self._call("after_checkpoint", run, self.last_saved)

    def recovery_advice(self) -> str:
        """After a non-finite stop: marks the checkpoint the failing steps ran from; names the healthy one."""
        if self.last_saved and os.path.isdir(self.last_saved):
            checkpoint.mark_unhealthy(self.last_saved)
        healthy = [p for p in checkpoint.list_checkpoints(self.workdir) if checkpoint.is_healthy(p)]
        if healthy:
            return (
                f"The last healthy checkpoint is {healthy[-1]}; `--resume` with a lower learning rate "
                "continues from it (it skips the checkpoints written after training went wrong)."
            )
        return (
            "No checkpoint was written before it went wrong: start again (--overwrite) with a lower "
            "learning rate."
        )
