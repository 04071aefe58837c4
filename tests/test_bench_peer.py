"""`make bench-peer` builds torchvision's Mask R-CNN to our preset's shapes (skipped without torchvision,
an optional extra that the package and CI never install)."""

import os
import subprocess
import sys

import pytest

# The benchmarks are scripts in one folder that import each other by name.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))


def test_peer_config_fills_the_detection_slots():
    from bench_peer import peer_config

    config = peer_config("tiny", [])
    assert config.model.detection_min_confidence == 0.0 and config.model.detection_nms_threshold == 1.0
    assert peer_config("tiny", ["model.detection_min_confidence=0.5"]).model.detection_min_confidence == 0.5


def test_report_reads_the_goal_from_the_same_work_row():
    from bench_peer import mask_head_slots, peer_config, report

    config = peer_config("fast", [])
    assert mask_head_slots(config) == 84  # round(256 * 0.33)
    ours = {
        "device": "cpu",
        "compile_train_s": 40.0,
        "compile_infer_s": 9.0,
        "detections_per_image": 256,
        "loss_finite": True,
        "infer_per_image_s": 0.75,
        "train_step_per_image_s": 3.0,
        "backbone_fpn_per_image_s": 0.5,
        "mask_head_per_image_s": 1.5,
    }
    theirs = {
        "version": "torch",
        "first_infer_s": 1.0,
        "first_train_s": 4.0,
        "infer_per_image_s": 1.0,
        "train_step_per_image_s": 1.0,
        "filled_train_step_per_image_s": 2.0,
        "detections_per_image": 256,
        "mask_rois_per_image": 16.0,
        "filled_mask_rois_per_image": 84.0,
        "loss_finite": True,
        "round_ratios": {"inference": [0.7, 0.8], "train": [1.4, 1.6]},
        "rounds": 2,
        "backbone_fpn_per_image_s": 0.25,
        "mask_head_per_image_s": 0.75,
    }
    text = report("fast", [], ours, theirs, config)
    assert (
        "| **0.75** |" in text and "| **1.50** |" in text and "| 3.00 |" in text
    )  # 3.0 / 1.0: own positives
    assert "Inference: met (goal at most 0.8). Train step, same work: not met (goal at most 1.0)." in text
    assert "| 0.500 s | 0.250 s | 2.00 |" in text and "| 1.500 s | 0.750 s | 2.00 |" in text
    assert "the two parts) | 1.000 s | 1.000 s | 1.00 |" in text  # 3.0 - 0.5 - 1.5 and 2.0 - 0.25 - 0.75
    assert "ranged 0.70-0.80 at inference and 1.40-1.60" in text
    # Inference at different detection counts is different work: no verdict.
    text = report("fast", [], {**ours, "detections_per_image": 22}, theirs, config)
    assert "Inference: not comparable, 22 detections an image against 256" in text


CHECK = """
import torch
from bench_peer import peer_config, torchvision_model

config = peer_config("fast", [])
m = config.model
model = torchvision_model(config)
per_location = len(m.anchor_octaves) * len(m.anchor_ratios)
assert model.rpn.anchor_generator.num_anchors_per_location() == [per_location] * len(m.anchor_scales)
assert model.rpn.head.conv[0].out_channels == 512
assert model.roi_heads.box_head.fc6.in_features == m.fpn_channels * m.pool_size**2
assert model.roi_heads.box_head.fc6.out_features == m.box_head_width
assert model.roi_heads.detections_per_img == m.detection_max_instances
assert model.roi_heads.mask_head[0][0].out_channels == m.mask_head_width
model.eval()
with torch.inference_mode():
    out = model([torch.rand(3, config.data.image_size, config.data.image_size)])[0]
assert out["masks"].shape[-2:] == (config.data.image_size,) * 2

# fill_positives: background proposals, in order, take the class of the ground truth they overlap most.
from bench_peer import fill_positives
proposals = [torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [30, 30, 40, 40], [100, 100, 110, 110.0]])]
truth = [torch.tensor([[0, 0, 10, 10], [100, 100, 110, 110.0]])], [torch.tensor([1, 2])]
heads = model.roi_heads
fill_positives(heads, 2)  # two positives already: nothing changes
assert heads.assign_targets_to_proposals(proposals, *truth)[1][0].tolist() == [1, 0, 0, 2]
fill_positives(heads, 3)  # one short: the first background proposal becomes class 1 (IoU 0 with both)
assert heads.assign_targets_to_proposals(proposals, *truth)[1][0].tolist() == [1, 1, 0, 2]
fill_positives(heads, 0)  # its own labels again
assert heads.assign_targets_to_proposals(proposals, *truth)[1][0].tolist() == [1, 0, 0, 2]
print("ok")
"""


def test_torchvision_model_has_our_shapes_and_fills_positives():
    # In a process of its own: torch and XLA in one test worker crashed it.
    pytest.importorskip("torchvision")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    here = os.path.join(root, "experiments")  # the benchmarks import each other by name
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=here, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
