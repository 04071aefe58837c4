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
"""

from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(__file__), "results", "forms.md")
REPEATS = 3


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
    """``bench_xla_flags.fast_figures`` (compile, train-step and inference times of `fast`), every
    ``keras.layers.Conv2D`` of the model taking ``tap_conv``'s kernel gradient if ``tap``."""
    import importlib

    importlib.import_module("maskrcnn")  # first: it selects Keras' JAX backend
    import keras

    from experiments.bench_xla_flags import fast_figures

    if tap:
        plain = keras.layers.Conv2D.convolution_op

        def convolution_op(self, inputs, kernel):
            if self.groups != 1 or tuple(self.dilation_rate) != (1, 1) or self.data_format != "channels_last":
                return plain(self, inputs, kernel)
            return tap_conv(inputs, keras.ops.convert_to_tensor(kernel), self.strides, self.padding)

        keras.layers.Conv2D.convolution_op = convolution_op
    return fast_figures()


def step_table(rounds: int = 2) -> None:
    """``whole_step`` with and without the per-tap gradient, alternating, each in its own process."""
    from experiments.bench_model import in_child

    print(
        "| convolution gradient | compile train step (s) | train step (s / image) | inference (s / image) |"
    )
    print("|---|---:|---:|---:|")
    for _ in range(rounds):
        for form in ("xla", "tap"):
            f = in_child([__file__, "--step", form])
            print(
                f"| {form} | {f['compile_train_s']:.1f} | {f['train_step_per_image_s']:.2f} "
                f"| {f['infer_per_image_s']:.2f} |",
                flush=True,
            )


def timings(fn, *args):
    """(forward ms, forward + backward ms, [output, *gradients]) of ``fn`` jitted."""
    import jax
    import jax.numpy as jnp

    from experiments.bench_ops import median_seconds

    forward = jax.jit(fn)
    both = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.square(fn(*a))), argnums=tuple(range(len(args)))))
    return (
        1000 * median_seconds(forward, *args, repeats=REPEATS),
        1000 * median_seconds(both, *args, repeats=REPEATS),
        [forward(*args), *both(*args)],
    )


def relative_difference(old, new) -> float:
    """The largest |old - new| over the output and each gradient, each relative to its largest |old|."""
    import jax.numpy as jnp

    return max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in zip(old, new, strict=True))


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
        f"Made by `python experiments/bench_forms.py`, {time.strftime('%Y-%m-%d')}. "
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"device {jax.devices()[0].platform}, jax {jax.__version__}. "
        f"Shapes of `fast`'s train step at batch 4 ({rois} ROIs, {channels} channels). Medians of "
        f"{REPEATS} jitted calls after the compile; forward + backward: the gradient of a sum of squares.",
        "",
        "| computation | old forward (ms) | new forward (ms) | old fwd + bwd (ms) | new fwd + bwd (ms) "
        "| speed-up fwd + bwd | largest relative difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, old, new, args in rows:
        old_fwd, old_both, old_out = timings(old, *args)
        new_fwd, new_both, new_out = timings(new, *args)
        diff = relative_difference(old_out, new_out)
        lines.append(
            f"| {name} | {old_fwd:.0f} | {new_fwd:.0f} | {old_both:.0f} | {new_both:.0f} "
            f"| {old_both / new_both:.1f}x | {diff:.1e} |"
        )
        print(lines[-1], flush=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n" + NOTES)


NOTES = """
The per-tap kernel gradient of the convolution rows was put into every convolution of the model and the
whole `fast` train step timed against XLA's gradient (`python experiments/bench_forms.py --step-table`,
2026-12-03, two processes each, alternating, the machine otherwise idle): 4.93 and 4.48 s per image
with it, 3.54 and 3.82 s without; compile 55.5 and 49.0 s against 44.9 and 43.8 s; inference, the same
forward convolution, 1.90 and 1.27 s against 1.63 and 2.01 s. The gain of the wide rows above is lost
in the step (the 3x3 convolutions of the ResNet stages, at 64 channels, run slower this way): the step
is 1.3x slower with it, so the model keeps Keras' own convolution.
"""


if __name__ == "__main__":
    if sys.argv[1:2] == ["--step"]:  # one process of step_table
        import json

        print(json.dumps(whole_step(sys.argv[2] == "tap")))
    elif sys.argv[1:] == ["--step-table"]:
        step_table()
    else:
        main()
