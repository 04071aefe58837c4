"""Our Mask R-CNN against torchvision's, configured to the same shapes, on this machine in one run.

    pip install -e ".[peer]"     # torch + torchvision: an optional extra, never needed by the package
    make bench-peer              # the fast preset; writes experiments/results/peer.md
    python experiments/bench_peer.py fast --set model.post_nms_rois_inference=300

torchvision's ``MaskRCNN`` is built with the preset's shapes: the ResNet and its batch norm (frozen unless
``model.train_bn``), FPN channels, anchors (scales x octaves per level, ratios), the RPN's 512-channel
3x3 conv (Matterport's; torchvision's default is the FPN's width), the best ``pre_nms_limit`` anchors of
each level, the proposals kept, the sampled anchors and ROIs, ROIAlign 7x7 / 14x14 with two samples a
bin, a 2 x ``box_head_width`` box head, four 3x3 convs of ``mask_head_width`` with batch norm then the
2x2 deconvolution, the detection NMS threshold and the detection slots. Both run on the same synthetic
images, one after the other (ours in a child process first, then torch with as many threads as the
machine has cores).

Inference is timed at batch 1 (ours with label maps; theirs with masks pasted and label maps made the
same way) at a score threshold of 0 and a detection NMS threshold of 1 (nothing suppressed), so that
both fill their detection slots: random weights decide how many detections pass a real threshold and
survive NMS (47 of torchvision's 256 at 0.3 in a trial), and its mask head's cost follows that count.
The train step is one SGD step (momentum 0.9, weight decay 1e-4, gradients clipped at norm 5, every
layer trained) on the preset's batch; per-image figures divide by it. Medians of the repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(__file__), "results", "peer.md")
GOALS = {"inference": 0.8, "train": 1.0}  # issue 18: ours / theirs at most


def peer_config(preset: str, overrides: list[str]):
    from maskrcnn.config import apply_overrides, load_config

    # Score threshold 0 and no detection NMS (IoU threshold 1), so that both fill their detection slots
    # whatever random weights score; first, so that an explicit --set can still change them.
    fill = ["model.detection_min_confidence=0.0", "model.detection_nms_threshold=1.0"]
    return apply_overrides(load_config(preset), [*fill, *overrides])


def ours(preset: str, overrides: list[str], repeats: int) -> dict:
    from experiments.bench_model import whole_program

    whole = whole_program(peer_config(preset, overrides), repeats, infer_batch=1)
    return {k: v for k, v in whole.items() if k not in ("model", "batch", "key")}


def examples(config, count: int) -> list[dict]:
    """The first ``count`` training examples of the preset's data with full-size masks, no augmentation."""
    import dataclasses

    from maskrcnn.input_pipeline import open_split
    from maskrcnn.input_pipeline.instances import prepare

    data = dataclasses.replace(config.data, builder="synthetic", mini_mask_size=None)
    source = open_split(data, data.train_split)
    return [prepare(source[i], data) for i in range(count)]


def torchvision_model(config):
    """torchvision's MaskRCNN with the shapes of ``config.model`` (see the module docstring)."""
    import torch
    import torchvision
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign, misc

    m = config.model
    if m.backbone not in ("resnet50", "resnet101"):
        raise SystemExit(f"bench-peer builds torchvision's ResNet50/101; model.backbone={m.backbone!r}")
    norm = nn.BatchNorm2d if m.train_bn else misc.FrozenBatchNorm2d
    body = getattr(torchvision.models, m.backbone)(weights=None, norm_layer=norm)
    levels = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    backbone = BackboneWithFPN(body, levels, [256, 512, 1024, 2048], m.fpn_channels)
    sizes = tuple(tuple(float(s * o) for o in m.anchor_octaves) for s in m.anchor_scales)
    anchors = AnchorGenerator(sizes, (tuple(m.anchor_ratios),) * len(sizes))
    per_location = len(m.anchor_octaves) * len(m.anchor_ratios)
    rpn_head = RPNHead(m.fpn_channels, per_location)
    rpn_width = 512  # our RPNHead's shared conv (Matterport's)
    rpn_head.conv = nn.Sequential(nn.Conv2d(m.fpn_channels, rpn_width, 3, padding=1), nn.ReLU(inplace=True))
    rpn_head.cls_logits = nn.Conv2d(rpn_width, per_location, 1)
    rpn_head.bbox_pred = nn.Conv2d(rpn_width, 4 * per_location, 1)
    names = list(levels.values())
    channels, classes = m.fpn_channels, m.num_classes + 1
    size = config.data.image_size
    if not m.pre_nms_per_level:
        print("note: torchvision always takes the best pre_nms_limit anchors per level", file=sys.stderr)
    model = MaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors below
        min_size=size,
        max_size=size,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=m.pre_nms_limit,
        rpn_pre_nms_top_n_test=m.pre_nms_limit,
        rpn_post_nms_top_n_train=m.post_nms_rois_training,
        rpn_post_nms_top_n_test=m.post_nms_rois_inference,
        rpn_nms_thresh=m.rpn_nms_threshold,
        rpn_batch_size_per_image=m.rpn_train_anchors_per_image,
        box_roi_pool=MultiScaleRoIAlign(names, m.pool_size, sampling_ratio=2),
        box_head=TwoMLPHead(channels * m.pool_size**2, m.box_head_width),
        box_predictor=FastRCNNPredictor(m.box_head_width, classes),
        box_score_thresh=m.detection_min_confidence,
        box_nms_thresh=m.detection_nms_threshold,
        box_detections_per_img=m.detection_max_instances,
        box_batch_size_per_image=m.train_rois_per_image,
        box_positive_fraction=m.roi_positive_ratio,
        mask_roi_pool=MultiScaleRoIAlign(names, m.mask_pool_size, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [m.mask_head_width] * 4, 1, norm_layer=nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(m.mask_head_width, m.mask_head_width, classes),
    )
    torch.manual_seed(0)
    return model


def theirs(config, repeats: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count())
    batch = config.train.batch_size
    model = torchvision_model(config)
    images, targets = [], []
    for ex in examples(config, batch):
        valid = ex["valid"]
        y1, x1, y2, x2 = np.asarray(ex["boxes"])[valid].T
        images.append(torch.from_numpy(np.asarray(ex["image"], np.float32) / 255.0).permute(2, 0, 1))
        targets.append(
            {
                "boxes": torch.from_numpy(np.stack([x1, y1, x2, y2], 1)),
                "labels": torch.from_numpy(np.asarray(ex["classes"])[valid].astype(np.int64)),  # 1-based
                "masks": torch.from_numpy(np.asarray(ex["masks"])[valid]),
            }
        )

    def label_map(out, threshold=0.5):  # as ours: the highest-scoring detection owns a pixel
        masks = out["masks"][:, 0] > threshold  # detections come sorted by score
        if not masks.shape[0]:
            return torch.zeros(masks.shape[1:], dtype=torch.long)
        rank = torch.arange(masks.shape[0], 0, -1, dtype=torch.float32)[:, None, None]
        return torch.where(masks.any(0), (masks * rank).argmax(0) + 1, 0)

    def first_and_median(fn):
        """(seconds of the first call, its result, median seconds of the next ``repeats`` calls)."""

        def seconds():
            start = time.perf_counter()
            return fn(), time.perf_counter() - start

        result, first = seconds()
        return first, result, statistics.median(seconds()[1] for _ in range(repeats))

    def infer():
        with torch.inference_mode():
            out = model([images[0]])[0]
            return label_map(out), len(out["scores"])

    model.eval()
    first_infer, (_, found), infer_s = first_and_median(infer)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return float(loss.detach())

    first_train, loss, train_s = first_and_median(step)
    import torchvision

    return {
        "version": f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} threads",
        "first_infer_s": first_infer,
        "infer_per_image_s": infer_s,
        "detections_per_image": float(found),
        "first_train_s": first_train,
        "train_step_per_image_s": train_s / batch,
        "loss_finite": bool(np.isfinite(loss)),
    }


def report(preset: str, overrides: list[str], a: dict, b: dict, config) -> str:
    import jax

    m = config.model
    infer_ratio = a["infer_per_image_s"] / b["infer_per_image_s"]
    train_ratio = a["train_step_per_image_s"] / b["train_step_per_image_s"]
    sets = "".join(f" --set {o}" for o in overrides)

    def goal(ratio, key):
        return f"{'met' if ratio <= GOALS[key] else 'not met'} (goal at most {GOALS[key]})"

    return "\n".join(
        [
            "# Our Mask R-CNN against torchvision's, same shapes, same machine, same run",
            "",
            f"Made by `make bench-peer` (`python experiments/bench_peer.py {preset}{sets}`), "
            f"{time.strftime('%Y-%m-%d')}. Machine: {os.cpu_count()} CPU cores ({platform.machine()}); "
            f"ours: jax {jax.__version__} on {a['device']}; theirs: {b['version']}. Random weights, "
            f"synthetic {config.data.image_size} px images, shapes of `{preset}`: {m.backbone}-FPN "
            f"{m.fpn_channels}, {len(m.anchor_octaves) * len(m.anchor_ratios)} anchors a location, best "
            f"{m.pre_nms_limit} of each level before NMS, {m.post_nms_rois_inference} proposals at "
            f"inference and {m.post_nms_rois_training} in training, {m.train_rois_per_image} sampled ROIs, "
            f"box head {m.box_head_width}, mask head {m.mask_head_width}, up to "
            f"{m.detection_max_instances} detections at score threshold {m.detection_min_confidence}. "
            "How each side is configured: the docstring of `experiments/bench_peer.py`.",
            "",
            "| what | ours | torchvision | ours / theirs |",
            "|---|---:|---:|---:|",
            f"| inference per image (batch 1, label maps) | {a['infer_per_image_s']:.3f} s "
            f"| {b['infer_per_image_s']:.3f} s | **{infer_ratio:.2f}** |",
            f"| detections per image in that run | {a['detections_per_image']:.0f} "
            f"| {b['detections_per_image']:.0f} | |",
            f"| train step per image (batch {config.train.batch_size}, every layer) "
            f"| {a['train_step_per_image_s']:.3f} s | {b['train_step_per_image_s']:.3f} s "
            f"| **{train_ratio:.2f}** |",
            f"| first call: compile (ours) or warm-up (theirs), inference | {a['compile_infer_s']:.1f} s "
            f"| {b['first_infer_s']:.1f} s | |",
            f"| first call: compile (ours) or warm-up (theirs), train step | {a['compile_train_s']:.1f} s "
            f"| {b['first_train_s']:.1f} s | |",
            "",
            f"Inference: {goal(infer_ratio, 'inference')}. Train step: {goal(train_ratio, 'train')}. "
            f"Losses finite: ours {a['loss_finite']}, theirs {b['loss_finite']}.",
            "",
        ]
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", nargs="?", default="fast")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ours-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.ours_only:
        print(json.dumps(ours(args.preset, args.overrides, args.repeats)))
        return
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise SystemExit('bench-peer needs torch and torchvision: pip install -e ".[peer]"') from None
    sets = [a for o in args.overrides for a in ("--set", o)]
    print(f"ours: {args.preset} ...", flush=True)
    child = subprocess.run(
        [sys.executable, __file__, args.preset, *sets, "--repeats", str(args.repeats), "--ours-only"],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode:
        raise SystemExit(f"ours failed:\n{child.stderr[-3000:]}")
    a = json.loads(child.stdout.strip().splitlines()[-1])
    print(a, flush=True)
    print("torchvision ...", flush=True)
    config = peer_config(args.preset, args.overrides)
    b = theirs(config, args.repeats)
    print(b, flush=True)
    text = report(args.preset, args.overrides, a, b, config)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
