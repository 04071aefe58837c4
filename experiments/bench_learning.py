"""Does the model learn real nuclei? Mask R-CNN from scratch on real H&E tiles against a classical baseline.

    make bench-learning DATA=/path/to/consep_train     # folder with consep_train.npz, make_pannuke_fold.py
    python experiments/bench_learning.py --data DIR [--work runs/learning] [--config ...] [--epochs N]

1. Three PanNuke-format folds from the CoNSeP tiles with the data's own script, disjoint by source image
   (images 1-8, 9-16, 17-25), in ``<work>/folds`` (never in the repository: the data may not be shared).
2. The tfds builder builds them (``all_classes``) into ``<work>/tensorflow_datasets``.
3. The ``learning`` config (a binary detector; ``--config learning_classes`` for the
   five-class one) trains from scratch on folds 1 and 2 (no validation: fold 3 is never seen).
4. The trained model is evaluated on the fold-3 folder read directly (the same command works on any other
   PanNuke-format fold: ``maskrcnn evaluate --workdir <work>/<config name> --split DIR``).
5. The classical baseline (:mod:`maskrcnn.baseline`) is tuned on folds 1 and 2 and scored on fold 3 with
   the same metric functions.
6. ``experiments/results/learning.md`` (``--out``) and ``learning_curves.png`` beside it get the figures
   and the training curves.

Every step reuses what an earlier run left in ``<work>`` (delete it to start over); training resumes from
its newest checkpoint after a crash.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
# Source images of each fold (tile names are train_<image>_<tile>); disjoint, so no tissue is shared.
FOLD_IMAGES = {1: "1-8", 2: "9-16", 3: "17-25"}
BASELINE_SAMPLE = 96  # training tiles the baseline is tuned on (spread evenly over folds 1 and 2)
# detection_min_confidence values tried on a training fold; the best bPQ there is used on fold 3.
TUNE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
TUNE_FOLD = 2


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


def build(folds_dir: str, data_dir: str, variant: str) -> None:
    import tensorflow_datasets as tfds

    from maskrcnn.pannuke import builder_class

    builder = builder_class()(config=variant, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folds_dir))


def tune_threshold(config, model, folder: str, out_dir: str) -> tuple[float, dict[float, float]]:
    """The ``detection_min_confidence`` of :data:`TUNE_THRESHOLDS` with the best bPQ on ``folder`` (a
    training fold: the test fold never chooses anything) and the bPQ of each; cached in ``out_dir``."""
    from maskrcnn.inference import evaluate

    cached = os.path.join(out_dir, "thresholds.json")
    if os.path.exists(cached):
        scores = {float(k): v for k, v in json.load(open(cached)).items()}
    else:
        scores = {}
        for t in TUNE_THRESHOLDS:
            cfg = dataclasses.replace(
                config, model=dataclasses.replace(config.model, detection_min_confidence=t)
            )
            model.set_inference_config(cfg.model)
            run = evaluate(
                cfg, model, folder, os.path.join(out_dir, f"{t:g}"), max_overlays=0, progress=False
            )
            scores[t] = float(run["bpq"])
            print(f"   detection_min_confidence {t:g}: bPQ {scores[t]:.4f} on {folder}")
        model.set_inference_config(config.model)
        with open(cached, "w") as f:
            json.dump(scores, f, indent=1)
    return max(scores, key=scores.get), scores


def train_curves(log_csv: str, out_png: str, title: str) -> list[float]:
    """Plots per-epoch means of the training loss and its parts (log scale) from the run's log.csv;
    returns the per-epoch means of the total loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    parts = ["loss", "rpn_class", "rpn_box", "class", "box", "mask"]
    epochs = sorted({int(r["epoch"]) for r in rows})
    means = {p: [np.mean([float(r[p]) for r in rows if int(r["epoch"]) == e]) for e in epochs] for p in parts}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for p in parts:
        ax.plot(np.array(epochs) + 1, means[p], label=p, linewidth=2.2 if p == "loss" else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over the epoch's logged steps)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return means["loss"]


def detection_rates(true_instances, pred_instances) -> dict:
    """Nucleus-level recall and precision at IoU > 0.5 over a fold (the matches PQ counts)."""
    from maskrcnn.evaluation import panoptic_quality

    tp = fp = fn = 0
    for true, pred in zip(true_instances, pred_instances, strict=True):
        q = panoptic_quality(true, pred)
        tp, fp, fn = tp + q.tp, fp + q.fp, fn + q.fn
    return {"recall": tp / max(tp + fn, 1), "precision": tp / max(tp + fp, 1)}


def baseline_scores(train_sources, test_source) -> dict:
    """Tunes the classical baseline on training tiles and scores it on the test fold."""
    from maskrcnn import baseline, evaluation, pannuke
    from maskrcnn.inference import mean_aji

    pool = [(s, i) for s in train_sources for i in range(len(s))]
    pick = np.linspace(0, len(pool) - 1, min(BASELINE_SAMPLE, len(pool))).round().astype(int)
    examples = [pool[k][0][pool[k][1]] for k in pick]
    start = time.time()
    params, history = baseline.tune(
        [e["image"] for e in examples], [e["instances"] for e in examples], progress=print
    )
    tune_seconds = time.time() - start
    true_inst, pred_inst, tissues, ap_inputs = [], [], [], []
    for i in range(len(test_source)):
        example = test_source[i]
        labels, scores = baseline.segment(example["image"], params)
        true_inst.append(example["instances"])
        pred_inst.append(labels)
        tissues.append(pannuke.PANNUKE_TISSUES[int(example["tissue"])])
        ids = np.arange(1, labels.max() + 1)
        ap_inputs.append(
            (
                evaluation.instances_from_label_map(example["instances"]),
                labels[None] == ids[:, None, None],
                scores,
            )
        )
    true_masks = pannuke.pannuke_masks(np.stack(true_inst), np.ones(np.shape(true_inst), np.uint8))
    pred_masks = pannuke.pannuke_masks(np.stack(pred_inst), np.ones(np.shape(pred_inst), np.uint8))
    metrics = evaluation.pannuke_metrics(true_masks, pred_masks, tissues, classes=("neoplastic",))
    return {
        "params": dataclasses.asdict(params),
        "tuned_on_images": len(examples),
        "tuning_bpq": max(score for _, score in history),
        "tune_seconds": tune_seconds,
        "bpq": metrics["bpq"],
        "aji": mean_aji(true_inst, pred_inst),
        "map50": evaluation.mean_average_precision(ap_inputs, 0.5),
        **detection_rates(true_inst, pred_inst),
    }


ANALYSIS = """
## What limits it now

Each detection change measured on its own, the anchor coverage of each assignment rule, and what the
figures say limits the result: [learning_ablation.md](learning_ablation.md).
"""


def write_results(path: str, info: dict) -> None:
    m, b, a, th = info["maskrcnn"], info["baseline"], info["anchors"], info["threshold"]
    gap = m["bpq"] - b["bpq"]
    tried = ", ".join(f"{float(t):g}: {v:.4f}" for t, v in th["bpq_by_threshold"].items())
    u = th["fold3_at_config"]
    classes = ""
    if len(m["per_class"]) > 1:
        rows = "\n".join(
            f"| {name} | {info['test_counts'].get(name, 0)} | {pq:.4f} |"
            for name, pq in m["per_class"].items()
            if info["test_counts"].get(name, 0)  # CoNSeP maps no nucleus to epithelial
        )
        classes = f"""
mPQ {m["mpq"]:.4f}. Per-class PQ (mean over the fold-3 tiles that hold the class; its nuclei in fold 3):

| class | nuclei | PQ |
|---|---:|---:|
{rows}
"""
    text = f"""# Learning benchmark: Mask R-CNN from scratch on real H&E nuclei, against a classical baseline

Command: `{info["command"]}` ({info["date"]}; {info["machine"]}).
Data: the CoNSeP training tiles of `../shared/data/consep_train` (real, hand-labelled colorectal H&E,
256 x 256; research use only, never committed) written as three PanNuke-format folds by the data's own
`make_pannuke_fold.py`, disjoint by source image: fold 1 = images {FOLD_IMAGES[1]} ({info["fold_sizes"][1]}
tiles), fold 2 = images {FOLD_IMAGES[2]} ({info["fold_sizes"][2]}), fold 3 = images {FOLD_IMAGES[3]}
({info["fold_sizes"][3]}). Classes as that script maps them (CoNSeP epithelial -> neoplastic, inflammatory,
spindle-shaped -> connective, other -> dead).

Mask R-CNN: the `{info["config"]}` config (`{info["config_path"]}`: {info["network"]}, SGD lr {info["lr"]}
with linear decay per step, {info["epochs"]} epochs, from random initialisation), trained on folds 1 + 2 in
**{info["train_minutes"]:.1f} min**, no validation; evaluated on the fold-3 folder (`maskrcnn evaluate
--workdir {info["workdir"]} --split "{info["test_fold"]}"`). Baseline: haematoxylin (colour deconvolution),
Gaussian smoothing, Otsu threshold x factor, hole filling, small-object removal, distance-transform
watershed (`maskrcnn/baseline.py`), its four parameters tuned by coordinate search on
{b["tuned_on_images"]} tiles of folds 1 + 2 (best training bPQ {b["tuning_bpq"]:.4f}, in
{b["tune_seconds"]:.0f} s): `{b["params"]}`.

## Fold 3 ({info["test_images"]} tiles, all nuclei)

| method | bPQ | AJI | mask mAP@0.5 |
|---|---:|---:|---:|
| Mask R-CNN (`{info["config"]}`, from scratch) | **{m["bpq"]:.4f}** | {m["aji"]:.4f} | {m["map50"]:.4f} |
| classical: H channel, Otsu, watershed | {b["bpq"]:.4f} | {b["aji"]:.4f} | {b["map50"]:.4f} |
| difference | {gap:+.4f} | {m["aji"] - b["aji"]:+.4f} | {m["map50"] - b["map50"]:+.4f} |

bPQ: per tile (binary: every nucleus, whatever its class), averaged over tiles with nuclei (one tissue,
so the PanNuke per-tissue mean is this mean). AJI: binary, mean over tiles with nuclei. mAP@0.5: mean
of per-tile mask AP (the baseline ranks its nuclei by mean haematoxylin density). Mask R-CNN's COCO
mask AP: {m["coco_ap"]:.4f}.

Where the nuclei are lost (nucleus-level matches at IoU > 0.5 over fold 3, the ones PQ counts):

| method | recall | precision |
|---|---:|---:|
| Mask R-CNN | {m["recall"]:.3f} | {m["precision"]:.3f} |
| classical | {b["recall"]:.3f} | {b["precision"]:.3f} |

Proposal recall (fold-3 nuclei with an inference-time proposal at IoU >= 0.5): {m["proposal_recall"]:.3f}.

Score threshold: Mask R-CNN's rows use `detection_min_confidence` {th["chosen"]:g}, the best bPQ on fold
{th["fold"]} (a training fold; fold 3 chooses nothing) of those tried ({tried}). At the config's own
{th["config"]:g}, fold 3 gives bPQ {u["bpq"]:.4f}, recall {u["recall"]:.3f}, precision {u["precision"]:.3f}.

Anchor coverage of the {a["nuclei"]} training nuclei (anchors {a["anchors"]}; `maskrcnn anchors`):
{a["covered"]:.1%} have a positive anchor, {a["mean_positives"]:.2f} positives per nucleus; {a["iou70"]:.1%}
have an anchor of IoU >= 0.7, {a["iou50"]:.1%} one of IoU >= 0.5.
{classes}
Training curves (`{info["curves"]}`, per-epoch mean of the logged training losses; epoch 1
{info["loss_first"]:.3f}, last three epochs {info["loss_last"]:.3f}):

![training curves]({info["curves"]})
{ANALYSIS if info["config"] == "learning" else ""}"""
    with open(path, "w") as f:
        f.write(text)


def command_line(args) -> str:
    """The `make bench-learning` line that repeats this run (its ARGS: what differs from the defaults)."""
    extra = [] if args.config == "learning" else ["--config", args.config]
    extra += ["--epochs", str(args.epochs)] if args.epochs else []
    extra += ["--name", args.name] if args.name else []
    extra += [f"--set {s}" for s in args.set]
    if os.path.abspath(args.out) != os.path.abspath(os.path.join(RESULTS, "learning.md")):
        extra += ["--out", os.path.relpath(args.out)]
    line = "make bench-learning DATA=" + os.path.abspath(args.data)
    return line + (f' ARGS="{" ".join(extra)}"' if extra else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", required=True, help="the consep_train folder (consep_train.npz, make_pannuke_fold.py)"
    )
    p.add_argument("--work", default="runs/learning", help="scratch folder for folds, dataset and model")
    p.add_argument("--config", default="learning", help="a preset name or a config file")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--name", help="the run's name (default: the config's); its folder is <work>/<name>")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--out", default=os.path.join(RESULTS, "learning.md"))
    args = p.parse_args(argv)

    from maskrcnn import pannuke
    from maskrcnn.config import CONFIG_DIR, StageConfig, apply_overrides, load_config
    from maskrcnn.diagnostics import anchor_coverage, proposal_recall
    from maskrcnn.inference import evaluate
    from maskrcnn.input_pipeline import FoldSource
    from maskrcnn.train.loop import train

    work = os.path.abspath(args.work)
    folds_dir, data_dir = os.path.join(work, "folds"), os.path.join(work, "tensorflow_datasets")
    print("1/5 PanNuke-format folds from the CoNSeP tiles")
    folders = make_folds(os.path.abspath(args.data), folds_dir)
    config = apply_overrides(load_config(args.config), [f"data.data_dir={data_dir!r}", *args.set])
    if args.name:
        config = dataclasses.replace(config, name=args.name)
    workdir = os.path.join(work, config.name)
    if args.epochs:
        stage = config.train.stages[0]
        config = dataclasses.replace(
            config,
            train=dataclasses.replace(
                config.train,
                stages=(StageConfig(stage.name, stage.layers, args.epochs, stage.learning_rate),),
            ),
        )
    print(f"2/5 Building them with the tfds builder into {data_dir}")
    build(folds_dir, data_dir, pannuke.dataset_config(config.data.variant))

    print(f"3/5 Training {config.name!r} on {config.data.train_split} from scratch")
    timing = os.path.join(workdir, "train_seconds.json")
    if os.path.exists(os.path.join(workdir, "model.weights.h5")) and os.path.exists(timing):
        from maskrcnn.train.workdir import load_trained

        _, model = load_trained(workdir)
        model.set_inference_config(config.model)  # the config file's inference settings, if changed since
        with open(timing) as f:
            seconds = json.load(f)["seconds"]
        print(f"   reusing the trained model in {workdir} ({seconds / 60:.1f} min)")
    else:
        previous = json.load(open(timing))["seconds"] if os.path.exists(timing) else 0.0
        start = time.time()
        model = train(config, workdir, resume=True, validate=False)
        seconds = previous + time.time() - start
        with open(timing, "w") as f:
            json.dump({"seconds": seconds}, f)

    print(
        f"4/5 Choosing the score threshold on fold {TUNE_FOLD} (a training fold), evaluating on {folders[3]}"
    )
    untuned = config.model.detection_min_confidence
    threshold, tuning = tune_threshold(config, model, folders[TUNE_FOLD], os.path.join(workdir, "tune"))
    at_default = evaluate(
        config, model, folders[3], os.path.join(workdir, "eval-fold3-untuned"), progress=False
    )
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, detection_min_confidence=threshold)
    )
    model.set_inference_config(config.model)
    metrics = evaluate(config, model, folders[3], os.path.join(workdir, "eval-fold3"))

    print("5/5 The classical baseline: tuned on folds 1 + 2, scored on fold 3")
    train_sources = [FoldSource(folders[k], config.data.variant) for k in (1, 2)]
    test_source = FoldSource(folders[3], config.data.variant)
    cached = os.path.join(work, "baseline.json")  # the baseline does not depend on the config
    if os.path.exists(cached):
        base = json.load(open(cached))
    else:
        base = baseline_scores(train_sources, test_source)
        with open(cached, "w") as f:
            json.dump(base, f, indent=1, default=float)

    coverage = {"folds 1+2": [anchor_coverage(config, folders[k]) for k in (1, 2)]}
    coverage = {
        "nuclei": sum(c["nuclei"] for c in coverage["folds 1+2"]),
        **{
            key: sum(c[key] * c["nuclei"] for c in coverage["folds 1+2"])
            / sum(c["nuclei"] for c in coverage["folds 1+2"])
            for key in ("covered", "mean_positives", "iou70", "iou50")
        },
    }
    m = config.model
    coverage["anchors"] = (
        f"scales {', '.join(f'{s:g}' for s in m.anchor_scales)} px"
        + (
            f" x octaves {', '.join(f'{o:.3g}' for o in m.anchor_octaves)}"
            if len(m.anchor_octaves) > 1
            else ""
        )
        + f" on strides {', '.join(map(str, m.anchor_strides))}, ratios "
        f"{', '.join(f'{r:g}' for r in m.anchor_ratios)}; assignment {m.rpn_assignment}"
    )
    with np.load(os.path.join(workdir, "eval-fold3", "predictions.npz")) as saved:
        rates = detection_rates(saved["true_instances"], saved["pred_instances"])
    rates["proposal_recall"] = proposal_recall(config, model, folders[3])
    with np.load(os.path.join(workdir, "eval-fold3-untuned", "predictions.npz")) as saved:
        untuned_rates = detection_rates(saved["true_instances"], saved["pred_instances"])

    counts = {}
    for i in range(len(test_source)):
        example = test_source[i]
        ids, first = np.unique(example["instances"], return_index=True)
        for c in example["classes"].ravel()[first[ids > 0]]:
            name = config.data.class_names[int(c) - 1]
            counts[name] = counts.get(name, 0) + 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    curves = os.path.splitext(os.path.abspath(args.out))[0] + "_curves.png"
    stage = config.train.stages[0]
    epoch_loss = train_curves(
        os.path.join(workdir, "log.csv"), curves, f"{config.name}: {stage.epochs} epochs on folds 1+2"
    )
    bn = "batch-norm statistics trained" if config.model.train_bn else "batch norm frozen"
    info = {
        "command": command_line(args),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU",
        "fold_sizes": {k: len(FoldSource(v, config.data.variant)) for k, v in folders.items()},
        "config": config.name,
        "config_path": os.path.relpath(
            args.config if args.config.endswith(".py") else os.path.join(CONFIG_DIR, f"{args.config}.py"),
            os.path.dirname(HERE),
        ),
        "network": (
            f"{config.model.backbone} backbone of width {config.model.backbone_width}, FPN "
            f"{config.model.fpn_channels}, {bn}, "
            f"{config.data.variant} variant ({config.data.num_classes} class(es)), "
            f"{config.data.image_size} px, batch {config.train.batch_size}"
        ),
        "curves": os.path.basename(curves),
        "lr": stage.learning_rate,
        "epochs": stage.epochs,
        "train_minutes": seconds / 60,
        "loss_first": epoch_loss[0],
        "loss_last": float(np.mean(epoch_loss[-3:])),
        "workdir": os.path.relpath(workdir),
        "test_fold": os.path.relpath(folders[3]),
        "test_images": len(test_source),
        "test_counts": counts,
        "maskrcnn": {
            "bpq": metrics["bpq"],
            "mpq": metrics["mpq"],
            "aji": metrics["aji"],
            "map50": metrics["map50"],
            "coco_ap": metrics["coco"]["ap"],
            "per_class": metrics["per_class"],
            **rates,
        },
        "anchors": coverage,
        "baseline": base,
        "threshold": {
            "fold": TUNE_FOLD,
            "bpq_by_threshold": tuning,
            "chosen": threshold,
            "config": untuned,
            "fold3_at_config": {"bpq": at_default["bpq"], "mpq": at_default["mpq"], **untuned_rates},
        },
    }
    with open(os.path.join(work, f"{config.name}.json"), "w") as f:
        json.dump(info, f, indent=1, default=float)
    write_results(args.out, info)
    print(open(args.out).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
