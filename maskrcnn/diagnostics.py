"""Where nuclei are lost: anchor coverage, proposal recall, and the waterfall of ``maskrcnn diagnose``.

``maskrcnn anchors --config learning --split "runs/learning/folds/Fold 1"`` prints, for a config's anchors
and RPN assignment rule, how many of a split's nuclei get at least one positive anchor and how many
positives each gets (the RPN learns a nucleus only through its positives). :func:`proposal_recall`
measures, for a trained model, the share of nuclei that some proposal covers at IoU >= 0.5 (a nucleus
without one can never be detected). ``maskrcnn diagnose --workdir W --split S`` (:func:`diagnose`) follows
every nucleus through the trained model's stages and puts it in the bucket of the first stage that loses it
(no proposal, low score, suppressed, mask miss) or in ``matched``, and every unmatched prediction in a
bucket of its own (duplicate, merge, part, background).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
from scipy import ndimage

from maskrcnn import input_pipeline, targets
from maskrcnn.config import Config
from maskrcnn.model.maskrcnn import anchor_assignment, config_anchors
from maskrcnn.ops import pairwise_iou


def nucleus_boxes(instances: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """float32 (N, 4) yxyx pixel-edge boxes of the instances of a label map, times ``scale``."""
    slices = [s for s in ndimage.find_objects(np.asarray(instances)) if s is not None]
    boxes = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices], np.float32)
    return boxes.reshape(-1, 4) * scale


def anchor_coverage(config: Config, split: str, *, max_images: int | None = None) -> dict:
    """How the RPN assignment of ``config`` (``model.rpn_assignment`` and its thresholds) treats the
    nuclei of ``split`` (a split of the built dataset or a PanNuke-format fold folder), before sampling.

    Returns a dict: ``nuclei`` counted; ``covered`` the share with at least one positive anchor (an
    anchor whose regression target is that nucleus); ``mean_positives`` positives per nucleus;
    ``iou70`` / ``iou50`` the shares whose best anchor has IoU >= 0.7 / 0.5; ``median_best_iou``.
    """
    size = (config.data.image_size,) * 2
    anchors = config_anchors(config.model, size)
    assign = jax.jit(
        functools.partial(
            targets.assign_anchors, jnp.asarray(anchors), **anchor_assignment(config.model, size)
        )
    )
    source = input_pipeline.open_split(config.data, split)
    count = len(source) if max_images is None else min(max_images, len(source))
    scale = config.data.scale
    positives, best = [], []
    slots = 1
    for i in range(count):
        boxes = nucleus_boxes(source[i]["instances"], scale)
        if not len(boxes):
            continue
        while slots < len(boxes):  # pad to a power of two: few distinct shapes to compile
            slots *= 2
        padded = np.zeros((slots, 4), np.float32)
        padded[: len(boxes)] = boxes
        positive, _, matched = assign(jnp.asarray(padded), jnp.arange(slots) < len(boxes))
        positive, matched = np.asarray(positive), np.asarray(matched)
        positives.append(np.bincount(matched[positive], minlength=slots)[: len(boxes)])
        best.append(np.asarray(pairwise_iou(boxes, anchors)).max(axis=1))
    positives, best = np.concatenate(positives), np.concatenate(best)
    return {
        "nuclei": int(positives.size),
        "covered": float(np.mean(positives > 0)),
        "mean_positives": float(np.mean(positives)),
        "iou70": float(np.mean(best >= 0.7)),
        "iou50": float(np.mean(best >= 0.5)),
        "median_best_iou": float(np.median(best)),
    }


def proposal_recall(config: Config, model, split: str, *, iou: float = 0.5) -> float:
    """Share of the nuclei of ``split`` that some inference-time proposal of ``model`` covers at IoU >=
    ``iou`` (boxes at the model's resolution)."""
    size = (config.data.image_size,) * 2
    variables = model.trainable_variables + model.non_trainable_variables

    @jax.jit
    def run(values, images):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            logits, deltas = model.rpn_head(model.features(images))
            boxes, _, valid = model.proposals(logits, deltas, size)
            return boxes, valid

    values = [v.value for v in variables]
    found = total = 0
    for batch in input_pipeline.make_eval_iterator(config, split):
        boxes, valid = jax.device_get(run(values, batch["image"]))
        for i in np.nonzero(batch["example_valid"])[0]:
            truth = nucleus_boxes(batch["instances"][i], batch["scale"][i])
            if not len(truth):
                continue
            best = np.asarray(pairwise_iou(truth, boxes[i][valid[i]])).max(axis=1, initial=0.0)
            found += int(np.sum(best >= iou))
            total += len(truth)
    return found / max(total, 1)


def format_coverage(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of :func:`anchor_coverage` results, one row per (label, result)."""
    lines = [
        "| anchors and assignment | nuclei | with a positive | positives per nucleus | best IoU >= 0.7 "
        "| best IoU >= 0.5 | median best IoU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['nuclei']} | {r['covered']:.1%} | {r['mean_positives']:.2f} | {r['iou70']:.1%} "
            f"| {r['iou50']:.1%} | {r['median_best_iou']:.2f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# The waterfall: where each nucleus is lost (`maskrcnn diagnose`)

NUCLEUS_BUCKETS = ("no_proposal", "low_score", "suppressed", "mask_miss", "matched")
PREDICTED_BUCKETS = ("fp_duplicate", "fp_merge", "fp_part", "fp_background")
BOX_IOU = 0.5  # a stage "has" a nucleus when one of its boxes overlaps the nucleus's box at IoU >= this
# An unmatched predicted instance overlaps a nucleus when their intersection holds at least this share of
# the smaller of the two (a quarter: a sliver along a neighbour's edge is not a merge).
OVERLAP_SHARE = 0.25
# Nucleus sizes for the per-size rows: the side of the box's square root of area, in input pixels.
SIZE_BINS = (12, 24, 48)


def _best_box_iou(truth: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Best IoU of each true box (N, 4) with any of ``boxes`` (M, 4), 0 where there is none: (N,)."""
    if not len(truth) or not len(boxes):
        return np.zeros(len(truth))
    return np.asarray(pairwise_iou(truth, boxes)).max(axis=1)


def waterfall_image(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    *,
    scale: float,
    proposals: np.ndarray,
    scored_boxes: np.ndarray,
    kept_boxes: np.ndarray,
    refined_boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bucket of every true nucleus and every predicted instance of one image.

    A true nucleus goes to the first stage that loses it, with ``matched`` first: a nucleus that the
    final label map matches (mask IoU > 0.5, the pairs PQ counts) is ``matched`` whatever the boxes did.
    Otherwise ``no_proposal`` when no proposal overlaps its box at IoU >= 0.5; ``low_score`` when no
    box-head output scoring at least the detection threshold does; ``suppressed`` when such outputs exist
    but no kept detection does (detection NMS or the cap removed them); ``mask_miss`` when a kept
    detection does but no predicted instance matches its mask. A ``low_score`` nucleus is also told apart
    by whether any box-head output, whatever its score, overlaps it at IoU >= 0.5: without one, the box
    regression moved every proposal off it and no threshold would find it; with one, its score is low.

    A predicted instance that matches no nucleus overlaps a nucleus when their intersection holds at least
    :data:`OVERLAP_SHARE` of the smaller of the two: ``fp_merge`` when it overlaps two or more nuclei,
    ``fp_duplicate`` when it overlaps one that another instance matched, ``fp_part`` when it overlaps one
    unmatched nucleus, ``fp_background`` when it overlaps none.

    Args:
      true_labels, pred_labels: int (H, W) instance label maps at the input's resolution.
      scale: model pixels per input pixel (the boxes below are in model pixels).
      proposals: float (P, 4) the valid proposals; scored_boxes: float (C, 4) the refined boxes of the
        box-head outputs at or above the threshold, before detection NMS; kept_boxes: float (D, 4) the
        kept detections' boxes. All yxyx on pixel edges.

    Returns:
      (nucleus bucket index into :data:`NUCLEUS_BUCKETS` (N,), predicted bucket index into
      :data:`PREDICTED_BUCKETS` (n_pred,), -1 for matched instances, nucleus box side in input pixels
      (N,), whether the nucleus's box touches the image's border (N,): a nucleus the tile cuts, whether
      no box-head output at any score overlaps it at box IoU >= 0.5 (N,)), nuclei and instances in
      increasing id order.
    """
    from maskrcnn.evaluation import overlaps

    inter, true_area, pred_area = overlaps(true_labels, pred_labels)
    union = true_area[:, None] + pred_area[None, :] - inter
    pairs = inter > 0.5 * np.maximum(union, 1)  # IoU > 0.5, without rounding: unique pairs
    true_matched, pred_matched = pairs.any(axis=1), pairs.any(axis=0)

    truth = nucleus_boxes(true_labels, 1.0)
    side = box_sides(truth)
    height, width = true_labels.shape
    border = (truth[:, :2] <= 0).any(axis=1) | (truth[:, 2] >= height) | (truth[:, 3] >= width)
    truth = truth * scale
    refined_boxes = scored_boxes if refined_boxes is None else refined_boxes
    stages = [
        _best_box_iou(truth, b) >= BOX_IOU for b in (proposals, scored_boxes, kept_boxes, refined_boxes)
    ]
    nucleus = np.select(
        [true_matched, ~stages[0], ~stages[1], ~stages[2]],
        [NUCLEUS_BUCKETS.index(b) for b in ("matched", "no_proposal", "low_score", "suppressed")],
        NUCLEUS_BUCKETS.index("mask_miss"),
    )

    touch = inter >= OVERLAP_SHARE * np.minimum(true_area[:, None], pred_area[None, :])
    touch &= inter > 0
    hits = touch.sum(axis=0)
    hits_matched = (touch & true_matched[:, None]).any(axis=0)
    predicted = np.select(
        [pred_matched, hits >= 2, hits_matched, hits == 1],
        [-1, *(PREDICTED_BUCKETS.index(b) for b in ("fp_merge", "fp_duplicate", "fp_part"))],
        PREDICTED_BUCKETS.index("fp_background"),
    )
    return nucleus.astype(int), predicted.astype(int), side, border, ~stages[3]


def _size_label(lo, hi) -> str:
    return f"< {hi} px" if lo is None else f">= {lo} px" if hi is None else f"{lo}-{hi} px"


def box_sides(boxes: np.ndarray) -> np.ndarray:
    """The square root of each (N, 4) yxyx box's area: the nucleus size of the per-size rows."""
    return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def size_bands(side: np.ndarray) -> dict[str, np.ndarray]:
    """Each band of :data:`SIZE_BINS` by label (``"< 12 px"``, ``"12-24 px"``, ...) -> which nuclei of
    the given box sides lie in it: bool masks, every nucleus in exactly one."""
    edges = (None, *SIZE_BINS, None)
    return {
        _size_label(lo, hi): (side >= (-np.inf if lo is None else lo))
        & (side < (np.inf if hi is None else hi))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    }


def summarise_waterfall(
    nucleus: np.ndarray, predicted: np.ndarray, side: np.ndarray, border: np.ndarray, no_box: np.ndarray
) -> dict:
    """Counts of :func:`waterfall_image`'s buckets over a split (concatenated arrays); the nucleus buckets
    also per size band (``by_size``) and for the nuclei cut by the tile's border (``at_border``); each
    with ``low_score_no_box``, the ``low_score`` nuclei that no box-head output overlaps at any score."""
    low = nucleus == NUCLEUS_BUCKETS.index("low_score")

    def nucleus_counts(inside):
        counts = {name: int(np.sum(nucleus[inside] == i)) for i, name in enumerate(NUCLEUS_BUCKETS)}
        no_boxes = int(np.sum(low[inside] & no_box[inside]))
        return {"nuclei": int(inside.sum()), **counts, "low_score_no_box": no_boxes}

    result = nucleus_counts(np.ones(nucleus.shape, bool))
    result.update({name: int(np.sum(predicted == i)) for i, name in enumerate(PREDICTED_BUCKETS)})
    result["predicted"] = int(predicted.size)
    result["by_size"] = {label: nucleus_counts(inside) for label, inside in size_bands(side).items()}
    result["at_border"] = nucleus_counts(border.astype(bool))
    return result


def _stage_program(model):
    """Jitted ``(values, images) -> dict`` of the inference stages the waterfall follows: valid proposals,
    box-head outputs before NMS (:func:`maskrcnn.postprocess.detection_candidates`) and kept detections,
    through the model's own methods (as :meth:`MaskRCNN.call` runs them)."""
    from maskrcnn import postprocess

    variables = model.trainable_variables + model.non_trainable_variables

    @jax.jit
    def run(values, images):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            size = model._image_size(images)
            pyramid = model.features(images)
            rpn_logits, rpn_deltas = model.rpn_head(pyramid)
            proposals, proposal_scores, proposal_valid = model.proposals(rpn_logits, rpn_deltas, size)
            class_logits, box_deltas = model.classify(pyramid[:4], proposals, size)
            boxes, scores, _, usable = jax.vmap(
                functools.partial(
                    postprocess.detection_candidates,
                    image_size=size,
                    objectness_weight=model.config.detection_objectness_weight,
                )
            )(class_logits, box_deltas, proposals, proposal_valid, proposal_scores)
            detections = model.detections(
                class_logits, box_deltas, proposals, proposal_valid, size, proposal_scores=proposal_scores
            )
        return {
            "proposals": proposals,
            "proposal_valid": proposal_valid,
            "candidates": boxes,
            "candidate_valid": usable & (scores >= model.config.detection_min_confidence),
            "candidate_usable": usable,
            "detections": detections["boxes"],
            "detection_valid": detections["valid"],
        }

    return lambda images: jax.device_get(run([v.value for v in variables], images))


def diagnose(config: Config, model, split: str, *, progress: bool = True) -> dict:
    """Follows every nucleus of ``split`` through ``model`` (:func:`waterfall_image`) and sums the buckets.

    The label maps are those of ``maskrcnn evaluate`` and ``predict`` (:func:`maskrcnn.inference.
    make_predict_fn`), so ``matched`` equals the true positives of their PQ matching.

    Returns:
      dict: every bucket of :data:`NUCLEUS_BUCKETS` and :data:`PREDICTED_BUCKETS` with its count,
      ``nuclei`` and ``predicted`` (their sums), ``by_size`` (the nucleus buckets per box size in input
      pixels), ``at_border`` (those of the nuclei that the tile's border cuts), ``images``, ``split``
      and ``detection_min_confidence``.
    """
    from tqdm.auto import tqdm

    from maskrcnn.inference import make_predict_fn

    if config.model.test_time_flips:
        raise ValueError(
            "model.test_time_flips=True: diagnose follows the stages of one view, which would not be the "
            "flips' label maps; run it without test-time flips"
        )
    tile, scale = input_pipeline.PANNUKE_SIZE, config.data.scale
    predict = make_predict_fn(model, (tile, tile), scale, config.model.mask_threshold)
    stages = _stage_program(model)
    columns, images = [], 0
    total = len(input_pipeline.open_split(config.data, split))
    bar = tqdm(total=total, desc=f"diagnose {split}", disable=not progress, dynamic_ncols=True)
    for batch in input_pipeline.make_eval_iterator(config, split):
        labels = predict(batch["image"])["labels"]
        out = stages(batch["image"])
        for i in np.nonzero(batch["example_valid"])[0]:
            columns.append(
                waterfall_image(
                    batch["instances"][i],
                    labels[i],
                    scale=scale,
                    proposals=out["proposals"][i][out["proposal_valid"][i]],
                    scored_boxes=out["candidates"][i][out["candidate_valid"][i]],
                    kept_boxes=out["detections"][i][out["detection_valid"][i]],
                    refined_boxes=out["candidates"][i][out["candidate_usable"][i]],
                )
            )
            images += 1
            bar.update(1)
    bar.close()
    result = summarise_waterfall(*map(np.concatenate, zip(*columns, strict=True)))
    result.update(images=images, split=split, detection_min_confidence=config.model.detection_min_confidence)
    return result


def format_waterfall(result: dict) -> str:
    """Markdown tables of :func:`diagnose`'s result: nucleus buckets (with their share, per size and for
    the nuclei cut by the tile's border) and the unmatched predicted instances."""
    total, predicted = max(result["nuclei"], 1), max(result["predicted"], 1)
    groups = {**result["by_size"], "cut by the border": result["at_border"]}
    lines = [
        f"{result['nuclei']} nuclei in {result['images']} images; detection threshold "
        f"{result['detection_min_confidence']:g}",
        "",
        "| nuclei: first stage that loses them | count | share | " + " | ".join(groups) + " |",
        "|---|---:|---:|" + "---:|" * len(groups),
    ]
    for name in NUCLEUS_BUCKETS:
        shares = [f"{g[name] / max(g['nuclei'], 1):.1%}" for g in groups.values()]
        lines.append(f"| {name} | {result[name]} | {result[name] / total:.1%} | " + " | ".join(shares) + " |")
    lines.append(
        f"| nuclei | {result['nuclei']} | 100% | "
        + " | ".join(str(g["nuclei"]) for g in groups.values())
        + " |"
    )
    if "low_score_no_box" in result:  # records written before it was counted lack it
        shares = ", ".join(
            f"{name} {g['low_score_no_box'] / max(g['low_score'], 1):.0%}" for name, g in groups.items()
        )
        lines += [
            "",
            f"low_score: {result['low_score_no_box']} of the {result['low_score']} nuclei have no box-head "
            "output at box IoU >= 0.5 at any score (the box regression moved every proposal off them); the "
            f"rest have one that scores below the threshold. That share per group: {shares}.",
        ]
    lines += [
        "",
        "| predicted instances | count | share |",
        "|---|---:|---:|",
        f"| matched | {result['matched']} | {result['matched'] / predicted:.1%} |",
    ]
    lines += [f"| {name} | {result[name]} | {result[name] / predicted:.1%} |" for name in PREDICTED_BUCKETS]
    lines.append(f"| predicted | {result['predicted']} | 100% |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# Which nuclei the box head learns from: the sampled positives (`model.roi_positive_sampling`)


def sampled_nuclei(proposals, proposal_valid, truth, truth_valid, key, config, *, rule: str, draws: int):
    """For one tile, which nuclei the training ROI sampler gives at least one positive ROI, in each of
    ``draws`` draws: bool (draws, M). ``proposals`` (P, 4) and ``truth`` (M, 4) are model-resolution boxes;
    the sampler is :func:`maskrcnn.targets.sample_rois` with the config's ROI settings and ``rule``."""
    m = config.model
    masks = jnp.zeros((truth.shape[0], 2, 2))  # the mask targets play no part in which ROIs are drawn

    def one(draw_key):
        rois = targets.sample_rois(
            proposals,
            proposal_valid,
            truth,
            jnp.ones(truth.shape[:1], jnp.int32),
            masks,
            truth_valid,
            draw_key,
            num_rois=m.train_rois_per_image,
            positive_fraction=m.roi_positive_ratio,
            positive_iou=m.roi_positive_iou,
            mask_size=2,
            add_gt_as_proposals=m.add_gt_as_proposals,
            positive_sampling=rule,
        )
        iou = jnp.where(truth_valid[None, :], pairwise_iou(rois["rois"], truth), -1.0)
        return jnp.zeros(truth.shape[:1], bool).at[iou.argmax(axis=1)].max(rois["positive"])

    return jax.vmap(one)(jax.random.split(key, draws))


def positive_coverage(
    config: Config,
    model,
    split: str,
    *,
    rules=("uniform", "per_nucleus"),
    draws: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """How many of a split's nuclei one training step's sampled ROIs teach the box head as nuclei, for each
    rule of drawing the positives: the share of the nuclei with at least one positive ROI in a draw (the
    mean over ``draws`` draws a tile), overall and per size band (the box side in input pixels, as
    :func:`diagnose`). The proposals are ``model``'s at training time (``post_nms_rois_training`` of
    them; the network in inference mode), the nuclei those of the tiles, un-augmented.

    Returns:
      dict: ``nuclei``, ``images``, ``positive_slots`` (the most positives a tile gets), and per rule a
      dict with ``covered`` (share) and ``by_size`` (label -> share), plus ``nuclei_by_size``.
    """
    from tqdm.auto import tqdm

    size = (config.data.image_size,) * 2
    slots = config.data.max_instances
    variables = model.trainable_variables + model.non_trainable_variables

    @jax.jit
    def run(values, images, truth, truth_valid, key):
        """rule -> (B, M) share of the draws that cover each nucleus, from one set of proposals."""
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            logits, deltas = model.rpn_head(model.features(images))
            boxes, _, valid = model.proposals(logits, deltas, size, training=True)
        keys = jax.random.split(key, images.shape[0])
        out = {}
        for rule in rules:
            sample = functools.partial(sampled_nuclei, config=config, rule=rule, draws=draws)
            out[rule] = jax.vmap(sample)(boxes, valid, truth, truth_valid, keys).mean(axis=1)
        return out

    values = [v.value for v in variables]
    shares = {rule: [] for rule in rules}
    sides, images = [], 0
    key = jax.random.PRNGKey(seed)
    total = len(input_pipeline.open_split(config.data, split))
    bar = tqdm(total=total, desc=f"positives {split}", disable=not progress, dynamic_ncols=True)
    for batch in input_pipeline.make_eval_iterator(config, split):
        count = len(batch["image"])
        truth = np.zeros((count, slots, 4), np.float32)
        truth_valid = np.zeros((count, slots), bool)
        for i in range(count):
            boxes = nucleus_boxes(batch["instances"][i], batch["scale"][i])[:slots]
            truth[i, : len(boxes)], truth_valid[i, : len(boxes)] = boxes, True
        key, step = jax.random.split(key)
        out = jax.device_get(run(values, batch["image"], truth, truth_valid, step))
        for i in np.nonzero(batch["example_valid"])[0]:
            n = int(truth_valid[i].sum())
            sides.append(box_sides(truth[i, :n] / batch["scale"][i]))
            for rule in rules:
                shares[rule].append(out[rule][i, :n])
            images += 1
            bar.update(1)
    bar.close()
    side = np.concatenate(sides)
    bands = size_bands(side)
    result = {
        "nuclei": int(side.size),
        "images": images,
        "split": split,
        "positive_slots": targets.positive_slots(
            config.model.train_rois_per_image, config.model.roi_positive_ratio
        ),
        "nuclei_by_size": {label: int(inside.sum()) for label, inside in bands.items()},
    }
    for rule in rules:
        share = np.concatenate(shares[rule])
        result[rule] = {
            "covered": float(share.mean()) if share.size else 0.0,
            "by_size": {
                label: float(share[inside].mean()) if inside.any() else 0.0 for label, inside in bands.items()
            },
        }
    return result
