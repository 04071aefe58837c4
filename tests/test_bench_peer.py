"""`make bench-peer` builds torchvision's Mask R-CNN to our preset's shapes (skipped without torchvision,
an optional extra that the package and CI never install)."""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_peer_config_fills_the_detection_slots():
    from experiments.bench_peer import peer_config

    config = peer_config("tiny", [])
    assert config.model.detection_min_confidence == 0.0 and config.model.detection_nms_threshold == 1.0
    assert peer_config("tiny", ["model.detection_min_confidence=0.5"]).model.detection_min_confidence == 0.5


CHECK = """
import torch
from experiments.bench_peer import peer_config, torchvision_model

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
print("ok")
"""


def test_torchvision_model_has_our_shapes():
    # In a process of its own: torch and XLA in one test worker crashed it.
    pytest.importorskip("torchvision")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
