"""The training loop: stages, progress bars, logs, validation, checkpoints and resume.

One readable loop around the jitted step of :mod:`maskrcnn.train.step`. Every ``checkpoint_every_steps``
steps and at every epoch end the whole train state is checkpointed atomically; ``resume=True`` continues
from the newest checkpoint with the same step, schedule position, optimizer state and data order, so a
killed run continues as an uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time

import jax
import keras
from tqdm.auto import tqdm

from maskrcnn import input_pipeline
from maskrcnn.config import Config
from maskrcnn.model import LOSS_NAMES, MaskRCNN, build_model, pretrained
from maskrcnn.train import checkpoint
from maskrcnn.train.step import (
    _merge,
    data_mesh,
    decay_mask,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    replicate,
    shard_batch,
    trainable_mask,
    write_state,
)

WEIGHTS_FILE = "model.weights.h5"
CONFIG_FILE = "config.json"
# What `train` writes into a workdir: a folder holding any of these holds a run.
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, "log.csv", "init.txt", "checkpoints", "tensorboard")
# Config fields a resumed run may change (anything else must equal the checkpoint's config): how long
# each stage trains (the linear decay then stretches to the new last epoch from the step reached), its
# learning rate (to recover from a divergence), and housekeeping that does not touch the model or the
# data order.
RESUMABLE = (
    "train.stages[*].epochs",
    "train.stages[*].learning_rate",
    "train.checkpoint_every_steps",
    "train.max_consecutive_nonfinite",
    "train.init",
    "data.data_dir",
)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list | tuple) and tree and isinstance(tree[0], dict):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}[{i}].").items()}
    return {prefix[:-1].replace(".[", "["): list(tree) if isinstance(tree, tuple) else tree}


def config_differences(old: dict, new: dict) -> list[str]:
    """Fields (``section.field``, ``train.stages[0].epochs``) whose values differ between two config dicts
    and that a resume may not change."""
    a, b = _flatten(old), _flatten(new)
    allowed = [re.compile(re.escape(p).replace(r"\[\*\]", r"\[\d+\]") + "$") for p in RESUMABLE]
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and not any(p.match(key) for p in allowed)
    ]


def open_workdir(workdir: str, config: Config, *, resume: bool, overwrite: bool) -> str | None:
    """Checks ``workdir`` before anything is written into it; returns the checkpoint to resume from.

    A folder that holds a run (:data:`RUN_FILES`) is refused unless ``resume`` (continue it) or
    ``overwrite`` (delete that run first). A resume skips damaged checkpoints (newest first, saying why)
    and is refused when ``config`` differs from the checkpoint's in a field outside :data:`RESUMABLE`.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in the workdir and --overwrite deletes it: give one")
    used = [name for name in RUN_FILES if os.path.exists(os.path.join(workdir, name))]
    if overwrite:
        for name in used:
            path = os.path.join(workdir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return None
    if not resume:
        if used:
            raise ValueError(
                f"{workdir} already holds a training run ({', '.join(used)}): --resume continues it, "
                "--overwrite deletes it and starts again, or give another --workdir"
            )
        return None
    checkpoint.remove_partial(workdir)
    found = checkpoint.list_checkpoints(workdir)
    for path in reversed(found):
        why = checkpoint.problem(path)
        if why is not None:
            print(f"resume: skipping {path}, it cannot be read ({why})")
            continue
        if not checkpoint.is_healthy(path):
            print(f"resume: skipping {path}, written after the loss diverged or went non-finite")
            continue
        with open(os.path.join(path, "meta.json")) as f:
            saved = json.load(f).get("config")
        if saved is None and os.path.exists(os.path.join(workdir, CONFIG_FILE)):
            with open(os.path.join(workdir, CONFIG_FILE)) as f:  # checkpoints written before configs were
                saved = json.load(f)
        differences = config_differences(saved, config.to_dict()) if saved is not None else []
        if differences:
            raise ValueError(
                f"cannot resume {path} with a different config: {'; '.join(differences)}. Resume with the "
                f"run's own config ({os.path.join(workdir, CONFIG_FILE)}; only {', '.join(RESUMABLE)} may "
                "change), or train into another --workdir"
            )
        return path
    if found:
        raise ValueError(
            f"no checkpoint in {workdir} can be resumed from (see above); --overwrite starts again"
        )
    print(f"resume: no checkpoint in {workdir}, starting from scratch")
    return None


class NonFiniteLossError(RuntimeError):
    pass


def _step_key(seed: int, stage: int, step: int):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stage), step)


def _model_batch(batch):
    return {k: batch[k] for k in input_pipeline.MODEL_INPUTS}


class CsvLog:
    """Appends one row per logged step to ``<workdir>/log.csv`` (and keeps rows of a resumed run).

    The columns are where the row is, ``loss``, every loss part the model's ``loss_parts`` returns (the
    five Mask R-CNN losses and any a subclass adds), ``lr``, ``grad_norm``, ``skipped`` and ``seconds``;
    they are fixed by the first row (or by the header of the log a resumed run appends to).
    """

    HEAD = ("stage", "epoch", "step", "split", "loss")
    TAIL = ("lr", "grad_norm", "skipped", "seconds")

    def __init__(self, path: str):
        self.path, self.file, self.writer = path, None, None

    def write(self, row: dict):
        if self.writer is None:
            if os.path.exists(self.path) and os.path.getsize(self.path):
                with open(self.path, newline="") as f:
                    fields = next(csv.reader(f))
            else:
                parts = [k for k in row if k not in self.HEAD + self.TAIL]
                fields = [*self.HEAD, *LOSS_NAMES, *(p for p in parts if p not in LOSS_NAMES), *self.TAIL]
            new = not os.path.exists(self.path) or not os.path.getsize(self.path)
            self.file = open(self.path, "a", newline="")  # noqa: SIM115 (closed in close())
            self.writer = csv.DictWriter(self.file, fields, extrasaction="ignore")
            if new:
                self.writer.writeheader()
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


class Monitor:
    """Reads each step's metrics: running means on the progress bar, CSV and TensorBoard rows every
    ``log_every`` steps, and the count of skipped (non-finite) steps, stopping after too many in a row.

    It also judges whether training is healthy since the last checkpoint (:meth:`healthy`): no step was
    non-finite and no loss rose above ``SPIKE`` times the stage's lowest loss so far. A learning rate far
    too high blows the weights up while the loss is still finite; such checkpoints are marked, kept apart
    from the last healthy one, and skipped by a resume.
    """

    SPIKE = 10.0  # a loss 10x the stage's best is divergence, not noise (losses start within ~3x of it)

    def __init__(self, log: CsvLog, board, *, log_every: int, max_nonfinite: int):
        self.log, self.board, self.log_every, self.max_nonfinite = log, board, log_every, max_nonfinite
        self.skipped = self.in_row = 0
        self.stage = None

    def start_epoch(self, stage: int, epoch: int, steps_per_epoch: int, bar):
        if stage != self.stage:
            self.best_loss, self.window_ok, self.window_max = float("inf"), True, 0.0
        self.stage, self.epoch, self.steps_per_epoch, self.bar = stage, epoch, steps_per_epoch, bar
        self.running, self.finite_steps, self.t0 = {}, 0, time.time()

    def healthy(self) -> bool:
        """No non-finite step and no loss spike since :meth:`checkpointed` was last called."""
        return self.window_ok and self.window_max <= self.SPIKE * self.best_loss

    def checkpointed(self):
        self.window_ok, self.window_max = True, 0.0

    def record(self, step: int, metrics: dict):
        metrics = jax.device_get(metrics)
        if metrics["finite"]:
            loss = float(metrics["loss"])
            self.best_loss, self.window_max = min(self.best_loss, loss), max(self.window_max, loss)
        else:
            self.window_ok = False
        if metrics["finite"]:
            self.in_row = 0
            self.finite_steps += 1
            for k in (k for k in metrics if k not in ("lr", "grad_norm", "finite")):  # epoch means so far
                self.running[k] = self.running.get(k, 0.0) + (
                    float(metrics[k]) - self.running.get(k, 0.0)
                ) / (self.finite_steps)
        else:
            self.skipped += 1
            self.in_row += 1
            if self.in_row >= self.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.in_row} steps in a row had a non-finite loss or gradient "
                    f"(stage {self.stage}, step {step}); they left the weights unchanged. "
                    "Lower the learning rate or check the input data."
                )
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in self.running.items()}, refresh=False)
        if step % self.log_every and step % self.steps_per_epoch:
            return
        row = {k: float(v) for k, v in metrics.items() if k != "finite"}  # loss, every part, lr, grad_norm
        seconds = time.time() - self.t0
        self.log.write(
            {
                **row,
                "stage": self.stage,
                "epoch": self.epoch,
                "step": step,
                "split": "train",
                "skipped": self.skipped,
                "seconds": seconds,
            }
        )
        if self.board is not None:
            import tensorflow as tf

            with self.board.as_default(step=self.stage * 10**7 + step):
                for k, v in row.items():
                    tf.summary.scalar(f"train/{k}", v)


def _tensorboard(workdir: str):
    """A TensorBoard writer through tf.summary (TensorFlow is installed for the data side), or None."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return None
    return tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))


def make_loss_fn(model: MaskRCNN, mask: list[bool]):
    """Jitted ``(state, batch) -> losses`` for validation: no update, a fixed key for ROI sampling."""

    @jax.jit
    def losses(state, batch):
        trainable = _merge(state.trained, state.frozen, mask)
        key = jax.random.PRNGKey(0)
        parts, _ = model.stateless_call(
            trainable, state.non_trainable, batch["image"], batch, key=key, training=True
        )
        return parts

    return losses


def validation_loss(loss_fn, state, config: Config, *, max_batches: int | None = None) -> dict:
    """Mean losses of :func:`make_loss_fn` over the validation split (no augmentation)."""
    sums, count = {}, 0
    for i, batch in enumerate(input_pipeline.make_eval_iterator(config, config.data.val_split)):
        if max_batches is not None and i >= max_batches:
            break
        for name, value in loss_fn(state, _model_batch(batch)).items():  # every part of loss_parts
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
) -> MaskRCNN:
    """Trains ``config`` in ``workdir`` and returns the trained model (its weights also in ``workdir``).

    Args:
      stages: indices into ``config.train.stages`` to run (default: all, in order).
      resume: continue from the newest readable checkpoint in ``workdir`` (see :func:`open_workdir`).
      overwrite: delete the run already in ``workdir`` first; without it or ``resume`` a used workdir is
        refused.
      model: start from this model's weights instead of a fresh initialisation (or ``train.init``).
    """
    restored = open_workdir(workdir, config, resume=resume, overwrite=overwrite)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    tcfg = config.train
    if tcfg.mixed_precision:
        # bf16 activations and matmuls, float32 variables; the losses are computed in float32.
        keras.config.set_dtype_policy("mixed_bfloat16")
    mesh = data_mesh()
    keras.utils.set_random_seed(tcfg.seed)  # the same seed, the same initial weights and so the same run
    initialise = model is None and tcfg.init is not None
    if model is None:
        model = build_model(
            config.model, config.data.image_size, mini_masks=config.data.mini_mask_size is not None
        )
    steps_per_epoch = tcfg.steps_per_epoch or input_pipeline.steps_per_epoch(config)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training split {config.data.train_split!r} has fewer images than one batch "
            f"({tcfg.batch_size}); lower train.batch_size"
        )
    log = CsvLog(os.path.join(workdir, "log.csv"))
    board = _tensorboard(workdir)
    monitor = Monitor(log, board, log_every=log_every, max_nonfinite=tcfg.max_consecutive_nonfinite)
    start_stage, start_step = 0, 0
    if restored is not None:
        with open(os.path.join(restored, "meta.json")) as f:
            meta = json.load(f)
        start_stage, start_step = int(meta["stage"]), int(meta["step"])
        print(f"resume: {restored} (stage {start_stage}, step {start_step})")
        initialise = False  # the checkpoint holds every weight
    if initialise:
        report = pretrained.initialize(model, tcfg.init).summary()
        print(report)
        with open(os.path.join(workdir, "init.txt"), "w") as f:
            f.write(report + "\n")

    last_saved = restored  # the checkpoint whose weights the coming steps start from
    try:
        for s in stages if stages is not None else range(len(tcfg.stages)):
            if s < start_stage:
                continue
            stage = tcfg.stages[s]
            total_steps = stage.epochs * steps_per_epoch
            schedule = learning_rate_schedule(
                stage, steps_per_epoch, power=tcfg.lr_power, per_step=tcfg.lr_per_step
            )
            mask = trainable_mask(model, stage.layers)
            optimizer = make_optimizer(
                tcfg, schedule, [d for d, m in zip(decay_mask(model), mask, strict=True) if m]
            )
            state = init_state(model, optimizer, mask)
            step = 0
            if restored is not None and s == start_stage:
                state, _ = checkpoint.load(restored, state)
                step = start_step
                restored = None
            state = replicate(state, mesh)
            train_step = make_train_step(model, optimizer, mask, schedule)
            val_loss_fn = make_loss_fn(model, mask)
            meta = {"stage": s, "stage_name": stage.name, "steps_per_epoch": steps_per_epoch}
            while step < total_steps:
                epoch = step // steps_per_epoch
                batches = input_pipeline.make_train_iterator(
                    config, epoch=epoch, start_step=step % steps_per_epoch
                )
                bar = tqdm(
                    total=steps_per_epoch,
                    initial=step % steps_per_epoch,
                    desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}",
                    disable=not progress,
                    dynamic_ncols=True,
                )
                monitor.start_epoch(s, epoch, steps_per_epoch, bar)
                pending = None  # metrics are read one step late, so the device never waits for the host
                for batch in batches:
                    state, metrics = train_step(
                        state, shard_batch(_model_batch(batch), mesh), _step_key(tcfg.seed, s, step)
                    )
                    step += 1
                    if pending is not None:
                        monitor.record(*pending)
                    pending = (step, metrics)
                    epoch_end = step % steps_per_epoch == 0
                    if step % tcfg.checkpoint_every_steps == 0 or epoch_end or step >= total_steps:
                        monitor.record(*pending)
                        pending = None
                        if not monitor.healthy() and last_saved and os.path.isdir(last_saved):
                            # The steps since then ran from its weights: they are suspect as well.
                            checkpoint.mark_unhealthy(last_saved)
                        last_saved = checkpoint.save(
                            workdir,
                            state,
                            {
                                **meta,
                                "step": step,
                                "skipped": monitor.skipped,
                                "healthy": monitor.healthy(),
                                "config": config.to_dict(),
                            },
                        )
                        monitor.checkpointed()
                    if epoch_end or step >= total_steps:
                        break
                if pending is not None:
                    monitor.record(*pending)
                bar.close()
                if validate and step % steps_per_epoch == 0:
                    val = validation_loss(val_loss_fn, state, config)
                    log.write({**val, "stage": s, "epoch": epoch, "step": step, "split": "validation"})
                    print(
                        f"{stage.name} epoch {epoch + 1}: validation loss {val['loss']:.4f} "
                        + " ".join(f"{k} {v:.3f}" for k, v in val.items() if k != "loss")
                    )
            write_state(model, state, mask)
            partial = os.path.join(workdir, ".tmp-" + WEIGHTS_FILE)  # complete or absent, never half-written
            model.save_weights(partial)
            os.replace(partial, os.path.join(workdir, WEIGHTS_FILE))
    except NonFiniteLossError as error:
        if last_saved and os.path.isdir(last_saved):
            checkpoint.mark_unhealthy(last_saved)  # the failing steps ran from its weights
        healthy = [p for p in checkpoint.list_checkpoints(workdir) if checkpoint.is_healthy(p)]
        where = (
            f"The last healthy checkpoint is {healthy[-1]}; `--resume` with a lower learning rate continues "
            "from it (it skips the checkpoints written after training went wrong)."
            if healthy
            else "No checkpoint was written before it went wrong: start again (--overwrite) with a lower "
            "learning rate."
        )
        raise NonFiniteLossError(f"{error} {where}") from None
    finally:
        log.close()
        if board is not None:
            board.close()
    return model


def load_trained(workdir: str) -> tuple[Config, MaskRCNN]:
    """The config and model saved by :func:`train` in ``workdir``.

    Raises:
      FileNotFoundError if ``workdir`` lacks the config or the weights; ValueError if the weights do not fit
      the network the config describes (weights of another run, or a config edited after training).
    """
    from maskrcnn.config import config_from_dict

    config_path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a training run (make train)")
    try:
        with open(config_path) as f:
            config = config_from_dict(json.load(f))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{config_path} is not valid JSON ({error}): the file is damaged. It is the config the run was "
            "trained with; restore it from a copy (each checkpoint's meta.json records the stage and step)"
        ) from None
    model = build_model(
        config.model, config.data.image_size, mini_masks=config.data.mini_mask_size is not None
    )
    weights = os.path.join(workdir, WEIGHTS_FILE)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"{weights} not found: train a model into {workdir} first (make train)")
    try:
        model.load_weights(weights)
    except OSError as error:  # h5py: truncated or not an HDF5 file
        raise ValueError(
            f"{weights} cannot be read ({error}): the file is damaged or incomplete. Write it again from the "
            f"newest checkpoint with `maskrcnn train --resume --workdir {workdir}` (a finished run only "
            "rewrites the weights)"
        ) from None
    except ValueError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(
            f"{weights} does not fit the network that {config_path} describes ({first}). The weights come "
            "from a run with another config, or the config was edited after training: use the workdir of "
            "the run that made these weights, with its own config.json."
        ) from error
    return config, model
