"""The training loop: stages, progress bars, logs, validation, checkpoints and resume.

One readable loop around the jitted step of :mod:`maskrcnn.train.step`. Every ``checkpoint_every_steps``
steps and at every epoch end the whole train state is checkpointed atomically; ``resume=True`` continues
from the newest checkpoint with the same step, schedule position, optimizer state and data order, so a
killed run continues as an uninterrupted one would.
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
from maskrcnn.train.log import CsvLog, Monitor, NonFiniteLossError, tensorboard_writer
from maskrcnn.train.step import _merge, data_mesh, prepare_stage, replicate, shard_batch, write_state
from maskrcnn.train.workdir import CONFIG_FILE, open_workdir, save_weights


def _step_key(seed: int, stage: int, step: int):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stage), step)


def _model_batch(batch):
    return {k: batch[k] for k in input_pipeline.MODEL_INPUTS}


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
    board = tensorboard_writer(workdir)
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
            mask, _, _, state, train_step = prepare_stage(model, tcfg, stage, steps_per_epoch)
            step = 0
            if restored is not None and s == start_stage:
                state, _ = checkpoint.load(restored, state)
                step = start_step
                restored = None
            state = replicate(state, mesh)
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
            save_weights(model, workdir)
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
