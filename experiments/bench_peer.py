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
images, torch with as many threads as the machine has cores.

Inference is timed at batch 1 (ours with label maps; theirs with masks pasted and label maps made the
same way) at a score threshold of 0 and a detection NMS threshold of 1 (nothing suppressed), so that
both fill their detection slots: random weights decide how many detections pass a real threshold and
survive NMS, and its mask head's cost follows that count.
The train step is one SGD step (momentum 0.9, weight decay 1e-4, gradients clipped at norm 5, every
layer trained) on the preset's batch; per-image figures divide by it. Ours runs its mask head over a
static round(train_rois_per_image * roi_positive_ratio) slots an image whatever number of them hold a
positive; torchvision's runs over its positives only, which with random weights are few (mostly the
ground truth it adds to the proposals). So torchvision's step is timed twice: with its own positives, and
with background proposals promoted until it has as many positives as our slots (``fill_positives``), the
same work as ours and the figure the goal is read from, as inference fills both sides' detection slots.
After a first call of each, the calls of both models take turns over ``--rounds`` rounds (5), in one
process each (ours in a child: torch and XLA in one process crashed); the figures are their medians.
Two parts of the train step are also timed alone on both sides, forward + backward: the backbone with
the FPN, and the mask head over the same-work ROIs; the rest of the step is the difference.

On a GPU the same command runs both there (torch on CUDA, under ``torch.autocast(bfloat16)`` when the
config sets ``train.mixed_precision``; ours with JAX's memory preallocation off, so both fit), each timer
waiting for its device: ``python experiments/bench_peer.py fast --infer-batch 16 --set
train.batch_size=16 --set train.mixed_precision=True``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import harness

RESULTS = os.path.join(harness.RESULTS, "peer.md")
GOALS = {"inference": 0.8, "train": 1.0}  # issue 18: ours / theirs at most


def peer_config(preset: str, overrides: list[str]):
    from maskrcnn.config import apply_overrides, load_config

    # Score threshold 0 and no detection NMS (IoU threshold 1), so that both fill their detection slots
    # whatever random weights score; first, so that an explicit --set can still change them.
    fill = ["model.detection_min_confidence=0.0", "model.detection_nms_threshold=1.0"]
    return apply_overrides(load_config(preset), [*fill, *overrides])


PROMPT = "@@ "  # the child's answers on stdout start with this; anything else there is passed over


def serve(preset: str, overrides: list[str], infer_batch: int) -> None:
    """The child process: compiles ours, prints its compile figures, then runs one call per command read
    from stdin ("train", "infer", "backbone_fpn" or "mask_head") and prints its seconds; "done" prints
    whether the loss stayed finite."""
    from programs import compiled_programs

    config = peer_config(preset, overrides)
    p = compiled_programs(config, infer_batch=infer_batch)
    p.update(our_parts(p["model"], p["batch"], mask_head_slots(config)))
    keys = ("device", "compile_train_s", "compile_infer_s", "detections_per_image", "train_batch")

    def answer(value):
        print(PROMPT + json.dumps(value), flush=True)

    answer({k: p[k] for k in keys})
    for command in sys.stdin:
        command = command.strip()
        if command == "done":
            answer({"loss_finite": p["loss_finite"]()})
            return
        answer(p[command]())


def our_parts(model, batch, slots: int) -> dict:
    """Two parts of our train step alone, forward + backward, jitted as ``experiments/stages.py`` times
    them (gradients of the sum of the outputs): ``backbone_fpn`` on the batch's images (no image
    gradient) and ``mask_head`` on random pooled features of ``slots`` ROIs an image (with their
    gradient). Each runs one call and returns its seconds."""
    import jax
    import jax.numpy as jnp
    from stages import forward_backward, pure, variables

    cfg = model.config
    images = (batch["image"].astype("float32") - jnp.asarray(cfg.pixel_mean, jnp.float32)).astype(
        model.compute_dtype
    )
    backbone, fpn = pure(model.backbone, training=cfg.train_bn), pure(model.fpn, training=True)
    (tb, nb), (tf, nf) = variables(model.backbone), variables(model.fpn)

    def backbone_fpn(trainable, non_trainable, x):
        return fpn(trainable[1], non_trainable[1], backbone(trainable[0], non_trainable[0], x))

    size, channels = cfg.mask_pool_size, cfg.fpn_channels
    pooled = jax.random.normal(jax.random.PRNGKey(1), (images.shape[0], slots, size, size, channels))
    parts = {
        "backbone_fpn": forward_backward(backbone_fpn, (tb, tf), (nb, nf), [images], input_grads=False),
        "mask_head": forward_backward(
            pure(model.mask_head, training=True),
            *variables(model.mask_head),
            [pooled.astype(model.compute_dtype)],
        ),
    }

    def timer(fn, args):
        jax.block_until_ready(fn(*args))  # the compile
        return lambda: harness.timed(fn, *args)[1]

    return {name: timer(*part) for name, part in parts.items()}


class Ours:
    """Our model in a child process (torch and XLA in one process crashed), driven one call at a time so
    that its calls interleave with torchvision's."""

    def __init__(self, preset: str, overrides: list[str], infer_batch: int):
        import tempfile

        sets = [a for o in overrides for a in ("--set", o)]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, preset, *sets, "--infer-batch", str(infer_batch), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},  # leave a GPU's memory to torch too
        )
        self.figures = self._answer()

    def _answer(self):
        for line in self.proc.stdout:
            if line.startswith(PROMPT):
                return json.loads(line[len(PROMPT) :])
        self.log.seek(0)
        raise SystemExit(f"ours failed:\n{self.log.read()[-3000:]}")

    def __call__(self, command: str):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> dict:
        figures = self("done")
        self.proc.wait()
        return figures


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


def theirs(config, infer_batch: int) -> dict:
    """torchvision's model on the same batch: ``infer()``, ``train()`` and ``train_filled()`` (the step
    with as many positives as our mask-head slots, :func:`fill_positives`) each run one call and return
    its seconds; beside them what the calls saw (``seen``: detections, mask-head ROIs, losses)."""
    import contextlib

    import numpy as np
    import torch
    import torchvision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count())
    else:
        torch.backends.cudnn.benchmark = True
    bf16 = device.type == "cuda" and config.train.mixed_precision  # as ours: bf16 compute, float32 weights

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    batch = config.train.batch_size
    model = torchvision_model(config).to(device)
    images, targets = [], []
    for ex in examples(config, batch):
        valid = ex["valid"]
        y1, x1, y2, x2 = np.asarray(ex["boxes"])[valid].T
        images.append(
            torch.from_numpy(np.asarray(ex["image"], np.float32) / 255.0).permute(2, 0, 1).to(device)
        )
        targets.append(
            {
                "boxes": torch.from_numpy(np.stack([x1, y1, x2, y2], 1)).to(device),
                "labels": torch.from_numpy(np.asarray(ex["classes"])[valid].astype(np.int64)).to(device),
                "masks": torch.from_numpy(np.asarray(ex["masks"])[valid]).to(device),
            }
        )

    def label_map(out, threshold=0.5):  # as ours: the highest-scoring detection owns a pixel
        masks = out["masks"][:, 0] > threshold  # detections come sorted by score
        if not masks.shape[0]:
            return torch.zeros(masks.shape[1:], dtype=torch.long, device=device)
        rank = torch.arange(masks.shape[0], 0, -1, dtype=torch.float32, device=device)[:, None, None]
        return torch.where(masks.any(0), (masks * rank).argmax(0) + 1, 0)

    seen = {"detections": [], "mask_rois": {False: [], True: []}, "losses": []}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    slots = mask_head_slots(config)
    fill_positives(model.roi_heads, 0)

    def count_mask_rois(_module, _inputs, pooled):
        if model.training:
            seen["mask_rois"][bool(model.roi_heads.fill_count)].append(pooled.shape[0] / batch)

    model.roi_heads.mask_roi_pool.register_forward_hook(count_mask_rois)

    def seconds(fn):
        def run() -> float:
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            return time.perf_counter() - start

        return run

    infer_images = [images[i % len(images)] for i in range(infer_batch)]

    @seconds
    def infer():
        model.eval()
        with torch.inference_mode(), autocast():
            outs = model(infer_images)
            for out in outs:
                label_map(out)
        seen["detections"].append(statistics.mean(len(out["scores"]) for out in outs))

    def step(fill: int):
        model.train()
        model.roi_heads.fill_count = fill
        with autocast():
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        seen["losses"].append(float(loss.detach()))

    train, train_filled = seconds(lambda: step(0)), seconds(lambda: step(slots))
    batched = torch.stack(images)
    pooled = torch.randn(batch * slots, config.model.fpn_channels, *(2 * [config.model.mask_pool_size]))
    pooled = pooled.to(device).requires_grad_(True)

    def backward(fn):  # as our_parts: the gradient of the sum of the outputs, in training mode
        def run():
            model.train()
            model.zero_grad()
            with autocast():
                total = sum(o.float().sum() for o in fn())
            total.backward()

        return seconds(run)

    backbone_fpn = backward(lambda: model.backbone(batched).values())
    mask_head = backward(lambda: [model.roi_heads.mask_predictor(model.roi_heads.mask_head(pooled))])
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    return {
        "version": f"torch {torch.__version__}, torchvision {torchvision.__version__}, {where}"
        + (", bf16 autocast" if bf16 else ""),
        "infer": infer,
        "train": train,
        "train_filled": train_filled,
        "backbone_fpn": backbone_fpn,
        "mask_head": mask_head,
        "seen": seen,
    }


def mask_head_slots(config) -> int:
    """ROIs per image our train step runs the mask head over: its static positive slots, however many of
    them hold a positive (``MaskRCNN.training_losses``)."""
    from maskrcnn.targets import positive_slots

    return positive_slots(config.model.train_rois_per_image, config.model.roi_positive_ratio)


def fill_positives(roi_heads, count: int) -> None:
    """Make torchvision's ROI sampling label at least ``count`` proposals of each image foreground
    (``roi_heads.fill_count``, which can be changed later; 0: its own labels), so that its box and mask
    heads do the work of our static shapes: with random weights few proposals overlap a nucleus (the report
    gives how many ROIs went through each mask head), and torchvision's mask head runs over the
    positives only. Background proposals, in the RPN's order, are promoted to the class of the ground truth
    they overlap most; the sampler then draws its positives and fills the rest with background as before."""
    import torch

    roi_heads.fill_count = count
    if hasattr(roi_heads, "assign_unfilled"):
        return
    roi_heads.assign_unfilled = roi_heads.assign_targets_to_proposals

    def assign_filled(proposals, gt_boxes, gt_labels):
        matched, labels = roi_heads.assign_unfilled(proposals, gt_boxes, gt_labels)
        for index, label, classes in zip(matched, labels, gt_labels, strict=True):
            short = roi_heads.fill_count - int((label > 0).sum())
            if short > 0 and classes.numel():
                promote = torch.where(label == 0)[0][:short]
                label[promote] = classes[index[promote]].to(label.dtype)
        return matched, labels

    roi_heads.assign_targets_to_proposals = assign_filled


def report(preset: str, overrides: list[str], a: dict, b: dict, config, infer_batch: int = 1) -> str:
    m = config.model
    infer_ratio = a["infer_per_image_s"] / b["infer_per_image_s"]
    own_ratio = a["train_step_per_image_s"] / b["train_step_per_image_s"]
    train_ratio = a["train_step_per_image_s"] / b["filled_train_step_per_image_s"]
    slots = mask_head_slots(config)
    sets = "".join(f" --set {o}" for o in overrides) + (
        f" --infer-batch {infer_batch}" if infer_batch != 1 else ""
    )

    ours_parts = {k: a[f"{k}_per_image_s"] for k in ("backbone_fpn", "mask_head")}
    theirs_parts = {k: b[f"{k}_per_image_s"] for k in ("backbone_fpn", "mask_head")}
    ours_parts["rest"] = a["train_step_per_image_s"] - sum(ours_parts.values())
    theirs_parts["rest"] = b["filled_train_step_per_image_s"] - sum(theirs_parts.values())

    def row(what, key):
        x, y = ours_parts[key], theirs_parts[key]
        return f"| {what} | {x:.3f} s | {y:.3f} s | {x / y:.2f} |"

    def goal(ratio, key):
        return f"{'met' if ratio <= GOALS[key] else 'not met'} (goal at most {GOALS[key]})"

    infer_verdict = goal(infer_ratio, "inference")
    if round(a["detections_per_image"]) != round(b["detections_per_image"]):
        infer_verdict = (  # the mask head's share of inference grows with the detections
            f"not comparable, {a['detections_per_image']:.0f} detections an image against "
            f"{b['detections_per_image']:.0f} (random weights left the others without area)"
        )

    return "\n".join(
        [
            "# Our Mask R-CNN against torchvision's, same shapes, same machine, same run",
            "",
            harness.header(f"python experiments/bench_peer.py {preset}{sets}"),
            "",
            f"Ours on {a['device']}; theirs: {b['version']}. Random weights, "
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
            f"| inference per image (batch {infer_batch}, label maps) | {a['infer_per_image_s']:.4f} s "
            f"| {b['infer_per_image_s']:.4f} s | **{infer_ratio:.2f}** |",
            f"| detections per image in that run | {a['detections_per_image']:.0f} "
            f"| {b['detections_per_image']:.0f} | |",
            f"| train step per image (batch {config.train.batch_size}, every layer), same work: "
            f"{slots} ROIs an image through our mask head, {b['filled_mask_rois_per_image']:.1f} through "
            f"theirs | {a['train_step_per_image_s']:.3f} s "
            f"| {b['filled_train_step_per_image_s']:.3f} s | **{train_ratio:.2f}** |",
            row("of which: backbone + FPN alone, forward + backward", "backbone_fpn"),
            row(
                f"of which: mask head alone over {slots} ROIs an image, forward + backward",
                "mask_head",
            ),
            row("of which: the rest (same-work step less the two parts)", "rest"),
            f"| the same, torchvision with its own positives: {b['mask_rois_per_image']:.1f} ROIs an image "
            f"through its mask head, ours {slots} | {a['train_step_per_image_s']:.3f} s "
            f"| {b['train_step_per_image_s']:.3f} s | {own_ratio:.2f} |",
            f"| compile (ours: no call counted) or first call (theirs), inference "
            f"| {a['compile_infer_s']:.1f} s | {b['first_infer_s']:.1f} s | |",
            f"| compile (ours: no call counted) or first call (theirs), train step "
            f"| {a['compile_train_s']:.1f} s | {b['first_train_s']:.1f} s | |",
            "",
            f"Medians of {b['rounds']} rounds, each running every call once, ours and theirs in turn; "
            f"the ratio within a round ranged {harness.spread(b['round_ratios']['inference'])} at "
            f"inference and {harness.spread(b['round_ratios']['train'])} in the train step (same work).",
            "",
            f"Inference: {infer_verdict}. Train step, same work: "
            f"{goal(train_ratio, 'train')}. "
            f"Losses finite: ours {a['loss_finite']}, theirs {b['loss_finite']}.",
            "",
        ]
    )


def measure(preset: str, overrides: list[str], rounds: int, infer_batch: int = 1) -> tuple[dict, dict]:
    """Both models' figures, their calls interleaved: each round runs ours' inference, theirs, ours'
    train step, theirs with its own positives and theirs filled, then the two parts on both sides, so
    that the machine's drift falls on both alike."""
    config = peer_config(preset, overrides)
    b = theirs(config, infer_batch)  # first: it refuses a backbone torchvision does not have
    print(f"ours: {preset}, compiling ...", flush=True)
    ours = Ours(preset, overrides, infer_batch)
    print(ours.figures, flush=True)
    print("torchvision: first calls ...", flush=True)
    parts = ("backbone_fpn", "mask_head")
    first = {name: b[name]() for name in ("infer", "train", "train_filled", *parts)}
    names = (
        "ours_infer",
        "ours_train",
        *(f"ours_{n}" for n in parts),
        "infer",
        "train",
        "train_filled",
        *parts,
    )
    times = {name: [] for name in names}
    per_image = 1 / config.train.batch_size
    for r in range(rounds):
        times["ours_infer"].append(ours("infer") / infer_batch)
        times["infer"].append(b["infer"]() / infer_batch)
        times["ours_train"].append(ours("train") * per_image)
        times["train"].append(b["train"]() * per_image)
        times["train_filled"].append(b["train_filled"]() * per_image)
        for name in parts:
            times[f"ours_{name}"].append(ours(name) * per_image)
            times[name].append(b[name]() * per_image)
        print(
            f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
            flush=True,
        )
    import numpy as np

    median = {k: statistics.median(v) for k, v in times.items()}
    seen = b["seen"]
    a = {
        **ours.figures,
        **ours.close(),
        "infer_per_image_s": median["ours_infer"],
        "train_step_per_image_s": median["ours_train"],
        **{f"{name}_per_image_s": median[f"ours_{name}"] for name in parts},
    }
    theirs_figures = {
        "version": b["version"],
        "first_infer_s": first["infer"],
        "first_train_s": first["train"],
        "infer_per_image_s": median["infer"],
        "train_step_per_image_s": median["train"],
        "filled_train_step_per_image_s": median["train_filled"],
        **{f"{name}_per_image_s": median[name] for name in parts},
        "detections_per_image": statistics.median(seen["detections"]),
        "mask_rois_per_image": statistics.median(seen["mask_rois"][False]),
        "filled_mask_rois_per_image": statistics.median(seen["mask_rois"][True]),
        "loss_finite": bool(np.all(np.isfinite(seen["losses"]))),
        "round_ratios": {
            "inference": [x / y for x, y in zip(times["ours_infer"], times["infer"], strict=True)],
            "train": [x / y for x, y in zip(times["ours_train"], times["train_filled"], strict=True)],
        },
        "rounds": rounds,
    }
    return a, theirs_figures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", nargs="?", default="fast")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--infer-batch", type=int, default=1, help="images per inference call (16 on a GPU)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.preset, args.overrides, args.infer_batch)
        return
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise SystemExit('bench-peer needs torch and torchvision: pip install -e ".[peer]"') from None
    a, b = measure(args.preset, args.overrides, args.rounds, args.infer_batch)
    config = peer_config(args.preset, args.overrides)
    harness.write(args.out, report(args.preset, args.overrides, a, b, config, args.infer_batch))


if __name__ == "__main__":
    main()
