"""The learning benchmark's ablation: each change of issue 15 measured on fold 3 of the CoNSeP folds.

    python experiments/ablation_learning.py --work runs/ablation [--rows NAME ...]

Every row is a trained run in ``<work>/<run>`` (made by ``experiments/bench_learning.py --work <work>
--name <run> --epochs E --set ...``, the command listed beside it below; the ``r0`` run by that script at
commit b8bd4d5, today's code before the issue) evaluated on the fold-3 folder with the row's inference
overrides. Results: ``experiments/results/learning_ablation.md`` (``--out``); per-row JSON in ``<work>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_learning import detection_rates  # noqa: E402

OCTAVES = "model.anchor_octaves=(1.0,1.2599,1.5874)"  # RetinaNet's 2^0, 2^(1/3), 2^(2/3)
ANCHORS = [OCTAVES, "model.rpn_assignment='atss'"]
PROPOSALS = ["model.pre_nms_limit=1000", "model.pre_nms_per_level=True"]

# name, run folder, what the row adds, inference overrides. Rows of trained changes (each change in a run
# of its own) are still to be added: see experiments/results/learning_ablation.md.
ROWS = [
    (
        "r0",
        "r0",
        "today's recipe (commit b8bd4d5: argmax scoring, 1 anchor scale, top 1000 of all levels)",
        [],
    ),
    ("r0_scoring", "r0", "+ per-class scoring, zero-area boxes dropped (inference only)", []),
    (
        "r0_scoring_03",
        "r0",
        "+ per-class scoring at detection_min_confidence 0.3 (inference only)",
        ["model.detection_min_confidence=0.3"],
    ),
    (
        "r0_pre6000",
        "r0",
        "+ top 6000 of all levels before NMS (inference only)",
        ["model.pre_nms_limit=6000"],
    ),
    ("r0_perlevel", "r0", "+ top 1000 per level, NMS per level (inference only)", PROPOSALS),
]


# Anchor and assignment options measured by `maskrcnn anchors` on the training nuclei of fold 1.
COVERAGE = [
    ("1 scale per level, IoU 0.7/0.3 (today; Matterport)", []),
    ("1 scale, IoU 0.5/0.3", ["model.rpn_positive_iou=0.5"]),
    ("1 scale, ATSS", ["model.rpn_assignment='atss'"]),
    ("3 octaves, IoU 0.7/0.3", [OCTAVES]),
    ("3 octaves, IoU 0.6/0.3", [OCTAVES, "model.rpn_positive_iou=0.6"]),
    ("3 octaves, IoU 0.5/0.3", [OCTAVES, "model.rpn_positive_iou=0.5"]),
    ("3 octaves, ATSS (the new `learning` and `fast`)", ANCHORS),
    (
        "3 octaves, ATSS, 9 nearest locations (the ATSS authors' code)",
        [*ANCHORS, "model.atss_candidates='locations'"],
    ),
    (
        "512 px (2x upscaled), scales 16-256, IoU 0.7/0.3",
        ["data.image_size=512", "model.anchor_scales=(16,32,64,128,256)"],
    ),
    (
        "512 px, scales 16-256, 3 octaves, IoU 0.7/0.3",
        ["data.image_size=512", "model.anchor_scales=(16,32,64,128,256)", OCTAVES],
    ),
]


def coverage_table(work: str) -> str:
    from maskrcnn.config import apply_overrides, load_config
    from maskrcnn.diagnostics import anchor_coverage, format_coverage

    cached = os.path.join(work, "coverage.json")
    results = json.load(open(cached)) if os.path.exists(cached) else {}
    base = "learning"
    reset = ["model.anchor_octaves=(1.0,)", "model.rpn_assignment='iou'"]  # the options start from today's
    for label, overrides in COVERAGE:
        if label not in results:
            config = apply_overrides(load_config(base), [*reset, *overrides])
            results[label] = anchor_coverage(config, os.path.join(work, "folds", "Fold 1"))
            with open(cached, "w") as f:
                json.dump(results, f, indent=1)
    return format_coverage([(label, results[label]) for label, _ in COVERAGE])


def evaluate_row(work: str, name: str, run: str, overrides: list[str]) -> dict:
    import numpy as np

    from maskrcnn.config import apply_overrides
    from maskrcnn.diagnostics import proposal_recall
    from maskrcnn.inference import evaluate
    from maskrcnn.train.workdir import load_trained

    workdir = os.path.join(work, run)
    config, model = load_trained(workdir)
    config = apply_overrides(config, overrides)
    model.set_inference_config(config.model)
    fold3 = os.path.join(work, "folds", "Fold 3")
    out_dir = os.path.join(workdir, f"eval-ablation-{name}")
    start = time.time()
    metrics = evaluate(config, model, fold3, out_dir, max_overlays=0, progress=False)
    with np.load(os.path.join(out_dir, "predictions.npz")) as saved:
        rates = detection_rates(saved["true_instances"], saved["pred_instances"])
    state = json.load(open(os.path.join(workdir, "config.json")))
    row = {
        "bpq": metrics["bpq"],
        "mpq": metrics["mpq"],
        "map50": metrics["map50"],
        **rates,
        "proposal_recall": proposal_recall(config, model, fold3),
        "epochs": state["train"]["stages"][0]["epochs"],
        "seconds": time.time() - start,
    }
    with open(os.path.join(work, f"ablation-{name}.json"), "w") as f:
        json.dump(row, f, indent=1, default=float)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/ablation")
    p.add_argument("--rows", nargs="*", help="row names to (re)evaluate; default: every row not yet done")
    p.add_argument("--out", default=os.path.join(HERE, "results", "learning_ablation.md"))
    args = p.parse_args(argv)
    work = os.path.abspath(args.work)
    old = os.path.join(work, "learning.json")  # what bench_learning.py at b8bd4d5 measured for r0
    if os.path.exists(old) and not os.path.exists(os.path.join(work, "ablation-r0.json")):
        m = json.load(open(old))["maskrcnn"]
        row = {k: m[k] for k in ("bpq", "mpq", "map50", "recall", "precision")}
        with open(os.path.join(work, "ablation-r0.json"), "w") as f:
            json.dump({**row, "proposal_recall": float("nan"), "source": "bench_learning.py at b8bd4d5"}, f)
    for name, run, _, overrides in ROWS:
        done = os.path.exists(os.path.join(work, f"ablation-{name}.json"))
        if name == "r0":
            continue
        if not os.path.exists(os.path.join(work, run, "model.weights.h5")):
            print(f"{name}: no trained run in {work}/{run}, skipped")
            continue
        if (args.rows and name in args.rows) or (not args.rows and not done):
            print(f"{name}: evaluating {run} with {overrides or 'its own config'}")
            print(evaluate_row(work, name, run, overrides))
    lines = [
        "| row | change | bPQ | recall | precision | proposal recall | mAP@0.5 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, _, what, _ in ROWS:
        path = os.path.join(work, f"ablation-{name}.json")
        if os.path.exists(path):
            r = json.load(open(path))
            recall = r["proposal_recall"]
            recall = "as the next row" if recall != recall else f"{recall:.3f}"  # NaN: not measured
            lines.append(
                f"| {name} | {what} | {r['bpq']:.4f} | {r['recall']:.3f} | {r['precision']:.3f} "
                f"| {recall} | {r['map50']:.4f} |"
            )
    table = "\n".join(lines)
    print(table)
    coverage = coverage_table(work)
    print(coverage)
    with open(os.path.join(work, "ablation_table.md"), "w") as f:
        f.write(table + "\n\n" + coverage + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
