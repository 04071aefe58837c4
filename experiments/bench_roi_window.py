"""What ROIAlign's window form gains over its gather form, alone and in the whole `fast` program, one run.

    python experiments/bench_roi_window.py                         # writes experiments/results/roi_window.md
    python experiments/bench_roi_window.py --workdir runs/demo/model  # and a trained run (make demo's)

Both forms compute the same numbers (``maskrcnn/ops/roi_align.py``); ``model.roi_window`` picks the form
of the mask head's pooling (16: the window form, the default; 0: the gather form); the box head's keeps
the gather form, whose 7x7 forward + backward the first table shows on par or faster. Tables:

- the op alone, forward and forward + backward (the gradient of a sum of squares), on the P2-P5 pyramid of
  four 256 px images with 256 channels and 1,024 nucleus-sized boxes (6-60 px sides), at the box head's
  7x7 and the mask head's 14x14, with the share of the boxes that fit the window;
- the whole `fast` program, one model and one set of random weights, the two forms traced from it and
  called in turn for a few rounds: inference per image (batch 1, the detection slots filled as in
  ``bench_peer.py``: score threshold 0, no class NMS) and the train step per image (batch 4, every layer).
  Beside them, the share of that run's proposals and detections that fit: with random weights the RPN's
  boxes are arbitrary (thin and large ones among them), and when more of them miss the window than there
  are spare slots, the pooling takes the gather form;
- with ``--workdir``, the same for a trained run (its config, weights, data and thresholds), whose boxes
  are nuclei.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import harness

RESULTS = os.path.join(harness.RESULTS, "roi_window.md")
ROUNDS = 5


def op_rows(roi_align) -> list[str]:
    import jax
    import numpy as np

    strides = (4, 8, 16, 32)
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 4))
    pyramid = [jax.random.normal(next(keys), (4, 256 // s, 256 // s, 256)) for s in strides]
    rng = np.random.default_rng(0)
    centres, sides = rng.uniform(0, 256, (4, 256, 2)), rng.uniform(6, 60, (4, 256, 2))
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], -1).clip(0, 256).astype(np.float32)
    rows = []
    for size, head in ((7, "box head"), (14, "mask head")):

        def pool(window, size=size):
            return lambda *p: roi_align.multilevel_roi_align(
                list(p), boxes, size, strides=strides, window=window
            )

        fit = fit_share(roi_align, pyramid, boxes, size)
        old_fwd, old_both, old_out = harness.form_timings(pool(None), *pyramid)
        new_fwd, new_both, new_out = harness.form_timings(pool(roi_align.WINDOW), *pyramid)
        rows.append(
            f"| {size}x{size} ({head}), {fit:.0%} of the boxes fit | {old_fwd:.0f} | {new_fwd:.0f} "
            f"| {old_both:.0f} | {new_both:.0f} | {old_both / new_both:.2f}x "
            f"| {harness.relative_difference(old_out, new_out):.1e} |"
        )
        print(rows[-1], flush=True)
    return rows


def fit_share(roi_align, pyramid, boxes, size, canonical_size=224.0, valid=None) -> float:
    """The share of ``boxes`` (B, R, 4) (those ``valid``, if given) whose samples fit the window on their
    FPN level."""
    import jax.numpy as jnp

    flat = jnp.asarray(boxes).reshape(-1, 4)
    level = roi_align.assign_fpn_levels(flat, num_levels=len(pyramid), canonical_size=canonical_size)
    shapes = [tuple(p.shape[1:3]) for p in pyramid]
    scales = [1 / 2 ** (i + 2) for i in range(len(pyramid))]
    *_, fits = roi_align._window_geometry(
        flat, level, shapes, scales, (size, size), 2, True, roi_align.WINDOW
    )
    if valid is None:
        return float(jnp.mean(fits))
    valid = jnp.asarray(valid).reshape(-1)
    return float(jnp.sum(fits & valid) / jnp.maximum(jnp.sum(valid), 1))


def program_rows(roi_align, workdir: str | None = None) -> list[str]:
    import jax
    import jax.numpy as jnp

    from maskrcnn import input_pipeline
    from maskrcnn.config import StageConfig, load_config
    from maskrcnn.model import build_model, detections_to_label_maps
    from maskrcnn.train.step import prepare_stage
    from maskrcnn.train.workdir import load_trained

    if workdir:  # a trained model, on its own data, with its own thresholds
        config, model = load_trained(workdir)
    else:
        config = load_config("fast")
        config = dataclasses.replace(
            config,
            data=dataclasses.replace(config.data, builder="synthetic"),
            model=dataclasses.replace(
                config.model, detection_min_confidence=0.0, detection_nms_threshold=1.0
            ),
        )
        import keras

        keras.utils.set_random_seed(0)  # the weights of bench_model.py and bench_peer.py
        model = build_model(
            config.model, config.data.image_size, mini_masks=config.data.mini_mask_size is not None
        )
    batch = next(input_pipeline.make_train_iterator(config, epoch=0))
    batch = {k: batch[k] for k in input_pipeline.MODEL_INPUTS}
    size = config.data.image_size
    images = jnp.asarray(batch["image"][:1])
    variables = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )
    key = jax.random.PRNGKey(0)

    forms = {}
    for window in (0, roi_align.WINDOW):  # the model reads model.config when it is traced
        model.config = dataclasses.replace(model.config, roi_window=window)

        def infer_fn(variables, images):  # a new function each time: jax.jit caches by function
            detections = model.stateless_call(*variables, images)[0]
            return detections_to_label_maps(detections, (size, size))

        start = time.perf_counter()
        infer = jax.jit(infer_fn).trace(variables, images).lower().compile()
        compile_infer = time.perf_counter() - start
        _, _, _, state, step = prepare_stage(model, config.train, StageConfig("all", "all", 1, 1e-3), 1)
        start = time.perf_counter()
        step = step.trace(state, batch, key).lower().compile()
        forms[window] = {
            "infer": infer,
            "step": step,
            "state": state,
            "compile": (compile_infer, time.perf_counter() - start),
        }
        jax.block_until_ready(infer(variables, images))
        forms[window]["state"] = jax.block_until_ready(step(state, batch, key))[0]

    times = {w: {"infer": [], "step": []} for w in forms}
    for round_ in range(ROUNDS):
        # The order alternates: the second program of a round can run slower than the first.
        for window, f in sorted(forms.items(), reverse=round_ % 2 == 1):
            start = time.perf_counter()
            jax.block_until_ready(f["infer"](variables, images))
            times[window]["infer"].append(time.perf_counter() - start)
            start = time.perf_counter()
            f["state"] = jax.block_until_ready(f["step"](f["state"], batch, key))[0]
            times[window]["step"].append((time.perf_counter() - start) / len(batch["image"]))

    m = config.model
    x = (images.astype("float32") - jnp.asarray(m.pixel_mean, jnp.float32)).astype(model.compute_dtype)
    pyramid = model.fpn(model.backbone(x))
    proposals, _, valid = model.proposals(*model.rpn_head(pyramid), (size, size))
    class_logits, box_deltas = model.box_head(model.roi_features(pyramid[:4], proposals, m.pool_size))
    detections = model.detections(class_logits, box_deltas, proposals, valid, (size, size))
    fit = fit_share(roi_align, pyramid[:4], proposals, m.pool_size, m.roi_canonical_size)
    fit_detections = fit_share(
        roi_align,
        pyramid[:4],
        detections["boxes"],
        m.mask_pool_size,
        m.roi_canonical_size,
        detections["valid"],
    )

    rows = []
    for what, unit in (
        ("infer", "inference per image (batch 1)"),
        ("step", "train step per image (batch 4)"),
    ):
        gather, window = times[0][what], times[roi_align.WINDOW][what]
        ratios = [w / g for w, g in zip(window, gather, strict=True)]
        rows.append(
            f"| {unit} | {statistics.median(gather):.3f} | {statistics.median(window):.3f} "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
        print(rows[-1], flush=True)
    for i, what in enumerate(("inference", "train step")):
        rows.append(
            f"| compile, {what} | {forms[0]['compile'][i]:.1f} "
            f"| {forms[roi_align.WINDOW]['compile'][i]:.1f} | |"
        )
    rows.append(
        "| proposals of this run that would fit the window (the box head keeps the gather form) "
        f"| | {fit:.0%} | |"
    )
    rows.append(
        f"| detections of this run that fit it (mask head, 14x14; {int(detections['valid'].sum())} found) "
        f"| | {fit_detections:.0%} | |"
    )
    return rows


def main(workdir: str | None = None):
    import importlib

    roi_align = importlib.import_module("maskrcnn.ops.roi_align")  # first: it selects Keras' JAX backend

    ops = op_rows(roi_align)
    program = program_rows(roi_align)
    header = (
        "| what | gather form (`model.roi_window=0`) | window form | window / gather |\n|---|---:|---:|---:|"
    )
    lines = [
        "# ROIAlign: the gather form against the window form, same run",
        "",
        harness.header(f"python experiments/bench_roi_window.py{' --workdir ' + workdir if workdir else ''}"),
        "",
        f"Window {roi_align.WINDOW} cells, spare slots for "
        f"{roi_align.SPARE_SLOTS:.1%} of a batch's boxes. How each figure is made: the script's docstring.",
        "",
        "The op alone: P2-P5 of four 256 px images, 1,024 boxes of 6-60 px, 256 channels; medians of "
        "3 jitted calls (ms).",
        "",
        "| output | gather form, forward | window form, forward | gather, fwd + bwd | window, fwd + bwd "
        "| speed-up fwd + bwd | largest relative difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *ops,
        "",
        f"The whole `fast` program (the model uses the window form for the mask head only), random weights "
        f"(seed 0), {ROUNDS} rounds each calling both forms in "
        "turn, the order alternating (s; ratio: the median over rounds, and its range).",
        "",
        header,
        *program,
        "",
    ]
    if workdir:
        lines += [
            f"The trained model of `{workdir}` on its own data and thresholds, the same way.",
            "",
            header,
            *program_rows(roi_align, workdir),
            "",
        ]
    harness.write(RESULTS, "\n".join(lines))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="also time a trained run (config.json, model.weights.h5)")
    main(parser.parse_args().workdir)
