"""`maskrcnn anchors` against a direct count, the inference settings a trained model accepts, and the
`maskrcnn diagnose` waterfall on hand-made cases."""

import dataclasses
import os

import jax.numpy as jnp
import keras
import numpy as np
import pytest

from maskrcnn import cli
from maskrcnn.config import apply_overrides, load_config
from maskrcnn.diagnostics import anchor_coverage
from maskrcnn.ops import generate_anchors, pairwise_iou


def _write_fold(folder, boxes):
    """One 256 px PanNuke-format image whose nuclei (inflammatory) fill the given boxes."""
    masks = np.zeros((1, 256, 256, 6))
    for ident, (y1, x1, y2, x2) in enumerate(boxes, start=1):
        masks[0, y1:y2, x1:x2, 1] = ident
    os.makedirs(folder)
    np.save(os.path.join(folder, "images.npy"), np.full((1, 256, 256, 3), 200.0))
    np.save(os.path.join(folder, "masks.npy"), masks)
    np.save(os.path.join(folder, "types.npy"), np.array(["Colon"]))


def test_anchor_coverage_counts_positives_like_a_direct_count(tmp_path, capsys):
    # Three nuclei far apart: on a P2 anchor of 8 px, on no anchor centre, and a large one.
    boxes = [(6, 6, 14, 14), (101, 37, 120, 51), (150, 150, 190, 200)]
    folder = str(tmp_path / "fold")
    _write_fold(folder, boxes)
    config = load_config("learning")
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, rpn_assignment="iou", anchor_octaves=(1.0,))
    )
    m = config.model
    anchors = generate_anchors(
        (256, 256), strides=m.anchor_strides, scales=m.anchor_scales, ratios=m.anchor_ratios
    )
    iou = np.asarray(pairwise_iou(anchors, np.array(boxes, np.float32)))
    # Positive: IoU >= 0.7, or the nucleus's best anchor (no two nuclei compete for an anchor here).
    # (ties for the best anchor all count, as in targets.assign_anchors)
    expected = [int(np.sum((iou[:, g] >= 0.7) | (iou[:, g] == iou[:, g].max()))) for g in range(3)]
    result = anchor_coverage(config, folder)
    assert result["nuclei"] == 3 and result["covered"] == 1.0
    assert result["mean_positives"] == pytest.approx(np.mean(expected))
    assert result["iou70"] == pytest.approx(np.mean(iou.max(axis=0) >= 0.7))
    assert expected[0] >= 1 and iou[:, 0].max() == pytest.approx(1.0)

    cli.main(["anchors", "--config", "learning", "--split", folder])  # octaves and ATSS, as configured
    out = capsys.readouterr().out
    assert "| nuclei | with a positive | positives per nucleus" in out
    row = [line for line in out.splitlines() if line.startswith("| learning")][0]
    assert "atss" in row and row.split("|")[2].strip() == "3"


def test_a_trained_model_takes_other_inference_settings_only():
    from maskrcnn.model import build_model

    config = load_config("tiny")
    model = build_model(config.model, config.data.image_size)
    model.set_inference_config(dataclasses.replace(config.model, detection_min_confidence=0.05))
    assert model.config.detection_min_confidence == 0.05
    with pytest.raises(ValueError, match="model.anchor_octaves cannot change after training"):
        model.set_inference_config(dataclasses.replace(config.model, anchor_octaves=(1.0,)))


# ------------------------------------------------------------------------------------------------------
# The waterfall (`maskrcnn diagnose`)


def _box(labels, ident):
    rows, cols = np.nonzero(labels == ident)
    return [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]


def test_diagnose_refuses_test_time_flips():
    from maskrcnn.diagnostics import diagnose

    config = load_config("tiny")
    flips = dataclasses.replace(config, model=dataclasses.replace(config.model, test_time_flips=True))
    with pytest.raises(ValueError, match="test_time_flips=True: diagnose follows the stages of one view"):
        diagnose(flips, model=None, split="fold3")


def test_waterfall_puts_each_hand_made_nucleus_and_prediction_in_its_bucket():
    from maskrcnn.diagnostics import (
        NUCLEUS_BUCKETS,
        PREDICTED_BUCKETS,
        format_waterfall,
        summarise_waterfall,
        waterfall_image,
    )

    truth = np.zeros((64, 64), np.int32)
    truth[10:20, 10:20] = 1  # A: matched by prediction 1
    truth[30:40, 10:20] = 2  # B: no proposal
    truth[10:20, 40:50] = 3  # C: a proposal, but no box scores high enough
    truth[30:40, 40:50] = 4  # D: a box scores high enough, but no detection keeps it
    truth[50:60, 50:60] = 5  # E: a kept detection, but its mask covers a third of the nucleus
    truth[0:6, 30:36] = 6  # F and G: merged into one prediction
    truth[0:6, 37:43] = 7
    pred = np.zeros((64, 64), np.int32)
    pred[10:20, 10:18] = 1  # A at IoU 0.8
    pred[10:20, 18:21] = 2  # the rest of A and a column beyond: a duplicate of a matched nucleus
    pred[0:6, 30:43] = 3  # covers F and G (IoU 36/78 each): a merge
    pred[50:53, 50:60] = 4  # the top of E (IoU 0.3): a part of one unmatched nucleus
    pred[55:61, 0:5] = 5  # nothing there: background
    pred[39:45, 22:32] = 6  # beside B, touching nothing: background
    pred[39:45, 12:20] = 7  # B's last row (8 px) is under a quarter of this 48 px instance: background
    scale = 2.0  # boxes in model pixels, twice the input's
    boxes = {k: np.array(_box(truth, k), np.float32) * scale for k in range(1, 8)}
    proposals = np.stack([boxes[k] for k in (1, 3, 4, 5)])
    scored = np.stack([boxes[k] for k in (1, 4, 5)])
    kept = np.stack([boxes[1], boxes[5]])
    # Every box-head output at any score: those above, a low-scoring one on D, and C's box moved 8 px
    # right (IoU 240 / 560 with C's 20 px box): the regression moved C's proposal off it.
    refined = np.concatenate([scored, boxes[4][None], boxes[3][None] + [0, 8, 0, 8]])
    nucleus, predicted, side, border, no_box = waterfall_image(
        truth, pred, scale=scale, proposals=proposals, scored_boxes=scored, kept_boxes=kept,
        refined_boxes=refined,
    )  # fmt: skip
    assert [NUCLEUS_BUCKETS[i] for i in nucleus] == [
        "matched", "no_proposal", "low_score", "suppressed", "mask_miss", "no_proposal", "no_proposal",
    ]  # fmt: skip
    assert [PREDICTED_BUCKETS[i] if i >= 0 else "matched" for i in predicted] == [
        "matched", "fp_duplicate", "fp_merge", "fp_part", "fp_background", "fp_background", "fp_background",
    ]  # fmt: skip
    assert side.tolist() == [10, 10, 10, 10, 10, 6, 6]
    assert border.tolist() == [False] * 5 + [True] * 2  # F and G start on the top row
    assert no_box.tolist() == [False, True, True, False, False, True, True]
    result = summarise_waterfall(nucleus, predicted, side, border, no_box)
    assert result["low_score"] == result["low_score_no_box"] == 1  # C
    # With C's own box among the outputs (scored below the threshold), C has a box: its score is low.
    refined[-1] = boxes[3]
    no_box = waterfall_image(
        truth, pred, scale=scale, proposals=proposals, scored_boxes=scored, kept_boxes=kept,
        refined_boxes=refined,
    )[4]  # fmt: skip
    result = summarise_waterfall(nucleus, predicted, side, border, no_box)
    assert (result["low_score"], result["low_score_no_box"]) == (1, 0)
    assert result["by_size"]["< 12 px"]["low_score"] == 1  # C is 10 px
    assert "low_score: 0 of the 1 nuclei have no box-head output" in format_waterfall(
        {**result, "images": 1, "detection_min_confidence": 0.5}
    )


def test_waterfall_matched_is_the_pq_true_positives_and_the_buckets_sum_up():
    from maskrcnn.diagnostics import NUCLEUS_BUCKETS, summarise_waterfall, waterfall_image
    from maskrcnn.evaluation import panoptic_quality
    from tests.model.helpers import make_instances

    rng = np.random.default_rng(3)
    nuclei, preds, sides, borders, truths, tp = [], [], [], [], [], 0
    for _ in range(8):
        truth = make_instances(rng, 96, 14, radius=(3, 9))
        truths.append(truth)
        # A prediction: the truth shifted by a pixel or two, some nuclei dropped, some blobs added.
        pred = np.roll(truth, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        pred[np.isin(pred, rng.choice(np.arange(1, 15), 4))] = 0
        blobs = make_instances(rng, 96, 5)
        pred = np.where((pred == 0) & (blobs > 0), 50 + blobs, pred)
        empty = np.zeros((0, 4), np.float32)
        n, p, s, b, _ = waterfall_image(
            truth, pred, scale=1.0, proposals=empty, scored_boxes=empty, kept_boxes=empty
        )
        nuclei.append(n), preds.append(p), sides.append(s), borders.append(b)
        tp += panoptic_quality(truth, pred).tp
    no_box = [np.ones(len(n), bool) for n in nuclei]
    result = summarise_waterfall(*map(np.concatenate, (nuclei, preds, sides, borders, no_box)))
    assert result["matched"] == tp > 0
    assert result["no_proposal"] == result["nuclei"] - tp  # no boxes at all: every other nucleus
    assert (
        sum(result[k] for k in ("no_proposal", "low_score", "suppressed", "mask_miss", "matched"))
        == (result["nuclei"])
    )
    assert (
        result["matched"] + sum(result[k] for k in ("fp_duplicate", "fp_merge", "fp_part", "fp_background"))
        == result["predicted"]
    )
    assert sum(row["nuclei"] for row in result["by_size"].values()) == result["nuclei"]
    # The border's nuclei: those whose box reaches the first or last row or column, counted by hand.
    cut = 0
    for truth in truths:
        for k in range(1, truth.max() + 1):
            rows, cols = np.nonzero(truth == k)
            cut += len(rows) > 0 and (
                rows.min() == 0 or cols.min() == 0 or rows.max() == 95 or cols.max() == 95
            )
    assert result["at_border"]["nuclei"] == cut > 0
    assert sum(result["at_border"][k] for k in NUCLEUS_BUCKETS) == cut


class _ConstantBoxHead(keras.layers.Layer):
    """Every ROI: foreground probability 0.9 and zero box deltas (the detection is the proposal)."""

    def call(self, pooled, training=False):
        zero = keras.ops.zeros_like(pooled[:, :, 0, 0, :1])  # (B, R, 1)
        logits = keras.ops.concatenate([zero, zero + float(np.log(9.0))], axis=-1)
        deltas = keras.ops.repeat(keras.ops.expand_dims(keras.ops.concatenate([zero] * 4, -1), 2), 2, axis=2)
        return logits, deltas


class _FullBoxMaskHead(keras.layers.Layer):
    """Every ROI's mask is its whole box."""

    def call(self, pooled, training=False):
        on = keras.ops.zeros_like(pooled[..., :1]) + 10.0
        return keras.ops.repeat(keras.ops.repeat(on, 2, axis=2), 2, axis=3)


def _fixed_proposal_model(config, boxes):
    from maskrcnn.model import MaskRCNN

    class FixedProposals(MaskRCNN):
        def proposals(self, rpn_logits, rpn_deltas, size, training=False):
            count = self.config.post_nms_rois_inference
            padded = np.zeros((count, 4), np.float32)
            padded[: len(boxes)] = boxes
            batch = rpn_logits.shape[0]
            valid = np.arange(count) < len(boxes)
            scores = jnp.ones((batch, count), jnp.float32)
            return (
                jnp.broadcast_to(padded, (batch, count, 4)),
                scores,
                jnp.broadcast_to(valid, (batch, count)),
            )

    model = FixedProposals(config.model, box_head=_ConstantBoxHead(), mask_head=_FullBoxMaskHead())
    model.build((None, config.data.image_size, config.data.image_size, 3))
    return model


def test_diagnose_follows_known_boxes_through_a_real_model_and_agrees_with_evaluate(tmp_path):
    """Proposals fixed by hand, every box scored 0.9 and masked whole: each bucket worked out below."""
    from maskrcnn.diagnostics import diagnose
    from maskrcnn.evaluation import panoptic_quality
    from maskrcnn.inference import evaluate

    folder = str(tmp_path / "fold")
    nuclei = {
        "A": (20, 20, 40, 44),  # its proposal (20, 20, 40, 40): box and mask IoU 0.83, matched
        "C": (60, 100, 80, 120),  # proposal exact: matched
        "D": (60, 120, 80, 132),  # proposal (60, 110, 80, 132): IoU 0.55, NMS'd by C's (IoU 0.31 > 0.3)
        "F": (200, 200, 220, 220),  # no proposal
        "G": (150, 100, 170, 110),  # G and H: one proposal over both (IoU 0.48 each): a merge
        "H": (150, 111, 170, 121),
        "P": (200, 100, 240, 140),  # a proposal over its top 15 rows (IoU 0.375): a part
    }
    _write_fold(folder, list(nuclei.values()))
    masks = np.load(os.path.join(folder, "masks.npy"))
    masks[0, 100:130, 20:26, 1] = 8  # E: an L whose box (100, 20, 130, 50) holds 36% of it: mask_miss
    masks[0, 124:130, 20:50, 1] = 8
    np.save(os.path.join(folder, "masks.npy"), masks)
    proposals = [
        (20, 20, 40, 40),  # A
        (20, 38, 40, 50),  # a second box on A's edge (IoU 0.07 with A's): keeps A's last 4 columns
        (60, 100, 80, 120),  # C
        (60, 110, 80, 132),  # D
        (100, 20, 130, 50),  # E
        (150, 100, 170, 121),  # G and H
        (200, 100, 215, 140),  # P
        (230, 10, 250, 30),  # nothing there
    ]
    config = apply_overrides(load_config("tiny"), ["data.variant=nuclei"])  # 128 px: model scale 0.5
    model = _fixed_proposal_model(config, np.array(proposals, np.float32) * 0.5)
    result = diagnose(config, model, folder, progress=False)
    assert {k: result[k] for k in ("matched", "mask_miss", "suppressed", "low_score", "no_proposal")} == {
        "matched": 2, "mask_miss": 1, "suppressed": 1, "low_score": 0, "no_proposal": 4,
    }  # fmt: skip
    assert {k: result[k] for k in ("fp_duplicate", "fp_merge", "fp_part", "fp_background")} == {
        "fp_duplicate": 1, "fp_merge": 1, "fp_part": 2, "fp_background": 1,  # E's and P's are parts
    }  # fmt: skip
    assert result["nuclei"] == 8 and result["predicted"] == 7 and result["images"] == 1

    metrics = evaluate(config, model, folder, str(tmp_path / "eval"), progress=False, max_overlays=0)
    saved = np.load(tmp_path / "eval" / "predictions.npz")
    assert panoptic_quality(saved["true_instances"][0], saved["pred_instances"][0]).tp == result["matched"]
    assert metrics["bpq"] > 0

    strict = dataclasses.replace(config.model, detection_min_confidence=0.95)  # above every box's 0.9
    model.set_inference_config(strict)
    result = diagnose(dataclasses.replace(config, model=strict), model, folder, progress=False)
    assert (result["low_score"], result["no_proposal"], result["predicted"]) == (4, 4, 0)
    assert result["low_score_no_box"] == 0  # each of the four has its box, scored 0.9


def test_diagnose_command_writes_buckets_that_sum_up(tmp_path, capsys):
    import json

    from maskrcnn.model import build_model
    from maskrcnn.train.workdir import CONFIG_FILE, save_weights

    config = apply_overrides(
        load_config("tiny"),
        ["data.builder='synthetic'", "data.synthetic_images_per_fold=4", "data.scale=0.25"],  # 64 px
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / CONFIG_FILE).write_text(config.to_json())
    # Random weights at threshold 0: many detections, few of them right. Seeded: some initial weights
    # predict no instance at all, so unseeded the test failed now and then.
    keras.utils.set_random_seed(0)
    save_weights(build_model(config.model, config.data.image_size), str(workdir))
    args = ["--workdir", str(workdir), "--split", "fold3", "--set", "model.detection_min_confidence=0.0"]
    assert cli.main(["diagnose", *args, "--out", str(tmp_path / "d")]) is None
    result = json.loads((tmp_path / "d" / "diagnose.json").read_text())
    assert result["predicted"] > 0 and result["nuclei"] > 0
    nucleus_keys = ("no_proposal", "low_score", "suppressed", "mask_miss", "matched")
    assert sum(result[k] for k in nucleus_keys) == result["nuclei"]
    assert "| no_proposal |" in capsys.readouterr().out
    assert sum(result["at_border"][k] for k in nucleus_keys) == result["at_border"]["nuclei"]
    for group in (result, result["at_border"], *result["by_size"].values()):
        assert 0 <= group["low_score_no_box"] <= group["low_score"]
    assert (tmp_path / "d" / "diagnose.md").exists()


def test_positive_coverage_of_a_large_nucleus_and_two_small_ones_worked_by_hand(tmp_path):
    """One positive slot a tile; a large nucleus with five proposals and two small ones with none, the
    ground truth added as candidates: uniformly, the large one takes the slot with probability 6/8 and each
    small one 1/8; per nucleus, each 1/3. Either way one nucleus in three is covered a draw."""
    from maskrcnn.diagnostics import positive_coverage

    folder = str(tmp_path / "fold")
    _write_fold(folder, [(20, 20, 60, 60), (100, 100, 108, 108), (150, 40, 158, 48)])  # sides 40, 8, 8
    config = apply_overrides(
        load_config("tiny"),  # 128 px: model scale 0.5
        [
            "data.variant=nuclei",
            "model.train_rois_per_image=3",
            "model.roi_positive_ratio=0.34",  # round(3 * 0.34) = 1 positive slot
            "model.add_gt_as_proposals=True",
        ],
    )
    large = [(20 + d, 20, 60 + d, 60) for d in range(5)]  # IoU >= 0.78 with the large nucleus
    model = _fixed_proposal_model(config, np.array([*large, (200, 200, 240, 240)], np.float32) * 0.5)
    result = positive_coverage(config, model, folder, draws=4000, progress=False)
    assert result["nuclei"] == 3 and result["images"] == 1 and result["positive_slots"] == 1
    assert result["nuclei_by_size"] == {"< 12 px": 2, "12-24 px": 0, "24-48 px": 1, ">= 48 px": 0}
    for rule, small, big in (("uniform", 1 / 8, 6 / 8), ("per_nucleus", 1 / 3, 1 / 3)):
        assert result[rule]["covered"] == pytest.approx(1 / 3)
        assert result[rule]["by_size"]["< 12 px"] == pytest.approx(small, abs=0.03)
        assert result[rule]["by_size"]["24-48 px"] == pytest.approx(big, abs=0.03)
