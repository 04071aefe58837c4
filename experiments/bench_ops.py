"""Speed of our NMS and ROIAlign against keras-hub's and keras-cv's, on the JAX backend, same inputs.

    make bench-ops        # writes experiments/results/ops.md

NMS: 1,000 and 6,000 boxes clustered like RPN proposals in a 1024 px image, IoU 0.7, 1,000 kept.
ROIAlign: 1,000 boxes over P2-P5 of a 1024 px image (256 channels), 7x7 crops, forward and
forward + gradient with respect to the features (what training runs); and against keras-hub's
single-level ROIAlign on a map small enough for it. Every function is jitted and
timed after a warm-up; the table reports medians.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import harness  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from maskrcnn.ops import multilevel_roi_align, nms, roi_align  # noqa: E402
from maskrcnn.ops.nms import TILE  # noqa: E402

TILES = (64, 128, 256, 512)  # our NMS's tile sizes timed; TILE is the default

NOTES = """
Notes:
- Ours is exact greedy NMS (the tests compare it with the textbook loop); keras-hub's and keras-cv's
  are TensorFlow's padded NMS ported to Keras ops. 'same result' compares their kept indices with ours
  on these random boxes. On edge cases theirs is not the classic algorithm (checked by hand): of two
  boxes with equal scores it keeps the higher index, a box whose IoU equals the threshold is suppressed,
  a box whose coordinates are all <= 0 is dropped, and padding indices are 0 rather than -1.
- keras-cv's ROI aligner could not be run: keras-cv 0.9 (its last release) predates JAX 0.10 and its
  multilevel_crop_and_resize fails with a TypeError. It is not the standard ROIAlign anyway (one sample
  at each bin centre, no half-cell shift).
- keras-hub's ROIAlign is torchvision's adaptive-sampling definition in Keras ops; on boxes whose bins
  span 1-2 cells it computes what ours does with sampling_ratio 2 ('same result' checks the outputs,
  for boxes inside the map). For samples more than one cell beyond the map it reads the clamped border
  value where torchvision's definition (and ours) gives 0, so boxes reaching past the map differ.
"""
RESULTS = os.path.join(harness.RESULTS, "ops.md")
IMAGE = 1024


def proposal_like_boxes(rng, n):
    centres = rng.uniform(0, IMAGE, (n // 8, 2))[rng.integers(0, n // 8, n)] + rng.normal(0, 6, (n, 2))
    sides = np.exp(rng.uniform(np.log(8), np.log(300), (n, 2)))
    boxes = np.clip(np.concatenate([centres - sides / 2, centres + sides / 2], axis=1), 0, IMAGE)
    return boxes.astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)


def interleaved_medians(fns, *args, repeats=25):
    """Median seconds of each jitted function, timed in turn within each round (so drift hits all alike)."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))  # compile
    timers = {name: (lambda fn=fn: harness.timed(fn, *args)[1]) for name, fn in fns.items()}
    return {name: harness.median(t) for name, t in harness.rounds(timers, repeats).items()}


def nms_rows(rng):
    """Rows of the main table, and our NMS's time by tile size: {boxes: {tile: seconds}}."""
    from keras_cv.src.layers.object_detection.non_max_suppression import non_max_suppression as cv_nms
    from keras_hub.src.layers.modeling.non_max_supression import non_max_suppression as hub_nms

    fns = {
        tile: jax.jit(
            lambda b, s, tile=tile: nms(b, s, iou_threshold=0.7, max_output_size=1000, tile_size=tile)
        )
        for tile in TILES
    }
    # Theirs take a batch axis and a score threshold; -1 keeps every box, as ours does.
    others = {
        "keras-hub 0.32 non_max_suppression": hub_nms,
        "keras-cv 0.9 non_max_suppression": cv_nms,
    }
    for name, fn in others.items():
        fns[name] = jax.jit(
            lambda b, s, fn=fn: fn(b[None], s[None], 1000, iou_threshold=0.7, score_threshold=-1.0)
        )
    rows, by_tile = [], {}
    for n in (1000, 6000):
        boxes, scores = proposal_like_boxes(rng, n)
        idx, num = fns[TILE](boxes, scores)
        kept = np.asarray(idx)[: int(num)]
        seconds = interleaved_medians(fns, boxes, scores)
        by_tile[n] = {tile: seconds[tile] for tile in TILES}
        for tile in TILES:
            tile_idx, _ = fns[tile](boxes, scores)
            assert np.array_equal(np.asarray(tile_idx), np.asarray(idx)), f"tile {tile} changed the result"
        for name in others:
            their_idx, their_num = fns[name](boxes, scores)
            same = np.array_equal(np.asarray(their_idx)[0, : int(their_num[0])], kept)
            case = f"NMS, {n} boxes, IoU 0.7, 1000 kept"
            rows.append((case, name, seconds[TILE], seconds[name], "yes" if same else "no"))
    return rows, by_tile


def roi_rows(rng):
    from keras_hub.src.models.sam3.roi_align import roi_align as hub_roi_align

    rows = []
    # The paper-sized case: four levels of a 1024 px image. keras-cv 0.9's multilevel_crop_and_resize
    # does arithmetic on Python lists, which JAX 0.10 rejects (TypeError), so only ours is timed.
    strides = (4, 8, 16, 32)
    pyramid = [jnp.asarray(rng.normal(size=(1, IMAGE // s, IMAGE // s, 256)), jnp.float32) for s in strides]
    boxes = jnp.asarray(proposal_like_boxes(rng, 1000)[0][None])

    def ours(p, b):
        return multilevel_roi_align(p, b, 7, strides=strides)

    for fn, what in ((ours, "forward"), (_with_grad(ours), "forward + gradient")):
        t = harness.median_seconds(jax.jit(fn), pyramid, boxes)
        case = f"ROIAlign P2-P5 of 1024 px, 1000 boxes, 7x7x256, {what}"
        rows.append(
            (case, "keras-cv 0.9 multilevel_crop_and_resize: fails on JAX 0.10", t, float("nan"), "n/a")
        )

    # keras-hub's ROIAlign (from its SAM3 model) is single-level and samples adaptively, ceil(bin size)
    # per axis, materialising an (R, 7, 7, H, W, C) array, so it only fits small maps. Boxes of 7-14 cells
    # make its grid 2x2 per bin, the same computation as ours with sampling_ratio 2: outputs must agree.
    fmap = jnp.asarray(rng.normal(size=(1, 16, 16, 64)), jnp.float32)
    yx = rng.uniform(0, 2, (200, 2))  # inside the map: see the note on samples beyond its border
    small = np.concatenate([yx, yx + rng.uniform(7.5, 13.5, (200, 2))], axis=1).astype(np.float32)
    rois = jnp.asarray(np.concatenate([np.zeros((200, 1)), small[:, [1, 0, 3, 2]]], axis=1), jnp.float32)

    def hub(f, r):
        return hub_roi_align(f, r, (7, 7), 16, 16, 64, spatial_scale=1.0, aligned=True)

    def mine(f, b):
        return roi_align(f, b, 7, spatial_scale=1.0)[0]

    theirs_out = jax.jit(hub)(fmap, rois)  # NHWC in, (R, 7, 7, C) out
    same = np.allclose(np.asarray(jax.jit(mine)(fmap, small[None])), np.asarray(theirs_out), atol=1e-4)
    for f_mine, f_hub, what in (
        (mine, hub, "forward"),
        (_with_grad(mine), _with_grad(hub), "forward + gradient"),
    ):
        t_mine = harness.median_seconds(jax.jit(f_mine), fmap, small[None])
        t_hub = harness.median_seconds(jax.jit(f_hub), fmap, rois)
        case = f"ROIAlign one 16x16x64 map, 200 boxes, 7x7, {what}"
        rows.append((case, "keras-hub 0.32 sam3 roi_align", t_mine, t_hub, "yes" if same else "no"))
    return rows


def _with_grad(fn):
    def loss(p, b):
        return jnp.sum(fn(p, b) ** 2)

    return jax.grad(loss)


def main():
    rng = np.random.default_rng(0)
    rows, by_tile = nms_rows(rng)
    rows += roi_rows(rng)
    lines = [
        "# Ops speed: ours against keras-hub and keras-cv (JAX backend)",
        "",
        harness.header("make bench-ops (python experiments/bench_ops.py)"),
        "",
        "Medians of jitted runs after a warm-up (NMS: 25 rounds, each timing every NMS in turn; "
        "ROIAlign: 7 runs).",
        "",
        "| case | other | ours (ms) | theirs (ms) | ours / theirs | same result |",
        "|---|---|---:|---:|---:|---|",
    ]
    for case, other, mine, theirs, same in rows:
        theirs_ms = "-" if np.isnan(theirs) else f"{theirs * 1e3:.1f}"
        ratio = "-" if np.isnan(theirs) else f"{mine / theirs:.2f}"
        lines.append(f"| {case} | {other} | {mine * 1e3:.1f} | {theirs_ms} | {ratio} | {same} |")
    lines += [
        "",
        f"Our NMS by tile size (ms, same rounds; the default is {TILE}; every size keeps the same boxes):",
        "",
        "| boxes | " + " | ".join(f"tile {t}" for t in TILES) + " |",
        "|---:|" + "---:|" * len(TILES),
    ]
    for n, seconds in by_tile.items():
        lines.append(f"| {n} | " + " | ".join(f"{seconds[t] * 1e3:.2f}" for t in TILES) + " |")
    lines.append(NOTES)
    harness.write(RESULTS, "\n".join(lines))


if __name__ == "__main__":
    main()
