"""What each exact rewrite of issue 18 gained: the old and new form of one computation, timed in one run.

    python experiments/bench_forms.py      # writes experiments/results/forms.md

Each row times the same numbers computed two ways, forward and forward + backward (the gradient of a sum
of squares with respect to every input), jitted, median of the repeats after the compile, at the shapes
of the `fast` preset's train step (batch 4: 1,024 sampled ROIs, 256 channels, mask head 128 wide):

- the box head's first layer: a 7x7 "valid" convolution over the 7x7 pooled ROI (the old form) and one
  matrix product with the same kernel (``maskrcnn.model.heads.window_dense``);
- the mask head's 2x2 stride-2 transposed convolution and its product + depth-to-space form
  (``maskrcnn.model.heads.upsample_2x``);
- ROIAlign on the P2-P5 pyramid: the old form (each bilinear corner's samples gathered on their own,
  added, then averaged over the sampling grid; kept below as ``corner_align`` for this comparison) and
  ``maskrcnn.ops.roi_align`` (the 4 g^2 cells of each bin gathered at once and contracted).

The largest difference between the two forms' outputs is printed beside each row.
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


def timings(fn, *args):
    """(forward ms, forward + backward ms, output) of ``fn`` jitted."""
    import jax
    import jax.numpy as jnp

    from experiments.bench_ops import median_seconds

    forward = jax.jit(fn)
    both = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.square(fn(*a))), argnums=tuple(range(len(args)))))
    return (
        1000 * median_seconds(forward, *args, repeats=REPEATS),
        1000 * median_seconds(both, *args, repeats=REPEATS),
        forward(*args),
    )


def main():
    import importlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    roi_align = importlib.import_module("maskrcnn.ops.roi_align")  # first: it selects Keras' JAX backend
    from keras import ops

    keys = iter(jax.random.split(jax.random.PRNGKey(0), 8))
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
                return roi_align.multilevel_roi_align(list(levels), boxes, size, strides=(4, 8, 16, 32))
            finally:
                roi_align._align_flat = new_align

        return run

    rows = [
        ("box head FC (7x7 conv over 7x7 -> 1024)", fc_as_conv, fc_as_product, (pooled, kernel)),
        ("mask head 2x2 stride-2 deconvolution", deconv_as_layer, deconv_as_product, (features, dkernel)),
        ("ROIAlign 7x7 (box head)", align_with(corner_align, 7), align_with(new_align, 7), pyramid),
        ("ROIAlign 14x14 (mask head)", align_with(corner_align, 14), align_with(new_align, 14), pyramid),
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
        "| speed-up fwd + bwd | largest difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, old, new, args in rows:
        old_fwd, old_both, old_out = timings(old, *args)
        new_fwd, new_both, new_out = timings(new, *args)
        diff = float(jnp.max(jnp.abs(old_out - new_out)))
        lines.append(
            f"| {name} | {old_fwd:.0f} | {new_fwd:.0f} | {old_both:.0f} | {new_both:.0f} "
            f"| {old_both / new_both:.1f}x | {diff:.1e} |"
        )
        print(lines[-1], flush=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
