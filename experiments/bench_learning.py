"""Does the model learn real nuclei? Mask R-CNN from scratch on real H&E tiles against a classical baseline.

    make bench-learning DATA=/path/to/consep_train     # folder with consep_train.npz, make_pannuke_fold.py
    python experiments/bench_learning.py --data DIR [--images 5632] [--config learning] [--set KEY=VALUE]
    python experiments/bench_learning.py --data DIR --images 100000 --set train.batch_size=16  # on a GPU

One run of :mod:`learning` (CoNSeP tiles as three PanNuke-format folds; the ``learning`` config trained from
scratch on folds 1 + 2 for a budget of images; the score threshold chosen on fold 2; fold 3 scored and every
nucleus followed through the model by ``maskrcnn diagnose``), and the classical pipeline (colour
deconvolution, Otsu, distance-transform watershed; :mod:`maskrcnn.baseline`) tuned on folds 1 + 2 and scored
on fold 3 with the same metric functions. Writes ``experiments/results/learning.md`` (``--out``) and the
training curves beside it; the record of the run is ``<work>/<name>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import harness
import learning
import numpy as np

DEFAULT_WORK = "runs/learning"
BASELINE_SAMPLE = 96  # training tiles the baseline is tuned on (spread evenly over folds 1 and 2)


def train_curves(log_csv: str, out_png: str, title: str) -> list[float]:
    """Plots per-epoch means of the training loss and its parts (log scale) from the run's log.csv;
    returns the per-epoch means of the total loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = learning.epoch_losses(log_csv)
    epochs = np.arange(len(means["loss"]))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for p in learning.LOSSES:
        ax.plot(epochs + 1, means[p], label=p, linewidth=2.2 if p == "loss" else 1.2)
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
        **learning.detection_rates(true_inst, pred_inst),
    }


def coverage_of(config, folders) -> dict:
    """Anchor coverage (``maskrcnn anchors``) of the training nuclei of folds 1 + 2, pooled."""
    from maskrcnn.diagnostics import anchor_coverage

    parts = [anchor_coverage(config, folders[k]) for k in (1, 2)]
    nuclei = sum(c["nuclei"] for c in parts)
    pooled = {
        key: sum(c[key] * c["nuclei"] for c in parts) / nuclei
        for key in ("covered", "mean_positives", "iou70", "iou50")
    }
    m = config.model
    octaves = (
        f" x octaves {', '.join(f'{o:.3g}' for o in m.anchor_octaves)}" if len(m.anchor_octaves) > 1 else ""
    )
    pooled["anchors"] = (
        f"scales {', '.join(f'{s:g}' for s in m.anchor_scales)} px{octaves} on strides "
        f"{', '.join(map(str, m.anchor_strides))}, ratios {', '.join(f'{r:g}' for r in m.anchor_ratios)}; "
        f"assignment {m.rpn_assignment}"
    )
    return {"nuclei": nuclei, **pooled}


def limits(record: dict) -> str:
    """What the waterfall says limits the result: the lost nuclei's buckets, largest first."""
    from maskrcnn.diagnostics import NUCLEUS_BUCKETS, PREDICTED_BUCKETS

    w = record["waterfall"]
    lost = sorted((b for b in NUCLEUS_BUCKETS if b != "matched"), key=lambda b: -w[b])
    parts = ", ".join(f"{b} {w[b] / w['nuclei']:.1%}" for b in lost)
    false = ", ".join(f"{b} {w[b]}" for b in sorted(PREDICTED_BUCKETS, key=lambda b: -w[b]))
    unmatched = w["predicted"] - w["matched"]
    return (
        f"Of the {w['nuclei']} fold-3 nuclei, {w['matched'] / w['nuclei']:.1%} are matched; the rest are "
        f"lost at (largest first): {parts}. Of the {w['predicted']} predicted instances, {unmatched} match "
        f"no nucleus: {false}."
    )


def _row(label: str, m: dict, keys: tuple[str, ...]) -> str:
    cells = [f"{m[k]:.4f}" if k in m and m[k] == m[k] else "" for k in keys]
    return f"| {label} | " + " | ".join(cells) + " |"


def write_results(
    path: str, record: dict, base: dict, coverage: dict, curves: str, losses: list, command: str
):
    from maskrcnn.diagnostics import format_waterfall

    m, u, t = record["fold3"], record["fold3_at_config_threshold"], record["trained_on"]
    tried = ", ".join(f"{float(k):g}: {v:.4f}" for k, v in record["bpq_by_threshold"].items())
    classes = ""
    if len(m["per_class"]) > 1:
        rows = "\n".join(f"| {name} | {pq:.4f} |" for name, pq in m["per_class"].items() if pq == pq)
        classes = f"\nmPQ {m['mpq']:.4f}. Per-class PQ on fold 3:\n\n| class | PQ |\n|---|---:|\n{rows}\n"
    overrides = ", ".join(f"`{o}`" for o in record["overrides"])
    keys = ("bpq", "recall", "precision", "dq", "sq", "aji", "map50")
    table = "\n".join(
        [
            "| method | bPQ | recall | precision | DQ | SQ | AJI | mask mAP@0.5 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            _row(f"Mask R-CNN (`{record['name']}`)", m, keys),
            _row("classical: H channel, Otsu, watershed", base, keys),
        ]
    )
    text = f"""# Learning benchmark: Mask R-CNN from scratch on real H&E nuclei, against a classical baseline

{harness.header(command, record)}
Trained on {t["device"]} ({t["date"]}, commit {t["commit"]}): **{record["images"]:,} images**
({record["steps"]:,} steps of {record["batch"]}) in **{record["train_minutes"]:.1f} min**; a train step takes
{record["step_seconds"]:.3f} s on the device above (median of {learning.TIMED_STEPS}, timed alone after
training).

Data: the CoNSeP training tiles of `../shared/data/consep_train` (real, hand-labelled colorectal H&E,
256 x 256; research use only, never committed) as three PanNuke-format folds by the data's own
`make_pannuke_fold.py`, disjoint by source image: fold 1 = images {learning.FOLD_IMAGES[1]}, fold 2 = images
{learning.FOLD_IMAGES[2]}, fold 3 = images {learning.FOLD_IMAGES[3]}. Mask R-CNN: the `{record["config"]}`
config {"with " + overrides if overrides else "as shipped"}, from random weights, on folds 1 + 2, no
validation; scored on the fold-3 folder (`maskrcnn evaluate --workdir {record["workdir"]} --split
"{record["folds"]["3"]}"`). Baseline: haematoxylin (colour deconvolution), Gaussian smoothing, Otsu threshold
x factor, hole filling, small-object removal, distance-transform watershed (`maskrcnn/baseline.py`), its
four parameters tuned on {base["tuned_on_images"]} tiles of folds 1 + 2 (best training bPQ
{base["tuning_bpq"]:.4f}): `{base["params"]}`.

## Fold 3 (all nuclei)

{table}

bPQ: per tile, every nucleus whatever its class, averaged over tiles with nuclei (one tissue, so the
PanNuke per-tissue mean is this mean). Recall, precision, DQ and SQ: the pairs PQ counts (IoU > 0.5),
pooled over fold 3. Mask R-CNN's COCO mask AP: {m["coco_ap"]:.4f}; proposal recall (nuclei with an
inference-time proposal at box IoU >= 0.5): {m["proposal_recall"]:.3f}.
{classes}
Score threshold: `detection_min_confidence` {record["threshold"]:g}, the best bPQ on fold
{learning.TUNE_FOLD} (a training fold; fold 3 chooses nothing) of those tried ({tried}). At the config's
own {u["threshold"]:g}, fold 3 gives bPQ {u["bpq"]:.4f}, recall {u["recall"]:.3f}, precision
{u["precision"]:.3f}.

## Where the nuclei are lost (`maskrcnn diagnose`, fold 3, threshold {record["threshold"]:g})

{format_waterfall(record["waterfall"])}

{limits(record)} Each bucket is the first stage that loses the nucleus (`maskrcnn diagnose --help`;
`maskrcnn/diagnostics.py`); each recipe choice measured against these buckets, the rows against this
preset: [learning_ablation_fold2_v5.md](learning_ablation_fold2_v5.md) (the earlier presets' rows: the
pages named in the README's "Does it learn real nuclei?").

Anchor coverage of the {coverage["nuclei"]} training nuclei (anchors {coverage["anchors"]};
`maskrcnn anchors`): {coverage["covered"]:.1%} have a positive anchor, {coverage["mean_positives"]:.2f}
positives per nucleus; {coverage["iou70"]:.1%} have an anchor of IoU >= 0.7, {coverage["iou50"]:.1%} one of
IoU >= 0.5.

Training curves (`{os.path.basename(curves)}`, per-epoch mean of the logged training losses; first epoch
{losses[0]:.3f}, last three {np.mean(losses[-3:]):.3f}):

![training curves]({os.path.basename(curves)})
"""
    harness.write(path, text)


def command_line(args) -> str:
    """The `make bench-learning` line that repeats this run (its ARGS: what differs from the defaults)."""
    extra = [] if args.config == "learning" else ["--config", args.config]
    extra += [] if args.images == learning.DEFAULT_IMAGES else ["--images", str(args.images)]
    extra += [] if os.path.abspath(args.work) == os.path.abspath(DEFAULT_WORK) else ["--work", args.work]
    extra += ["--name", args.name] if args.name else []
    extra += [f"--set {s}" for s in args.set]
    if os.path.abspath(args.out) != os.path.abspath(os.path.join(harness.RESULTS, "learning.md")):
        extra += ["--out", os.path.relpath(args.out)]
    line = "make bench-learning DATA=" + os.path.abspath(args.data)
    return line + (f' ARGS="{" ".join(extra)}"' if extra else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", required=True, help="the consep_train folder (consep_train.npz, make_pannuke_fold.py)"
    )
    p.add_argument("--work", default=DEFAULT_WORK, help="scratch folder for folds, dataset and runs")
    p.add_argument("--config", default="learning", help="a preset name or a config file")
    p.add_argument("--images", type=int, default=learning.DEFAULT_IMAGES, help="training budget in images")
    p.add_argument("--name", help="the run's name (default: the config's); its folder is <work>/<name>")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--out", default=os.path.join(harness.RESULTS, "learning.md"))
    args = p.parse_args(argv)

    from maskrcnn.config import apply_overrides, load_config
    from maskrcnn.input_pipeline import FoldSource

    record = learning.run(
        args.data, args.work, args.config, name=args.name, images=args.images, overrides=args.set
    )
    folders = {int(k): v for k, v in record["folds"].items()}  # JSON keys are strings
    config = apply_overrides(load_config(args.config), args.set)

    cached = os.path.join(args.work, "baseline.json")  # the baseline does not depend on the config
    if os.path.exists(cached):
        base = json.load(open(cached))
    else:
        print("The classical baseline: tuned on folds 1 + 2, scored on fold 3")
        sources = {k: FoldSource(folders[k], config.data.variant) for k in (1, 2, 3)}
        base = baseline_scores([sources[1], sources[2]], sources[3])
        with open(cached, "w") as f:
            json.dump(base, f, indent=1, default=float)
    base.setdefault("recall", float("nan"))
    base.setdefault("precision", float("nan"))

    curves = os.path.splitext(os.path.abspath(args.out))[0] + "_curves.png"
    losses = train_curves(
        os.path.join(record["workdir"], "log.csv"), curves, f"{record['name']}: {record['images']:,} images"
    )
    write_results(args.out, record, base, coverage_of(config, folders), curves, losses, command_line(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
