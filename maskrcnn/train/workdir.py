"""A training run's folder: what it holds, when it may be reused or resumed, and loading its model.

``train`` writes ``config.json`` (the config the run was trained with, enough to rebuild the model),
``model.weights.h5`` (written atomically at each stage's end), ``log.csv``, ``tensorboard/`` and
``checkpoints/``; ``maskrcnn evaluate`` and ``predict --workdir`` need only the first two.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from maskrcnn.config import Config, apply_overrides, config_from_dict
from maskrcnn.model import MaskRCNN, build_model
from maskrcnn.train import checkpoint

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
    "data.loader",  # threads or processes prepare the same batches
    "data.loader_workers",
)


def flatten_config(tree, prefix=""):
    """A config dict as ``{"section.field": value}`` (stages: ``train.stages[0].epochs``), tuples as lists."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten_config(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list | tuple) and tree and isinstance(tree[0], dict):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten_config(sub, f"{prefix}[{i}].").items()}
    return {prefix[:-1].replace(".[", "["): list(tree) if isinstance(tree, tuple) else tree}


def config_differences(old: dict, new: dict, may_change=RESUMABLE) -> list[str]:
    """Fields (``section.field``, ``train.stages[0].epochs``) whose values differ between two config dicts,
    outside ``may_change`` (by default what a resume may change; ``[*]`` matches any stage)."""
    a, b = flatten_config(old), flatten_config(new)
    allowed = [re.compile(re.escape(p).replace(r"\[\*\]", r"\[\d+\]") + "$") for p in may_change]
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
        if saved is not None:  # fields added since the checkpoint was written take their defaults
            saved = config_from_dict(saved).to_dict()
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


def save_weights(model, workdir: str) -> None:
    """Writes ``model``'s weights to ``workdir`` atomically: complete or absent, never half-written."""
    partial = os.path.join(workdir, ".tmp-" + WEIGHTS_FILE)
    model.save_weights(partial)
    os.replace(partial, os.path.join(workdir, WEIGHTS_FILE))


def load_trained(workdir: str, overrides=()) -> tuple[Config, MaskRCNN]:
    """The config and model saved by :func:`train` in ``workdir``, with ``overrides`` (``KEY=VALUE``, as
    ``--set`` gives them) applied to the config and the model's inference settings; a field the weights
    fix is refused (:meth:`MaskRCNN.set_inference_config`).

    Raises:
      FileNotFoundError if ``workdir`` lacks the config or the weights; ValueError if the weights do not fit
      the network the config describes (weights of another run, or a config edited after training).
    """
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
    if overrides:
        config = apply_overrides(config, list(overrides))
        model.set_inference_config(config.model)
    return config, model
