"""The CPU learning benchmark's model: a small binary Mask R-CNN trained from scratch on real H&E tiles.

    make bench-learning DATA=/path/to/consep_train    # see experiments/bench_learning.py

The `demo` network made twice as wide, at PanNuke's 256 px, detecting every nucleus as one class (the
"nuclei" variant; `learning_classes` is the five-class version), with room for the densest tiles (CoNSeP
tiles hold up to 172 nuclei, median box side 19 px, 5-95% 8-43 px: anchors 8-128 px cover them). It inherits
`fast`'s detection recipe: three anchor octaves per level, ATSS anchor assignment, the best 1000 proposals
of each level, stain and colour jitter, and pools every nucleus from P2 (`roi_canonical_size` 224); its box
head is 1024 wide, its RPN learns objectness with the focal loss over every labelled anchor, and it trains
with Adam from 2e-3 (what each choice is worth at an equal budget of images:
experiments/results/learning_ablation_box128.md, the rows against this preset with a box head 128 wide;
learning_ablation_fold2.md and learning_ablation_fold2_v2.md, the rows against it with SGD;
learning_ablation_fold2_v3.md, with Adam from 1e-3; learning_ablation_fold2_v4.md, with the RPN's sampled
cross-entropy; and learning_ablation_fold2_v5.md, the rows against it as it is). Trains on folds 1 and 2
(the fold folders the benchmark builds) for 22 epochs (1,408 steps of 4 tiles); the benchmark evaluates on
fold 3.
"""

import dataclasses

from maskrcnn.config import StageConfig, load_config


def get_config():
    base = load_config("demo")
    return dataclasses.replace(
        base,
        name="learning",
        data=dataclasses.replace(
            base.data,
            variant="nuclei",
            train_split="fold1+fold2",
            val_split="fold1+fold2",  # never the test fold; the benchmark trains without validation
            test_split="fold3",
            max_instances=192,
        ),
        model=dataclasses.replace(
            base.model,
            num_classes=1,
            # From scratch, batch statistics train far faster than batch norm frozen at its initial
            # identity (Matterport's TRAIN_BN=False suits fine-tuning from ImageNet, not this).
            train_bn=True,
            # 32 and 128 (v4 page, `wide2x`, seed 0): fold-2 bPQ +0.007, fold 3 +0.023, recall +0.032, at
            # 1.84x base's step against 1.05x (1.64x against 0.99x in the run at commit 2bffdef); at equal
            # time (wide2x on 3,400 images) fold-2 -0.020: dropped.
            backbone_width=16,
            fpn_channels=64,
            # RetinaNet's focal loss over every anchor ATSS labels, against 256 anchors sampled a tile with
            # cross-entropy: fold-2 bPQ -0.002 and +0.013 with seeds 0 and 1 (mean +0.006), fold 3 +0.010
            # and +0.017, recall +0.018 and +0.021, at the same step (v4 page, `focal`; the v5 page's
            # `sampled` row is the cross-entropy).
            rpn_loss="focal",
            # Its objectness from RetinaNet's prior 0.01 (rpn_object_prior) instead of 0.5: fold-2 bPQ
            # -0.015, fold 3 -0.018 (v5 page, `prior01`, seed 0): not used.
            # Matterport's and torchvision's width: against 128, fold-2 bPQ +0.009 and +0.004 with seeds 0
            # and 1, fold 3 +0.016 and +0.006, at 1.04x a CPU step (learning_ablation_box128.md, `box1024`).
            box_head_width=1024,
            # 128 wide: fold-2 bPQ -0.005, fold 3 +0.001, SQ no higher, a dearer step (v4 page, `mask128`).
            mask_head_width=64,
            # 512 proposals and 128 sampled ROIs a tile: twice as fast a step as 768 / 256 on the CPU.
            post_nms_rois_training=512,
            post_nms_rois_inference=768,
            train_rois_per_image=128,
            detection_max_instances=192,
            # The FPN level rule k = floor(4 + log2(sqrt(wh) / canonical)): at 224 every ROI under 112 px
            # (every nucleus) pools from P2; at 56, nuclei from 28 px up went to P3-P5 (ablation row `p2`).
            roi_canonical_size=224.0,
        ),
        # Adam in SGD's place (demo's SGD with momentum from 2e-2), decaying linearly per step to 0 behind the
        # same clipping and L2 decay. From 1e-3: fold-2 bPQ +0.019 and +0.029 with seeds 0 and 1, fold 3
        # +0.031 and +0.030, at SGD's step time within its noise (learning_ablation_fold2_v2.md, `adam`);
        # from 2e-3 against 1e-3: fold-2 bPQ +0.020 and +0.004, fold 3 +0.008 and +0.006
        # (learning_ablation_fold2_v3.md, `lr2x`); from 4e-3 against 2e-3: fold-2 -0.003, fold 3 -0.005
        # (learning_ablation_fold2_v4.md, `lr2x`, seed 0).
        train=dataclasses.replace(
            base.train,
            optimizer="adam",
            stages=(StageConfig("all", "all", epochs=22, learning_rate=2e-3),),
        ),
    )
