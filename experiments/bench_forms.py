"""What each exact rewrite of issue 18 gained: the old and new form of one computation, timed in one run.

    python experiments/bench_forms.py               # writes experiments/results/forms.md
    python experiments/bench_forms.py --step-table  # the whole `fast` step, per-tap gradient or not

Each row times the same numbers computed two ways, forward and forward + backward (the gradient of a sum
of squares with respect to every input), jitted, median of the repeats after the compile, at the shapes
of the `fast` preset's train step (batch 4: 1,024 sampled ROIs, 256 channels, mask head 128 wide):

- the box head's first layer: a 7x7 "valid" convolution over the 7x7 pooled ROI (the old form) and one
  matrix product with the same kernel (``maskrcnn.model.heads.window_dense``);
- the mask head's 2x2 stride-2 transposed convolution and its product + depth-to-space form
  (``maskrcnn.model.heads.upsample_2x``);
- ROIAlign on the P2-P5 pyramid: the old form (each bilinear corner's samples gathered on their own,
  added, then averaged over the sampling grid; kept below as ``corner_align`` for this comparison) and
  the gather form of ``maskrcnn.ops.roi_align`` (the 4 g^2 cells of each bin gathered at once and
  contracted; the window form the model now uses on top of it: ``experiments/bench_roi_window.py``);
- tried and not adopted: three 3x3 convolutions (the mask head's over 1,024 ROIs, a ResNet stage-2 one
  and the RPN's shared conv on P2) and a 1x1 one, XLA's convolution gradient against ``tap_conv`` below,
  whose kernel gradient is one matrix product per kernel tap (the forward passes are the same convolution).

Beside each row: the largest difference between the two forms' outputs and gradients, each relative to
its largest value.

``--targets`` times forms without a gradient, the ATSS anchor assignment at `fast`'s anchors for a batch:
ranking every anchor of each level against each box (``atss_every_anchor`` below: a top-k over
all the level's anchors, then a scatter into an anchors x boxes table; the form before issue 30) and the
window of locations around each box (``maskrcnn.targets``), with the share of anchors they label alike.
"""

from __future__ import annotations

import json
import os
import sys

import harness

RESULTS = os.path.join(harness.RESULTS, "forms.md")
STEP_RESULTS = os.path.join(harness.RESULTS, "forms_step.md")
TARGETS_RESULTS = os.path.join(harness.RESULTS, "forms_targets.md")


def corner_align(table, boxes, level, shapes, scales, output_size, sampling_ratio, aligned):
    """ROIAlign of one image as ``maskrcnn.ops.roi_align`` computed it before issue 18 (same arguments)."""
    import jax.numpy as jnp
    import numpy as np

    from maskrcnn.ops.roi_align import _axis_samples

    oh, ow = output_size
    heights = jnp.asarray([h for h, _ in shapes], jnp.int32)[level]
    widths = jnp.asarray([w for _, w in shapes], jnp.int32)[level]
    offsets = jnp.asarray(np.cumsum([0] + [h * w for h, w in shapes])[:-1], jnp.int32)[level]
    b = boxes.astype(jnp.float32) * jnp.asarray(scales, jnp.float32)[level][:, None]
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(b[:, 0], b[:, 2], oh, sampling_ratio, heights, aligned)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(b[:, 1], b[:, 3], ow, sampling_ratio, widths, aligned)

    def corner(rows, cols, w_rows, w_cols):
        index = offsets[:, None, None] + rows[:, :, None] * widths[:, None, None] + cols[:, None, :]
        return table[index].astype(jnp.float32) * (w_rows[:, :, None] * w_cols[:, None, :])[..., None]

    samples = (
        corner(y_lo, x_lo, wy_lo, wx_lo)
        + corner(y_lo, x_hi, wy_lo, wx_hi)
        + corner(y_hi, x_lo, wy_hi, wx_lo)
        + corner(y_hi, x_hi, wy_hi, wx_hi)
    )
    r, c, g = samples.shape[0], samples.shape[-1], sampling_ratio
    return samples.reshape(r, oh, g, ow, g, c).mean(axis=(2, 4)).astype(table.dtype)


def atss_every_anchor(anchors, gt_boxes, gt_valid, *, topk, level_sizes, anchors_per_location, mode):
    """ATSS positives and matches of one image as ``maskrcnn.targets.assign_anchors`` found them before
    issue 30: each level's candidates by a top-k over all its anchors, marked by a scatter."""
    import jax
    import jax.numpy as jnp

    from maskrcnn.ops import pairwise_iou

    iou = jnp.where(gt_valid[None, :], pairwise_iou(anchors, gt_boxes), -1.0)
    a_centre, g_centre = (anchors[:, :2] + anchors[:, 2:]) / 2, (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    group = anchors_per_location if mode == "locations" else 1
    columns, candidate, first = jnp.arange(gt_boxes.shape[0])[:, None], jnp.zeros(iou.shape, bool), 0
    for size in level_sizes:
        centres = a_centre[first : first + size : group]
        dist = jnp.sum((g_centre[:, None, :] - centres[None, :, :]) ** 2, axis=-1)
        _, nearest = jax.lax.top_k(-dist, min(topk, centres.shape[0]))
        members = (nearest[:, :, None] * group + jnp.arange(group)).reshape(nearest.shape[0], -1)
        candidate = candidate.at[first + members, columns].set(True)
        first += size
    count = candidate.sum(axis=0)
    mean = jnp.sum(jnp.where(candidate, iou, 0.0), axis=0) / count
    var = jnp.sum(jnp.where(candidate, (iou - mean) ** 2, 0.0), axis=0) / jnp.maximum(count - 1, 1)
    inside = (
        (a_centre[:, None, 0] > gt_boxes[None, :, 0])
        & (a_centre[:, None, 1] > gt_boxes[None, :, 1])
        & (a_centre[:, None, 0] < gt_boxes[None, :, 2])
        & (a_centre[:, None, 1] < gt_boxes[None, :, 3])
    )
    pairs = candidate & inside & gt_valid[None, :] & (iou >= mean + jnp.sqrt(var)) & (iou > 0)
    positive = jnp.any(pairs, axis=1)
    return positive, jnp.where(positive, jnp.where(pairs, iou, -1.0).argmax(axis=1), -1)


def targets_table(batch: int = 16, repeats: int = 5) -> None:
    """The ATSS assignment of a batch of `fast`'s ground truth, both forms, jitted and vmapped."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from maskrcnn import targets
    from maskrcnn.config import load_config
    from maskrcnn.model.maskrcnn import anchor_assignment, config_anchors

    config = load_config("fast")
    size = (config.data.image_size,) * 2
    anchors = jnp.asarray(config_anchors(config.model, size))
    kw = anchor_assignment(config.model, size)
    slots = config.data.max_instances
    rng = np.random.default_rng(0)
    centre = rng.uniform(0, size[0], (batch, slots, 2))
    half = rng.uniform(3, 20, (batch, slots, 2))  # nuclei of 6-40 px
    gt = jnp.asarray(np.clip(np.concatenate([centre - half, centre + half], -1), 0, size[0]), jnp.float32)
    valid = jnp.asarray(rng.uniform(size=(batch, slots)) < 0.6)  # some slots padding
    lines = [
        "# ATSS anchor assignment: every anchor ranked against the window of locations, same run",
        "",
        harness.header("python experiments/bench_forms.py --targets"),
        "",
        f"`fast`'s anchors ({anchors.shape[0]:,} at {size[0]} px: {kw['anchors_per_location']} a location), "
        f"{batch} images of {slots} ground-truth slots (60% used, boxes of 6-40 px), vmapped and jitted; "
        f"median of {repeats} calls after the compile, the two forms in turn.",
        "",
        "| candidates | every anchor ranked (ms) | window (ms) | speed-up | anchors labelled alike |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in ("anchors", "locations"):
        old = jax.jit(
            jax.vmap(
                functools.partial(
                    atss_every_anchor,
                    anchors,
                    topk=kw["topk"],
                    level_sizes=kw["level_sizes"],
                    anchors_per_location=kw["anchors_per_location"],
                    mode=mode,
                )
            )
        )
        new = jax.jit(
            jax.vmap(
                lambda g, v, mode=mode: targets.assign_anchors(
                    anchors, g, v, **{**kw, "atss_candidates": mode}
                )
            )
        )
        (old_pos, old_match), (new_pos, _, new_match) = old(gt, valid), new(gt, valid)
        agree = np.mean(
            (np.asarray(old_pos) == np.asarray(new_pos))
            & (~np.asarray(old_pos) | (np.asarray(old_match) == np.asarray(new_match)))
        )
        for fn in (old, new):
            jax.block_until_ready(fn(gt, valid))
        times = harness.rounds(
            {
                "old": lambda old=old: harness.timed(old, gt, valid)[1],
                "new": lambda new=new: harness.timed(new, gt, valid)[1],
            },
            repeats,
        )
        t_old, t_new = harness.median(times["old"]), harness.median(times["new"])
        lines.append(
            f"| by {mode[:-1]} | {1000 * t_old:.1f} | {1000 * t_new:.1f} | {t_old / t_new:.1f}x "
            f"| {agree:.4%} |"
        )
        print(lines[-1], flush=True)
    harness.write(TARGETS_RESULTS, "\n".join(lines))


def tap_conv(x, kernel, strides=(1, 1), padding="same"):
    """``keras.ops.conv(x, kernel, strides, padding)`` (NHWC, HWIO) whose kernel gradient is ``kh * kw``
    matrix products, tap (a, b) being the padded input's strided window at offset (a, b) contracted with
    the output gradient over batch and space; its forward pass and input gradient are XLA's."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    kh, kw = kernel.shape[:2]
    pads = tuple(map(tuple, lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding.upper())))

    def conv(x, kernel):
        return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    @jax.custom_vjp
    def run(x, kernel):
        return conv(x, kernel)

    def backward(residuals, grad):
        x, kernel = residuals
        padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        (sh, sw), (h, w) = strides, grad.shape[1:3]
        taps = [
            jnp.einsum(
                "nhwc,nhwo->co",
                padded[:, a : a + sh * (h - 1) + 1 : sh, b : b + sw * (w - 1) + 1 : sw],
                grad,
                preferred_element_type=jnp.float32,
            )
            for a in range(kh)
            for b in range(kw)
        ]
        _, input_vjp = jax.vjp(lambda x_: conv(x_, kernel), x)
        return input_vjp(grad)[0], jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)

    run.defvjp(lambda x, kernel: (conv(x, kernel), (x, kernel)), backward)
    return run(x, kernel)


def whole_step(tap: bool) -> dict:
    """Compile, train-step and inference times of `fast` (``programs.whole_program``), every
    ``keras.layers.Conv2D`` of the model taking ``tap_conv``'s kernel gradient if ``tap``."""
    import importlib

    importlib.import_module("maskrcnn")  # first: it selects Keras' JAX backend
    import keras
    from programs import whole_program

    from maskrcnn.config import load_config

    if tap:
        plain = keras.layers.Conv2D.convolution_op

        def convolution_op(self, inputs, kernel):
            if self.groups != 1 or tuple(self.dilation_rate) != (1, 1) or self.data_format != "channels_last":
                return plain(self, inputs, kernel)
            return tap_conv(inputs, keras.ops.convert_to_tensor(kernel), self.strides, self.padding)

        keras.layers.Conv2D.convolution_op = convolution_op
    figures = whole_program(load_config("fast"), repeats=3)
    return {k: figures[k] for k in ("compile_train_s", "train_step_per_image_s", "infer_per_image_s")}


def step_table(rounds: int = 2) -> None:
    """``whole_step`` with and without the per-tap gradient, alternating, each in its own process."""
    lines = [
        "# The per-tap kernel gradient in every convolution of the whole `fast` train step",
        "",
        harness.header("python experiments/bench_forms.py --step-table"),
        "",
        f"Each row a process of its own, the two forms alternating over {rounds} rounds.",
        "",
        "| convolution gradient | compile train step (s) | train step (s / image) | inference (s / image) |",
        "|---|---:|---:|---:|",
    ]
    for _ in range(rounds):
        for form in ("xla", "tap"):
            f = harness.in_child([__file__, "--step", form])
            lines.append(
                f"| {form} | {f['compile_train_s']:.1f} | {f['train_step_per_image_s']:.2f} "
                f"| {f['infer_per_image_s']:.2f} |"
            )
            print(lines[-1], flush=True)
    harness.write(STEP_RESULTS, "\n".join(lines))


def main():
    import importlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    roi_align = importlib.import_module("maskrcnn.ops.roi_align")  # first: it selects Keras' JAX backend
    from keras import ops

    keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))
    rois, channels, width = 1024, 256, 128

    # The library's forms read the kernel from a Keras layer; here it is an argument, so that both forms
    # differentiate with respect to it (tests/model/test_heads.py checks the library's against the layers).
    pooled = jax.random.normal(next(keys), (rois, 7, 7, channels))
    kernel = 0.01 * jax.random.normal(next(keys), (7, 7, channels, 1024))

    def fc_as_conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def fc_as_product(x, k):  # window_dense
        return jnp.matmul(x.reshape(x.shape[0], -1), k.reshape(-1, k.shape[-1])).reshape(
            -1, 1, 1, k.shape[-1]
        )

    features = jax.random.normal(next(keys), (rois, 14, 14, width))
    dkernel = 0.05 * jax.random.normal(next(keys), (2, 2, width, width))  # Keras': (kh, kw, out, in)

    def deconv_as_layer(x, k):
        return ops.conv_transpose(x, k, strides=2)

    def deconv_as_product(x, k):  # upsample_2x
        y = jnp.einsum("nhwc,aboc->nhawbo", x, k)
        return y.reshape(x.shape[0], 2 * x.shape[1], 2 * x.shape[2], k.shape[2])

    pyramid = [jax.random.normal(next(keys), (4, 256 // s, 256 // s, channels)) for s in (4, 8, 16, 32)]
    rng = np.random.default_rng(0)
    centres, sides = rng.uniform(0, 256, (4, rois // 4, 2)), rng.uniform(6, 60, (4, rois // 4, 2))
    boxes = jnp.asarray(
        np.concatenate([centres - sides / 2, centres + sides / 2], -1).clip(0, 256), jnp.float32
    )
    new_align = roi_align._align_flat

    def align_with(flat, size):
        def run(*levels):
            roi_align._align_flat = flat
            try:
                return roi_align.multilevel_roi_align(
                    list(levels), boxes, size, strides=(4, 8, 16, 32), window=None
                )
            finally:
                roi_align._align_flat = new_align

        return run

    def conv_rows():
        shapes = [  # name, input, kernel
            ("mask head 3x3 conv", (rois, 14, 14, width), (3, 3, width, width)),
            ("ResNet stage-2 3x3 conv", (4, 64, 64, 64), (3, 3, 64, 64)),
            ("ResNet stage-2 1x1 conv", (4, 64, 64, 256), (1, 1, 256, 64)),
            ("RPN shared 3x3 conv on P2", (4, 64, 64, channels), (3, 3, channels, 512)),
        ]
        for name, x_shape, k_shape in shapes:
            x, k = jax.random.normal(next(keys), x_shape), 0.05 * jax.random.normal(next(keys), k_shape)
            size = "x".join(map(str, x_shape)) + f" -> {k_shape[-1]}"
            yield (
                f"not adopted: {name} ({size}), XLA gradient / per-tap kernel gradient",
                lambda x, k: ops.conv(x, k, 1, "same"),
                lambda x, k: tap_conv(x, k, 1, "same"),
                (x, k),
            )

    rows = [
        ("box head FC (7x7 conv over 7x7 -> 1024)", fc_as_conv, fc_as_product, (pooled, kernel)),
        ("mask head 2x2 stride-2 deconvolution", deconv_as_layer, deconv_as_product, (features, dkernel)),
        ("ROIAlign 7x7 (box head)", align_with(corner_align, 7), align_with(new_align, 7), pyramid),
        ("ROIAlign 14x14 (mask head)", align_with(corner_align, 14), align_with(new_align, 14), pyramid),
        *conv_rows(),
    ]
    lines = [
        "# Exact rewrites of issue 18: old and new form of one computation, same run",
        "",
        harness.header("python experiments/bench_forms.py"),
        "",
        f"Shapes of `fast`'s train step at batch 4 ({rois} ROIs, {channels} channels). Medians of "
        f"{harness.FORM_REPEATS} jitted calls after the compile; forward + backward: the gradient of a sum "
        "of squares. The per-tap gradient in the whole step: `forms_step.md` (`--step-table`).",
        "",
        "| computation | old forward (ms) | new forward (ms) | old fwd + bwd (ms) | new fwd + bwd (ms) "
        "| speed-up fwd + bwd | largest relative difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, old, new, args in rows:
        old_fwd, old_both, old_out = harness.form_timings(old, *args)
        new_fwd, new_both, new_out = harness.form_timings(new, *args)
        diff = harness.relative_difference(old_out, new_out)
        lines.append(
            f"| {name} | {old_fwd:.0f} | {new_fwd:.0f} | {old_both:.0f} | {new_both:.0f} "
            f"| {old_both / new_both:.1f}x | {diff:.1e} |"
        )
        print(lines[-1], flush=True)
    harness.write(RESULTS, "\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--step"]:  # one process of step_table
        print(json.dumps(whole_step(sys.argv[2] == "tap")))
    elif sys.argv[1:] == ["--step-table"]:
        step_table()
    elif sys.argv[1:] == ["--targets"]:
        targets_table()
    else:
        main()
