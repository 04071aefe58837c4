"""`maskrcnn anchors` against a direct count, and the inference settings a trained model accepts."""

import dataclasses
import os

import numpy as np
import pytest

from maskrcnn import cli
from maskrcnn.config import load_config
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
