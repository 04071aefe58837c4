"""One learning run on real nuclei at a budget of images: train from scratch, choose the score threshold on a
training fold, score fold 3, follow every nucleus through the model. Shared by ``bench_learning.py`` (the
benchmark page) and ``ablation_learning.py`` (one row per recipe choice).

Data: the CoNSeP training tiles (real, hand-labelled H&E; ``../shared/data/consep_train``), written as three
PanNuke-format folds disjoint by source image with the data's own ``make_pannuke_fold.py`` and built with
the tfds builder, all under ``<work>`` (never in the repository: the tiles may not be shared). A run trains on
folds 1 + 2, chooses ``detection_min_confidence`` on fold 2 and reports fold 3, which chooses nothing.

The budget is images seen (steps x batch), not minutes, so recipes compare at equal data on any machine; the
record keeps the device, batch, steps, images and wall time beside every figure. Every step reuses what an
earlier run left in ``<work>`` (delete a run's folder to redo it); training resumes after a crash.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time

import harness
import numpy as np

FOLD_IMAGES = {1: "1-8", 2: "9-16", 3: "17-25"}  # source images of each fold (tiles train_<image>_<k>)
DEFAULT_IMAGES = 5632  # the CPU budget: 1,408 steps of 4 tiles (22 passes over folds 1 + 2)
TUNE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # detection_min_confidence values tried on the tuning fold
TUNE_FOLD = 2
TIMED_STEPS = 8  # train steps timed after training, the median reported


LOSSES = ("loss", "rpn_class", "rpn_box", "class", "box", "mask")  # the columns of a run's log.csv


def epoch_losses(log_csv: str) -> dict[str, list[float]]:
    """Each training loss of :data:`LOSSES`, the mean of each epoch's logged steps, from a run's log.csv."""
    with open(log_csv) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    epochs = sorted({int(r["epoch"]) for r in rows})
    return {
        p: [float(np.mean([float(r[p]) for r in rows if int(r["epoch"]) == e])) for e in epochs]
        for p in LOSSES
    }


def make_folds(data: str, out: str) -> dict[int, str]:
    """Writes the three folds with the data's script; returns fold -> folder."""
    script, npz = os.path.join(data, "make_pannuke_fold.py"), os.path.join(data, "consep_train.npz")
    for path in (script, npz):
        if not os.path.isfile(path):
            raise SystemExit(f"{path} not found: --data must be the consep_train folder (see its README.md)")
    folders = {}
    for fold, images in FOLD_IMAGES.items():
        folder = os.path.join(out, f"Fold {fold}")
        done = os.path.join(folder, ".complete")
        if not os.path.exists(done):
            cmd = [sys.executable, script, "--in", npz, "--out", out, "--fold", str(fold), "--images", images]
            subprocess.run(cmd, check=True)
            open(done, "w").close()
        folders[fold] = folder
    return folders


def prepare_data(data: str, work: str, variant: str) -> dict[int, str]:
    """The fold folders, and the tfds dataset built from them into ``<work>/tensorflow_datasets``."""
    import tensorflow_datasets as tfds

    from maskrcnn import pannuke
    from maskrcnn.datasets.pannuke import Builder

    folders = make_folds(os.path.abspath(data), os.path.join(work, "folds"))
    builder = Builder(
        config=pannuke.dataset_config(variant), data_dir=os.path.join(work, "tensorflow_datasets")
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.path.join(work, "folds"))
    )
    return folders


def with_budget(config, images: int):
    """``config`` with its one stage trained on ``images`` images: whole passes over the training split
    when the budget holds a whole number of them, else one epoch of ``images / batch`` steps."""
    from maskrcnn import input_pipeline
    from maskrcnn.config import StageConfig

    if len(config.train.stages) != 1:
        raise SystemExit(
            f"config {config.name!r} has {len(config.train.stages)} stages; the budget needs one"
        )
    batch = config.train.batch_size
    steps = -(-images // batch)
    natural = input_pipeline.steps_per_epoch(config)
    epochs, per_epoch = (steps // natural, None) if steps % natural == 0 else (1, steps)
    stage = config.train.stages[0]
    train = dataclasses.replace(
        config.train,
        stages=(StageConfig(stage.name, stage.layers, epochs, stage.learning_rate),),
        steps_per_epoch=per_epoch,
    )
    return dataclasses.replace(config, train=train)


def budget_of(config) -> dict:
    from maskrcnn import input_pipeline

    steps_per_epoch = config.train.steps_per_epoch or input_pipeline.steps_per_epoch(config)
    steps = config.train.stages[0].epochs * steps_per_epoch
    return {"batch": config.train.batch_size, "steps": steps, "images": steps * config.train.batch_size}


def tune_threshold(config, model, folder: str, out_dir: str) -> tuple[float, dict[float, float]]:
    """The ``detection_min_confidence`` of :data:`TUNE_THRESHOLDS` with the best bPQ on ``folder`` (a
    training fold) and the bPQ of each; cached in ``out_dir``."""
    from maskrcnn.inference import evaluate

    cached = os.path.join(out_dir, "thresholds.json")
    if os.path.exists(cached):
        scores = {float(k): v for k, v in json.load(open(cached)).items()}
    else:
        scores = {}
        for t in TUNE_THRESHOLDS:
            cfg = with_threshold(config, t)
            model.set_inference_config(cfg.model)
            run = evaluate(
                cfg, model, folder, os.path.join(out_dir, f"{t:g}"), max_overlays=0, progress=False
            )
            scores[t] = float(run["bpq"])
            print(f"   detection_min_confidence {t:g}: bPQ {scores[t]:.4f} on {folder}")
        model.set_inference_config(config.model)
        os.makedirs(out_dir, exist_ok=True)
        with open(cached, "w") as f:
            json.dump(scores, f, indent=1)
    return max(scores, key=scores.get), scores


def with_threshold(config, threshold: float):
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, detection_min_confidence=threshold)
    )


def detection_rates(true_instances, pred_instances) -> dict:
    """Nucleus-level recall, precision, detection quality DQ and segmentation quality SQ over a fold, all
    from the pairs PQ counts (IoU > 0.5), pooled over its images."""
    from maskrcnn.evaluation import panoptic_quality

    tp = fp = fn = 0
    iou_sum = 0.0
    for true, pred in zip(true_instances, pred_instances, strict=True):
        q = panoptic_quality(true, pred)
        tp, fp, fn = tp + q.tp, fp + q.fp, fn + q.fn
        iou_sum += q.sq * (q.tp + 1e-6) if q.tp else 0.0  # get_fast_pq's SQ carries + 1e-6
    return {
        "recall": tp / max(tp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "dq": tp / max(tp + 0.5 * fp + 0.5 * fn, 1),
        "sq": iou_sum / max(tp, 1),
    }


def train_stepper(config, model):
    """A function that runs one train step of ``config`` from ``model``'s weights (a fresh optimizer state)
    on a real training batch and returns its seconds; the step is compiled before it is returned."""
    import jax

    from maskrcnn import input_pipeline
    from maskrcnn.train.step import prepare_stage

    batch = next(input_pipeline.make_train_iterator(config, epoch=0))
    batch = {k: batch[k] for k in input_pipeline.MODEL_INPUTS}
    stage = prepare_stage(model, config.train, config.train.stages[0], 1)
    key, state = jax.random.PRNGKey(0), stage.state

    def one() -> float:
        nonlocal state
        (state, _), seconds = harness.timed(stage.step, state, batch, key)
        return seconds

    one()  # compile
    return one


def step_seconds(config, model) -> float:
    """Median seconds of a train step of ``config`` on a real training batch, from ``model``'s weights,
    timed after its compile with nothing else in this process running (:data:`TIMED_STEPS` steps)."""
    one = train_stepper(config, model)
    return harness.median([one() for _ in range(TIMED_STEPS)])


REUSE_UNCOMPARED = ("name", "data.data_dir")  # a run folder copied, renamed or moved is the same run


def check_reused(workdir: str, saved, config) -> None:
    """Refuses to score the run in ``workdir`` as ``config`` when it was trained with another config
    (``saved``: its config.json), such as the preset before an edit: its figures would be reported as a
    config it is not. Only the run's name and its dataset folder may differ."""
    from maskrcnn.train.workdir import config_differences

    changed = config_differences(saved.to_dict(), config.to_dict(), may_change=REUSE_UNCOMPARED)
    if changed:
        raise SystemExit(
            f"{workdir} was trained with another config than the one asked for ({'; '.join(changed)}): "
            "move the folder away to train it again, or ask for the config it was trained with (--set)"
        )


def run(data: str, work: str, config_name: str, *, name: str | None, images: int, overrides=()) -> dict:
    """Trains (or reuses) one run and scores it; returns its record, also saved as ``<work>/<name>.json``.

    The record: where it ran (:func:`harness.where`), the config's name, overrides and budget, training
    minutes and the step time, the fold-2 threshold, the fold-3 metrics at that threshold and at the config's
    own, proposal recall and the waterfall of ``maskrcnn diagnose``.
    """
    from maskrcnn.config import apply_overrides, load_config
    from maskrcnn.diagnostics import diagnose, proposal_recall
    from maskrcnn.inference import evaluate
    from maskrcnn.train.loop import train
    from maskrcnn.train.workdir import load_trained

    work = os.path.abspath(work)
    config = load_config(config_name)
    config = apply_overrides(
        config, [f"data.data_dir={os.path.join(work, 'tensorflow_datasets')!r}", *overrides]
    )
    folders = prepare_data(data, work, config.data.variant)
    config = with_budget(dataclasses.replace(config, name=name or config.name), images)
    workdir = os.path.join(work, config.name)
    record_path = os.path.join(work, f"{config.name}.json")

    timing = os.path.join(workdir, "train_seconds.json")
    if os.path.exists(os.path.join(workdir, "model.weights.h5")) and os.path.exists(timing):
        saved, model = load_trained(workdir)
        check_reused(workdir, saved, config)
        model.set_inference_config(config.model)
        trained = json.load(open(timing))
        print(f"{config.name}: reusing the trained model in {workdir}")
    else:
        previous = json.load(open(timing))["seconds"] if os.path.exists(timing) else 0.0
        print(f"{config.name}: training {budget_of(config)} on folds 1 + 2 from scratch")
        start = time.time()
        model = train(config, workdir, resume=True, validate=False)
        trained = {"seconds": previous + time.time() - start, **harness.where()}
        with open(timing, "w") as f:
            json.dump(trained, f)

    print(f"{config.name}: threshold on fold {TUNE_FOLD}, then fold 3")
    untuned = config.model.detection_min_confidence
    threshold, tuning = tune_threshold(config, model, folders[TUNE_FOLD], os.path.join(workdir, "tune"))
    fold3 = folders[3]
    at_config = evaluate(config, model, fold3, os.path.join(workdir, "eval-fold3-untuned"), progress=False)
    untuned_rates = _rates(os.path.join(workdir, "eval-fold3-untuned"))
    config = with_threshold(config, threshold)
    model.set_inference_config(config.model)
    metrics = evaluate(config, model, fold3, os.path.join(workdir, "eval-fold3"), progress=False)
    waterfall = diagnose(config, model, fold3, progress=False)
    record = {
        "name": config.name,
        "config": config_name,
        "overrides": list(overrides),
        **budget_of(config),
        "train_minutes": trained["seconds"] / 60,
        "trained_on": {k: trained.get(k, "not recorded") for k in ("date", "device", "host", "commit")},
        "step_seconds": step_seconds(config, model),
        **harness.where(),
        "threshold": threshold,
        "bpq_by_threshold": tuning,
        "fold3": {
            "bpq": metrics["bpq"],
            "mpq": metrics["mpq"],
            "aji": metrics["aji"],
            "map50": metrics["map50"],
            "coco_ap": metrics["coco"]["ap"],
            "per_class": metrics["per_class"],
            **_rates(os.path.join(workdir, "eval-fold3")),
            "proposal_recall": proposal_recall(config, model, fold3),
        },
        "fold3_at_config_threshold": {
            "threshold": untuned,
            "bpq": at_config["bpq"],
            "mpq": at_config["mpq"],
            **untuned_rates,
        },
        "waterfall": waterfall,
        "workdir": os.path.relpath(workdir),
        "folds": {str(k): os.path.relpath(v) for k, v in folders.items()},
    }
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1, default=float)
    return record


def _rates(eval_dir: str) -> dict:
    with np.load(os.path.join(eval_dir, "predictions.npz")) as saved:
        return detection_rates(saved["true_instances"], saved["pred_instances"])
