"""The learning benchmark's ablation: each recipe choice, on its own, at an equal budget of images.

    python experiments/ablation_learning.py --data DIR [--images 5632] [--rows base iou1 ...]
    python experiments/ablation_learning.py --data DIR --rows preset sgd --seed 1   # another draw
    python experiments/ablation_learning.py --data DIR --time [--rows ...]   # step vs base, one run
    python experiments/ablation_learning.py --data DIR --page   # the page again from the records, no training
    python experiments/ablation_learning.py --data DIR --page --keep OTHER_records/lr2x-5632.json preset-5632
    python experiments/ablation_learning.py --data DIR --images 100000 --set train.batch_size=16   # GPU

Every row is one run of :mod:`learning` (the ``learning`` config with the row's overrides, trained from
scratch on folds 1 + 2 for ``--images`` images, the threshold chosen on fold 2, fold 3 scored and every
nucleus followed by ``maskrcnn diagnose``), kept in ``<work>/<row>-<images>/`` and ``<work>/<row>-<images>
.json`` (``-seed<N>`` after the images for ``--seed N``) and judged against ``preset`` of the same budget
and seed; a row already run is read back, not trained again. The page is written from the records kept
beside it in the repository (``<out>_records/``: each record with its run's config and last class loss,
and the step times of ``--time``), so a clone without the work folder writes it again; a row of the page
whose record is found in neither is refused, not dropped. A run of another page whose config is a row's
today may be kept as that row's record (``--keep RECORD RUN``), with ``copied_from`` saying where it
trained (the page lists it).
``--time`` builds the rows' train steps and ``base``'s in one process and times them in turn over rounds
(harness.rounds), so each ratio to ``base`` shares the machine's state; a row timed again replaces its
earlier ratio, the others stay. Writes ``experiments/results/learning_ablation.md`` (``--out``) with every
row found for every budget.
``--scoring RUN ...`` scores trained runs of the work folder with the RPN's objectness
(``model.detection_objectness_weight``, chosen with the threshold on fold 2) and writes
``experiments/results/learning_scoring.md`` (``--scoring-out``) alone; ``--inference RUN ...`` scores them
with each of ``INFERENCE_VARIANTS`` (``--variants``: some of them; more proposals, the RPN's NMS, test-time
flips, rescoring; chosen the same way, with the fold-3 waterfall's no_proposal and low_score shares) and
writes ``experiments/results/learning_inference.md`` (``--inference-out``) alone.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import sys

# Before keras is imported (time_rows imports it ahead of maskrcnn, which would set it too late).
os.environ.setdefault("KERAS_BACKEND", "jax")

import harness  # noqa: E402
import learning  # noqa: E402
import numpy as np  # noqa: E402

# name, what it changes, its overrides of the `learning` config. Each row is `preset` (the config as shipped)
# with one change, and is judged against `preset` trained with the same budget and seed. The rows against the
# preset with a box head 128 wide (box1024, which made it 1024, and heads2x among them) are in
# learning_ablation_box128.md, a page their records can no longer rebuild (check_record). The rows trained
# against this preset before the records were kept in the repository (2026-12-07) are in
# learning_ablation_fold2.md; their records went with the machine that trained them. The rows against the
# preset with SGD from 2e-2 (adam, which made it Adam from 1e-3, among them) are in
# learning_ablation_fold2_v2.md, whose records check_record now refuses; the rows against the preset with
# Adam from 1e-3 (lr2x, which made it 2e-3, among them) are in learning_ablation_fold2_v3.md, frozen the same
# way. The v4 page's preset and lrhalf rows are v3's lr2x and preset runs (--keep). The rows against the
# preset with the RPN's sampled cross-entropy (focal, which made it the focal loss, among them) are in
# learning_ablation_fold2_v4.md, frozen the same way; the v5 page's sampled rows are v4's preset runs, and its
# preset of seed 1 is v4's focal run (--keep).
REFERENCE = "preset"
ROWS = [
    (
        "preset",
        "the `learning` config as shipped (ROIs pooled from P2, box head 1024 wide, the RPN's focal loss, "
        "Adam from 2e-3)",
        [],
    ),
    # The rows of learning_ablation.md (commit 5a620ee) changed the `learning` config of then, which levelled
    # ROIs from a canonical size of 56 (`base`: the reference of those rows and of the step ratios).
    (
        "base",
        "ROIs levelled from a canonical size of 56 (224): `learning` before `p2` was kept",
        ["model.roi_canonical_size=56.0"],
    ),
    (
        "iou1",
        "one anchor octave a level and IoU assignment 0.7/0.3 (before issue 15)",
        ["model.anchor_octaves=(1.0,)", "model.rpn_assignment='iou'"],
    ),
    (
        "iou3",
        "IoU assignment 0.7/0.3 instead of ATSS, three octaves kept (`iou1` without its octave change)",
        ["model.rpn_assignment='iou'"],
    ),
    ("scale2", "input upscaled 2x: 512 px, anchors and ROI levels follow", ["data.scale=2.0"]),
    (
        "p2",
        "every nucleus pooled from P2 (`roi_canonical_size` 56 -> 224)",
        ["model.roi_canonical_size=224.0"],
    ),
    (
        "rois256",
        "256 sampled ROIs a tile instead of 128 (42 -> 84 positives)",
        ["model.train_rois_per_image=256"],
    ),
    ("pos50", "half the sampled ROIs positive instead of a third", ["model.roi_positive_ratio=0.5"]),
    (
        "roipos40",
        "a sampled ROI is foreground from box IoU 0.4 with a nucleus (0.5)",
        ["model.roi_positive_iou=0.4"],
    ),
    (
        "posnuc",
        "the sampled positives drawn evenly over the nuclei, not over their proposals (uniform)",
        ["model.roi_positive_sampling='per_nucleus'"],
    ),
    (
        "props3000",
        "proposals from the 3,000 best anchors a level (1,000): 1,024 a tile in training (512), 1,536 in "
        "inference (768)",
        [
            "model.pre_nms_limit=3000",
            "model.post_nms_rois_training=1024",
            "model.post_nms_rois_inference=1536",
        ],
    ),
    (
        "context2",
        "the box head pools each ROI's box doubled about its centre (the box itself): context around "
        "small nuclei",
        ["model.box_context=2.0"],
    ),
    ("box128", "box head 128 wide (1024): the preset before 2026-12-06", ["model.box_head_width=128"]),
    (
        "rpn512",
        "512 sampled anchors a tile for the RPN instead of 256 (up to 256 positives)",
        ["model.rpn_train_anchors_per_image=512"],
    ),
    (
        "sampled",
        "the RPN's objectness learned from 256 anchors sampled a tile with cross-entropy, its boxes from "
        "their positives (every labelled anchor, focal loss): the preset before 2026-12-08",
        ["model.rpn_loss='sampled'"],
    ),
    (
        "prior01",
        "the RPN's objectness starts at 0.01 for every anchor, RetinaNet's prior for its focal loss (0.5: "
        "zero biases)",
        ["model.rpn_object_prior=0.01"],
    ),
    ("mask128", "mask head 128 wide (64)", ["model.mask_head_width=128"]),
    (
        "wide2x",
        "backbone 32 and FPN 128 wide (16, 64)",
        ["model.backbone_width=32", "model.fpn_channels=128"],
    ),
    (
        "deep50",
        "backbone of ResNet50's depth, 3, 4, 6 and 3 bottlenecks a stage (1, 1, 1, 1), width 16 kept",
        ["model.backbone_blocks=(3,4,6,3)"],
    ),
    (
        "lrhalf",
        "learning rate from 1e-3 (2e-3), decaying linearly per step to 0: the preset of "
        "learning_ablation_fold2_v3.md",
        ["train.stages[0].learning_rate=1e-3"],
    ),
    (
        "lr2x",
        "learning rate from 4e-3 (2e-3), decaying linearly per step to 0",
        ["train.stages[0].learning_rate=4e-3"],
    ),
    (
        "sgd",
        "SGD with momentum 0.9 from 2e-2 instead of Adam (b1 0.9, b2 0.999) from 2e-3, decaying linearly "
        "per step to 0; the same clipping and L2 decay: the preset before 2026-12-07",
        ["train.optimizer='sgd'", "train.stages[0].learning_rate=2e-2"],
    ),
    (
        "maskpool7",
        "mask head pools 7x7 (14x14), masks 14x14",
        ["model.mask_pool_size=7", "model.mask_size=14"],
    ),
    (
        "gtprops",
        "the nuclei's own boxes offered as ROI candidates beside the proposals (torchvision's and "
        "detectron2's default; Matterport's: proposals only)",
        ["model.add_gt_as_proposals=True"],
    ),
]
ROW_NAMES = [name for name, _, _ in ROWS]  # no "-": it separates a run's row, images and seed
TIME_ROUNDS = 5
# --scoring: detection scores with the RPN's objectness (model.detection_objectness_weight), at thresholds,
# chosen on fold 2 and reported on fold 3; inference only, on runs already trained.
OBJECTNESS_WEIGHTS = (0.0, 0.25, 0.5, 0.75)
SCORING_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
# --inference: what a trained model can change at inference alone (maskrcnn.model.INFERENCE_FIELDS), each
# variant one change from the run's own settings, judged like a row (threshold and choice on fold 2).
INFERENCE_VARIANTS = [
    ("as trained", "the run's own inference settings", {}),
    (
        "proposals1536",
        "1,536 proposals a tile after the RPN's NMS (`learning`: 768)",
        {"post_nms_rois_inference": 1536},
    ),
    (
        "proposals1536pre3000",
        "1,536 proposals a tile from the 3,000 best anchors of each level (768 from 1,000): the budget of "
        "proposals as a whole",
        {"post_nms_rois_inference": 1536, "pre_nms_limit": 3000},
    ),
    (
        "pre4000",
        "proposals from the 4,000 best anchors of each level (1,000): at `data.scale` 2 a nucleus covers "
        "four times the anchors of its level, so this is the budget per nucleus of 1,000 at scale 1",
        {"pre_nms_limit": 4000},
    ),
    (
        "rpnnms05",
        "the RPN's NMS at IoU 0.5 (0.7): the 768 proposals spread over more nuclei",
        {"rpn_nms_threshold": 0.5},
    ),
    (
        "flips",
        "test-time flips: four mirrored views, boxes voted, masks averaged (`model.test_time_flips`)",
        {"test_time_flips": True},
    ),
    (
        "rescore",
        "each ROI scored by the mean of the box head's probabilities on it and on its refined box "
        "(`model.rescore_refined_boxes`)",
        {"rescore_refined_boxes": True},
    ),
]
INFERENCE_NAMES = [name for name, _, _ in INFERENCE_VARIANTS]
INFERENCE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)


def run_name(row: str, images: int, seed: int = 0) -> str:
    """``<row>-<images>``, and ``-seed<N>`` for a run trained with ``train.seed`` N other than 0."""
    return f"{row}-{images}" + (f"-seed{seed}" if seed else "")


def parse_run_name(name: str) -> tuple[str, int]:
    """(row, seed) of a :func:`run_name`."""
    row, _, *rest = name.split("-")
    return row, int(rest[0].removeprefix("seed")) if rest else 0


def seed_overrides(seed: int) -> list[str]:
    """The override of a run with ``train.seed`` ``seed`` (none for the default 0)."""
    return [f"train.seed={seed}"] if seed else []


def overrides_of(row: str, extra=()) -> list[str]:
    return [*dict((n, o) for n, _, o in ROWS)[row], *extra]


def time_rows(data: str, work: str, rows: list[str], extra: list[str]) -> dict:
    """Step seconds of each row and of ``base`` (random weights, the same real training batch), timed in
    turn over :data:`TIME_ROUNDS` rounds. Returns row -> {"seconds", "base": that run's base seconds, and
    where it ran}: a row's ratio to ``base`` always comes from one run, whichever run timed it last."""
    rows = ["base", *(r for r in rows if r != "base")]
    import jax
    import keras

    from maskrcnn import input_pipeline
    from maskrcnn.config import StageConfig, apply_overrides, load_config
    from maskrcnn.model import build_model
    from maskrcnn.train.step import prepare_stage

    learning.prepare_data(data, work, "nuclei")
    data_dir = f"data.data_dir={os.path.join(os.path.abspath(work), 'tensorflow_datasets')!r}"
    steps = {}
    for row in rows:
        config = apply_overrides(load_config("learning"), [data_dir, *overrides_of(row, extra)])
        batch = next(input_pipeline.make_train_iterator(config, epoch=0))
        batch = {k: batch[k] for k in input_pipeline.MODEL_INPUTS}
        keras.utils.set_random_seed(0)
        model = build_model(config.model, config.data.image_size)
        stage = prepare_stage(model, config.train, StageConfig("all", "all", 1, 1e-3), 1)
        holder = {"state": stage.state}
        key = jax.random.PRNGKey(0)
        (holder["state"], _), compile_seconds = harness.timed(stage.step, holder["state"], batch, key)
        print(f"{row}: compiled and ran a first step in {compile_seconds:.1f} s")

        def one(step=stage.step, holder=holder, batch=batch, key=key):
            (holder["state"], _), seconds = harness.timed(step, holder["state"], batch, key)
            return seconds

        steps[row] = one
    times = harness.rounds(steps, TIME_ROUNDS)
    where = harness.where()
    return {row: {"seconds": times[row], "base": times["base"], **where} for row in rows}


def sweep(work: str, run: str, variants: dict[str, dict], thresholds, folder: str) -> dict:
    """Inference-only variants of a trained run: for each (name -> model fields to set), the fold-2 bPQ at
    every threshold, then fold 3 at the best of them (bPQ, recall, precision, SQ, the seconds its
    evaluation took, and the shares of its nuclei that ``maskrcnn diagnose`` finds without a proposal or
    lost to low scores). Scratch outputs go to ``<work>/<run>/<folder>/<name>-<threshold|fold3>``; a fold-2
    evaluation already there is read back."""
    import dataclasses
    import time

    from maskrcnn import input_pipeline
    from maskrcnn.diagnostics import diagnose
    from maskrcnn.inference import evaluate, make_predict_fn
    from maskrcnn.train.workdir import load_trained

    config, model = load_trained(os.path.join(work, run))
    folds = {k: os.path.join(work, "folds", f"Fold {k}") for k in (2, 3)}

    def variant(fields, threshold):
        """The run's config with ``fields`` at ``threshold``, the model switched to it."""
        m = dataclasses.replace(config.model, **fields, detection_min_confidence=threshold)
        model.set_inference_config(m)
        return dataclasses.replace(config, model=m)

    def score(name, fields, threshold, fold, tag):
        scored = variant(fields, threshold)
        scratch = os.path.join(work, run, folder, f"{name}-{tag}")
        done = os.path.join(scratch, "metrics.json")
        if fold == 2 and os.path.exists(done):  # a fold-2 evaluation of an earlier sweep (fold 3 is timed)
            return json.load(open(done)), scratch, None
        if fold == 3:  # compiled before the clock starts, whether or not fold 2 was evaluated here
            batch = next(iter(input_pipeline.make_eval_iterator(scored, folds[3])))
            tile = (input_pipeline.PANNUKE_SIZE,) * 2
            make_predict_fn(model, tile, scored.data.scale, scored.model.mask_threshold)(batch["image"])
        start = time.perf_counter()
        metrics = evaluate(scored, model, folds[fold], scratch, max_overlays=0, progress=False)
        return metrics, scratch, time.perf_counter() - start

    out = {}
    for name, fields in variants.items():
        fold2 = {t: score(name, fields, t, 2, f"{t:g}")[0]["bpq"] for t in thresholds}
        best = max(fold2, key=fold2.get)
        metrics, scratch, seconds = score(name, fields, best, 3, "fold3")
        with np.load(os.path.join(scratch, "predictions.npz")) as saved:
            rates = learning.detection_rates(saved["true_instances"], saved["pred_instances"])
        lost = diagnose(variant(fields, best), model, folds[3], progress=False)
        out[name] = {
            "fold2": {f"{t:g}": v for t, v in fold2.items()},
            "threshold": best,
            "bpq": metrics["bpq"],
            "eval_seconds": seconds,
            **rates,
            **{k: lost[k] / max(lost["nuclei"], 1) for k in LOST},
        }
        print(run, name, best, out[name], flush=True)
    return out


def cached(path: str, make) -> dict:
    """``make()``'s dict with :func:`harness.where`, kept in ``path`` and read back from it."""
    if os.path.exists(path):
        return json.load(open(path))
    out = {**make(), **harness.where()}
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=float)
    return out


def scoring(work: str, run: str) -> dict:
    """Fold-2 bPQ of ``run`` for every objectness weight and threshold; fold-3 figures at each weight's best
    threshold on fold 2. Cached in ``<work>/scoring-<run>.json``."""
    weights = {f"{w:g}": {"detection_objectness_weight": w} for w in OBJECTNESS_WEIGHTS}
    return cached(
        os.path.join(work, f"scoring-{run}.json"),
        lambda: {"run": run, "weights": sweep(work, run, weights, SCORING_THRESHOLDS, "scoring")},
    )


def inference(work: str, run: str, names: list[str]) -> dict:
    """The :data:`INFERENCE_VARIANTS` ``names`` of ``run``, chosen on fold 2. Kept in
    ``<work>/inference-<run>.json``, each variant with where it ran; a variant found there is read back, the
    others are swept and added."""
    path = os.path.join(work, f"inference-{run}.json")
    done = json.load(open(path)) if os.path.exists(path) else {"run": run, "variants": {}}
    todo = {n: fields for n, _, fields in INFERENCE_VARIANTS if n in names and n not in done["variants"]}
    if todo:
        swept = sweep(work, run, todo, INFERENCE_THRESHOLDS, "inference")
        done["variants"].update({name: {**v, **harness.where()} for name, v in swept.items()})
        with open(path, "w") as f:
            json.dump(done, f, indent=1, default=float)
    return {"run": run, "variants": {n: done["variants"][n] for n in names if n in done["variants"]}}


SWEEP_COLUMNS = (
    "threshold (best on fold 2) | fold-2 bPQ | fold-3 bPQ | recall | precision | SQ | no_proposal "
    "| low_score | of which no box"
)
LOST = ("no_proposal", "low_score", "low_score_no_box")  # diagnose's shares of the nuclei in a sweep


def sweep_cells(v: dict) -> str:
    """The :data:`SWEEP_COLUMNS` cells of one variant of :func:`sweep` (the waterfall's blank for a sweep
    cached before it was recorded)."""
    on_fold2 = v["fold2"][f"{v['threshold']:g}"]
    lost = " | ".join(f"{v[k]:.1%}" if k in v else "" for k in LOST)
    return (
        f"{v['threshold']:g} | {on_fold2:.4f} | {v['bpq']:.4f} | {v['recall']:.3f} | {v['precision']:.3f} "
        f"| {v['sq']:.3f} | {lost}"
    )


def scoring_table(results: list[dict]) -> str:
    lines = [f"| run | objectness weight | {SWEEP_COLUMNS} |", "|---|---:|" + "---:|" * 9]
    for r in results:
        for weight, w in r["weights"].items():
            lines.append(f"| {r['run']} | {weight} | {sweep_cells(w)} |")
    return "\n".join(lines)


def scoring_page(command: str, results: list[dict]) -> str:
    return f"""# Scoring detections with the RPN's objectness (inference only, on trained runs)

{harness.header(command)}

A detection's score is its class probability p, or with `model.detection_objectness_weight` w the weighted
geometric mean p ** (1 - w) * o ** w with its proposal's object probability o (`maskrcnn.postprocess.detect`).
For each w, the threshold of {", ".join(map(str, SCORING_THRESHOLDS))} with the best bPQ on fold 2 (a training
fold) is used on fold 3; recall, precision and SQ are fold 3's, at that threshold, and the waterfall's shares
as in `learning_inference.md` (blank for a sweep cached before they were recorded). The runs are trained runs
of `experiments/learning.py` in the work folder (`learning`: `make bench-learning`'s model).

{scoring_table(results)}
"""


def inference_page(command: str, results: list[dict]) -> str:
    what = {name: change for name, change, _ in INFERENCE_VARIANTS}
    lines = [
        f"| run | variant | change | {SWEEP_COLUMNS} | fold-3 evaluation (s) |",
        "|---|---|---|" + "---:|" * 10,
    ]
    for r in results:
        for name, v in r["variants"].items():
            lines.append(
                f"| {r['run']} | {name} | {what.get(name, '')} | {sweep_cells(v)} | {v['eval_seconds']:.0f} |"
            )
    table = "\n".join(lines)
    return f"""# Inference-only variants of trained runs

{harness.header(command)}

Each variant changes one inference setting of a run trained by `experiments/learning.py` (the work folder's
`<row>-<images>` runs of the ablation pages, `experiments/results/learning_ablation*.md`); nothing is
trained again. For each, the threshold of {", ".join(map(str, INFERENCE_THRESHOLDS))} with the best bPQ on
fold 2 (a training fold) is used on fold 3, and a variant is kept or dropped by its fold-2 bPQ. Recall,
precision and SQ are fold 3's, at that threshold; no_proposal and low_score are the shares of fold-3 nuclei
that `maskrcnn diagnose` finds with no proposal at box IoU >= 0.5, and lost to low scores, at that
threshold; of which no box: the low_score nuclei that no box-head output overlaps at box IoU >= 0.5 at any
score (the box regression moved every proposal off them: no threshold finds them), as a share of all fold-3
nuclei (blank where a variant was swept before it was recorded); the evaluation time is the whole fold-3
evaluation (inference, label maps and metrics of its tiles) on the device of the header, each timed alone,
its program compiled before the clock starts.

{table}
"""


def fold2(record: dict) -> float:
    """The fold-2 bPQ at the threshold chosen there: what a row is judged by (fold 3 chooses nothing)."""
    return record["bpq_by_threshold"][f"{record['threshold']:g}"]


# Fields in which a row's run may differ from the preset beyond its overrides: the run's name, where its
# data lives, and the budget (the record's images, also in its name).
UNCOMPARED = ("name", "data.data_dir", "train.steps_per_epoch", "train.stages[0].epochs")


def check_record(record: dict, path: str) -> None:
    """Refuses a record that is not its row as defined today: trained without the row's overrides (a row
    redefined after it was trained, such as a pin added to it), or on a `learning` config other than
    today's (the preset changed since), which the page would show as a change it is not. ``record`` is a
    kept one (:func:`keep_records`): its ``trained_config`` is the config its run was trained with."""
    from maskrcnn.config import apply_overrides, load_config
    from maskrcnn.train.workdir import flatten_config

    row, seed = parse_run_name(record["name"])
    wanted = overrides_of(row, seed_overrides(seed))
    missing = [o for o in wanted if o not in record["overrides"]]
    if missing:
        raise SystemExit(
            f"{path} was trained with {record['overrides']}, without {missing} of row {row!r} as defined "
            "now: train it again (move the record and its folder away) or restore the row"
        )
    trained = flatten_config(record["trained_config"])
    today = apply_overrides(load_config("learning"), record["overrides"]).to_dict()
    today = flatten_config(json.loads(json.dumps(today)))  # tuples as JSON lists, as config.json holds them
    changed = [
        f"{key}: {trained[key]!r} -> {today[key]!r}"
        for key in sorted(set(trained) & set(today))  # a field added since keeps the behaviour it had before
        if key not in UNCOMPARED and trained[key] != today[key]
    ]
    if changed:
        raise SystemExit(
            f"{path} was trained on a `learning` config that differs from today's with its overrides "
            f"({'; '.join(changed)}): it is not `{REFERENCE}` with row {row!r}'s change any more. Train "
            "the rows again in another --work folder, or restore the config"
        )


def records_dir(out: str) -> str:
    """Where the page ``out`` keeps its runs' records: beside it in the repository, so that a clone without
    the work folder (the trained models, the data) writes the same page again."""
    return os.path.splitext(out)[0] + "_records"


def record_paths(folder: str) -> list[str]:
    """The rows' records in ``folder`` (``<row>-<images>[-seed<N>].json``), in the order of :data:`ROWS`."""
    return [p for row in ROW_NAMES for p in sorted(glob.glob(os.path.join(folder, f"{row}-*.json")))]


def keep_records(work: str, kept: str) -> None:
    """Copies every row's record found in ``work`` into ``kept`` (replacing an older copy), with what the
    page reads from its run folder: the config the run trained with and its last epoch's class loss."""
    from maskrcnn.train.workdir import CONFIG_FILE

    os.makedirs(kept, exist_ok=True)
    for path in record_paths(work):
        record = json.load(open(path))
        run = os.path.join(work, record["name"])
        trained_path = os.path.join(run, CONFIG_FILE)
        if not os.path.exists(trained_path):
            raise SystemExit(f"{path}: {trained_path}, the config its run was trained with, is missing")
        record["trained_config"] = json.load(open(trained_path))
        record["class_loss"] = learning.epoch_losses(os.path.join(run, "log.csv"))["class"][-1]
        with open(os.path.join(kept, os.path.basename(path)), "w") as f:
            json.dump(record, f, indent=1)


def keep_from(source: str, name: str, kept: str, work: str) -> None:
    """Keeps the record at ``source``, a run of another page (in that page's ``<page>_records/``), as this
    page's run ``name`` in ``kept``: with ``name``'s overrides of today in place of the ones it trained with,
    and ``copied_from`` naming the run and the page it was trained for. Refused (:func:`check_record`)
    unless the config it trained with is ``name``'s row's config of today, or if ``work`` trained ``name``
    itself."""
    record = json.load(open(source))
    row, seed = parse_run_name(name) if "-" in name else (name, 0)
    if row not in ROW_NAMES or run_name(row, record["images"], seed) != name:
        raise SystemExit(
            f"--keep {source} {name}: name it <row>-{record['images']}[-seed<N>] with a row of ROWS (the "
            "budget of images it was trained for)"
        )
    if os.path.exists(os.path.join(work, name + ".json")):
        raise SystemExit(f"--keep {source} {name}: {work} trained {name} itself; its own record is the row's")
    page = os.path.basename(os.path.dirname(os.path.abspath(source))).removesuffix("_records") + ".md"
    where = f"{record['name']} of {page}"
    if "copied_from" in record:
        where += f" (there: {record['copied_from']})"
    record.update(name=name, overrides=overrides_of(row, seed_overrides(seed)), copied_from=where)
    record["kept_with"] = f"--keep {os.path.relpath(source)} {name}"  # as a page lists it
    check_record(record, source)
    os.makedirs(kept, exist_ok=True)
    with open(os.path.join(kept, name + ".json"), "w") as f:
        json.dump(record, f, indent=1)


def page_rows(path: str) -> set[tuple[str, int, int]]:
    """(row, seed, images) of every trained row of the page at ``path`` (none if there is no page)."""
    if not os.path.exists(path):
        return set()
    found = set()
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            len(cells) > 4
            and cells[0] in ROW_NAMES
            and cells[2].replace(",", "").isdigit()
            and cells[3].isdigit()
        ):
            found.add((cells[0], int(cells[3]), int(cells[2].replace(",", ""))))
    return found


def read_timing(path: str) -> dict:
    """The step times of ``--time`` runs: row -> :func:`time_rows`' record of the run that timed it last."""
    return json.load(open(path)) if os.path.exists(path) else {}


def table(records: list[dict], timing: dict) -> str:
    from maskrcnn.diagnostics import NUCLEUS_BUCKETS

    lost = [b for b in NUCLEUS_BUCKETS if b != "matched"]

    def budget_and_seed(r):
        return r["images"], parse_run_name(r["name"])[1]

    reference = {
        budget_and_seed(r): r["fold3"]["bpq"] for r in records if parse_run_name(r["name"])[0] == REFERENCE
    }
    lines = [
        f"| row | change | images | seed | fold-2 bPQ | bPQ | bPQ - {REFERENCE} | recall | precision | DQ "
        "| SQ | " + " | ".join(lost) + " | class loss | threshold | step (s) | step vs base |",
        "|---|---|" + "---:|" * (13 + len(lost)),
    ]
    what = {n: w for n, w, _ in ROWS}

    def delta(r):
        ref = reference.get(budget_and_seed(r))  # the reference trained with the same budget and seed
        return "" if ref is None else f"{r['fold3']['bpq'] - ref:+.4f}"

    def ratio(row):
        if row not in timing:
            return ""
        per_round = [a / b for a, b in zip(timing[row]["seconds"], timing[row]["base"], strict=True)]
        return f"{harness.median(per_round):.2f}x ({harness.spread(per_round)})"

    trained = set()
    for r in records:
        row, seed = parse_run_name(r["name"])
        trained.add(row)
        m, w = r["fold3"], r["waterfall"]
        shares = " | ".join(f"{w[b] / w['nuclei']:.1%}" for b in lost)
        lines.append(
            f"| {row} | {what.get(row, '')} | {r['images']:,} | {seed} | {fold2(r):.4f} | {m['bpq']:.4f} "
            f"| {delta(r)} "
            f"| {m['recall']:.3f} | {m['precision']:.3f} | {m['dq']:.3f} | {m['sq']:.3f} | {shares} "
            f"| {r['class_loss']:.3f} | {r['threshold']:g} "
            f"| {r['step_seconds']:.2f} | {ratio(row)} |"
        )
    # Rows timed (--time) but not trained: their cost, every accuracy cell empty.
    for row in (n for n in ROW_NAMES if n in timing and n not in trained):
        lines.append(f"| {row} | {what[row]} | not trained |" + " |" * (11 + len(lost)) + f" {ratio(row)} |")
    return "\n".join(lines)


SIZE_BUCKETS = ("matched", "no_proposal", "low_score")  # the rest (suppressed, mask_miss) are a few %


def size_table(records: list[dict]) -> str:
    """Per run, the shares of fold-3 nuclei matched, without a proposal and lost at a low score in each size
    band (the waterfall's ``by_size``) and among the nuclei the tile's border cuts (``at_border``, empty for
    runs diagnosed before it was counted), each group's nuclei in the header (one fold 3 in every run)."""
    groups = dict(records[0]["waterfall"]["by_size"])
    border = [r["waterfall"]["at_border"] for r in records if "at_border" in r["waterfall"]]
    if border:
        groups["cut by the border"] = border[0]
    head = " | ".join(f"{name} ({g['nuclei']:,})" for name, g in groups.items())
    lines = [f"| row | images | seed | {head} |", "|---|---:|---:|" + "---:|" * len(groups)]
    for r in records:
        row, seed = parse_run_name(r["name"])
        mine = {**r["waterfall"]["by_size"], "cut by the border": r["waterfall"].get("at_border")}
        cells = []
        for name, g in groups.items():
            if mine[name] is None:
                cells.append("")
                continue
            if mine[name]["nuclei"] != g["nuclei"]:
                raise SystemExit(f"{r['name']} was diagnosed on other nuclei than {records[0]['name']}")
            cells.append(" / ".join(f"{mine[name][k] / max(g['nuclei'], 1):.0%}" for k in SIZE_BUCKETS))
        lines.append(f"| {row} | {r['images']:,} | {seed} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the consep_train folder")
    p.add_argument("--work", default="runs/ablation", help="scratch folder for folds, dataset and runs")
    p.add_argument("--images", type=int, default=learning.DEFAULT_IMAGES, help="training budget in images")
    p.add_argument("--rows", nargs="*", choices=ROW_NAMES, help="rows to run (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every row")
    p.add_argument("--seed", type=int, default=0, help="train.seed of the rows' runs (another draw of each)")
    p.add_argument("--time", action="store_true", help="time every row's train step in one run, in turn")
    p.add_argument("--page", action="store_true", help="only write the page from the records found")
    p.add_argument(
        "--keep",
        nargs=2,
        action="append",
        default=[],
        metavar=("RECORD", "RUN"),
        help="keep another page's kept record as this page's run RUN (<row>-<images>[-seed<N>])",
    )
    p.add_argument("--scoring", nargs="*", metavar="RUN", help="score trained runs with the RPN's objectness")
    p.add_argument("--out", default=os.path.join(harness.RESULTS, "learning_ablation.md"))
    p.add_argument("--scoring-out", default=os.path.join(harness.RESULTS, "learning_scoring.md"))
    p.add_argument("--inference", nargs="*", metavar="RUN", help="score trained runs' inference variants")
    p.add_argument(
        "--variants", nargs="*", choices=INFERENCE_NAMES, help="with --inference: these (default: all)"
    )
    p.add_argument("--inference-out", default=os.path.join(harness.RESULTS, "learning_inference.md"))
    args = p.parse_args(argv)
    work = os.path.abspath(args.work)
    rows = args.rows or ROW_NAMES
    kept = records_dir(args.out)
    timing_path = os.path.join(kept, "step_times.json")
    given = sys.argv[1:] if argv is None else list(argv)
    command = "python experiments/ablation_learning.py " + shlex.join(given)  # as run, every option
    if args.time:
        timing = read_timing(timing_path) | time_rows(args.data, work, rows, args.set)
        os.makedirs(kept, exist_ok=True)
        with open(timing_path, "w") as f:
            json.dump(timing, f, indent=1)
    elif args.scoring:
        results = [scoring(work, run) for run in args.scoring]
        harness.write(args.scoring_out, scoring_page(command, results))
        return 0
    elif args.inference:
        names = args.variants or INFERENCE_NAMES
        results = [inference(work, run, names) for run in args.inference]
        harness.write(args.inference_out, inference_page(command, results))
        return 0
    elif not args.page:
        for row in rows:
            learning.run(
                args.data,
                work,
                "learning",
                name=run_name(row, args.images, args.seed),
                images=args.images,
                overrides=overrides_of(row, [*args.set, *seed_overrides(args.seed)]),
            )
    keep_records(work, kept)
    for source, name in args.keep:
        keep_from(source, name, kept, work)
    timing = read_timing(timing_path)
    records = []
    for path in record_paths(kept):
        records.append(json.load(open(path)))
        check_record(records[-1], path)
    lost = page_rows(args.out) - {(*parse_run_name(r["name"]), r["images"]) for r in records}
    if lost:
        raise SystemExit(
            f"{args.out} holds rows {sorted(lost)} whose records are neither in {kept} nor in {work}: "
            "writing the page would drop them. Train them again (--rows, --seed, --images) or write another "
            "page (--out)"
        )

    def order(record):
        row, seed = parse_run_name(record["name"])
        return record["images"], ROW_NAMES.index(row), seed

    records.sort(key=order)
    runs = sorted({(t["date"], t["device"], t["commit"]) for t in timing.values()})
    timed_on = "".join(f"; {date}, {device}, commit {commit}" for date, device, commit in runs)
    text = f"""# Learning ablation: each recipe choice on its own, at an equal budget of images

{harness.header(command)}

That command is the page's latest run; every row trained for the page before it is kept, and each is made
again with `python experiments/ablation_learning.py --data DIR --work W --rows ROW --seed SEED --images IMAGES
--out {args.out}` in a work folder without that run (its record in `{kept}/` says when and on what commit it
trained).

Rows: `experiments/ablation_learning.py` (`ROWS`), each one run of `experiments/learning.py`: the `learning`
config as shipped (`{REFERENCE}`) with one change, trained from scratch on CoNSeP folds 1 + 2 for the budget
of images, the score threshold chosen on fold 2, fold 3 scored. Seed: `train.seed` (`--seed`: the initial
weights, the order of the tiles and their augmentation). Fold-2 bPQ: at that threshold, what a row is kept
or dropped by (fold 2 is a training fold; fold 3 chooses nothing). bPQ - {REFERENCE}: fold 3 against
`{REFERENCE}` trained with the same budget and seed. bPQ, recall, precision, DQ and SQ on fold 3; the
waterfall columns are the shares of fold-3 nuclei that each stage loses first (`maskrcnn diagnose`; the rest
are matched). Class loss: the box head's classification loss over its sampled ROIs (cross-entropy; at most
a third of them positive), the mean over the last epoch of training. Step (s): each run's own step time,
timed alone after its training on the device of its record. Step vs base: the ratio to `base` when the
row's step and base's are timed in turn in one run (`--time`, {TIME_ROUNDS} rounds; median and range over
rounds{timed_on}).

{table(records, timing)}

By nucleus size (the square root of its box's area, in input pixels), and for the nuclei whose box reaches
the tile's border (cut by the tiling): the shares of each group {" / ".join(SIZE_BUCKETS)} (its fold-3
nuclei in brackets).

{size_table(records) if records else "(no runs)"}
"""
    copied = [
        f"`{r['name']}`: {r['copied_from']}" + (f" (`{r['kept_with']}`)" if "kept_with" in r else "")
        for r in records
        if "copied_from" in r
    ]
    if copied:
        text += "\nRuns of another page kept as this page's (trained with their row's config):\n\n"
        text += "".join(f"- {line}.\n" for line in copied)
    harness.write(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
