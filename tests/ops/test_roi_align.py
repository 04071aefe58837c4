import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn.ops import assign_fpn_levels, multilevel_roi_align, roi_align

roi_align_module = importlib.import_module("maskrcnn.ops.roi_align")


def reference_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """A loop-by-loop port of the standard definition (torchvision's CPU roi_align, NHWC, yxyx boxes)."""
    batch, height, width, channels = features.shape
    oh, ow = output_size
    out = np.zeros((batch, boxes.shape[1], oh, ow, channels))

    def bilinear(fmap, y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return np.zeros(channels)
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_high = y_low = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_high = x_low = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        hy, hx = 1 - ly, 1 - lx
        return (
            hy * hx * fmap[y_low, x_low]
            + hy * lx * fmap[y_low, x_high]
            + ly * hx * fmap[y_high, x_low]
            + ly * lx * fmap[y_high, x_high]
        )

    offset = 0.5 if aligned else 0.0
    for b in range(batch):
        for r, (y1, x1, y2, x2) in enumerate(boxes[b]):
            start_y, start_x = y1 * spatial_scale - offset, x1 * spatial_scale - offset
            roi_h, roi_w = y2 * spatial_scale - offset - start_y, x2 * spatial_scale - offset - start_x
            if not aligned:
                roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
            bin_h, bin_w = roi_h / oh, roi_w / ow
            for ph in range(oh):
                for pw in range(ow):
                    acc = np.zeros(channels)
                    for iy in range(sampling_ratio):
                        y = start_y + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                        for ix in range(sampling_ratio):
                            x = start_x + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                            acc += bilinear(features[b], y, x)
                    out[b, r, ph, pw] = acc / sampling_ratio**2
    return out


def random_boxes(rng, shape, size):
    """Boxes of every kind: inside, crossing the border, far outside, tiny and zero-size."""
    yx = rng.uniform(-0.3 * size, 1.1 * size, (*shape, 2))
    hw = rng.choice([0.0, 0.3, 2.0, 9.0, 0.6 * size], (*shape, 2)) * rng.uniform(0.5, 1.0, (*shape, 2))
    return np.concatenate([yx, yx + hw], axis=-1).astype(np.float32)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize(
    "sampling_ratio, output_size, spatial_scale", [(2, (7, 7), 0.25), (1, (3, 5), 1.0), (3, (2, 2), 0.5)]
)
def test_matches_reference_definition(aligned, sampling_ratio, output_size, spatial_scale):
    rng = np.random.default_rng(sampling_ratio)
    features = rng.normal(size=(2, 11, 9, 3)).astype(np.float32)
    boxes = random_boxes(rng, (2, 12), size=10 / spatial_scale)
    got = roi_align(
        features,
        boxes,
        output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    expected = reference_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    assert got.shape == (2, 12, *output_size, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_linear_feature_map_gives_the_bin_centres():
    # On F(y, x) = 3y - 2x + 1 bilinear sampling is exact, so each bin averages to F at its centre.
    h, w = 20, 24
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    features = (3 * yy - 2 * xx + 1)[None, :, :, None]
    box = np.array([[[8.0, 12.0, 40.0, 28.0]]], np.float32)  # stride 2: cells (4, 6) to (20, 14)
    got = np.asarray(roi_align(features, box, (4, 2), spatial_scale=0.5))[0, 0, :, :, 0]
    cy = 4.0 - 0.5 + (np.arange(4) + 0.5) * 16 / 4  # aligned: shifted by half a cell
    cx = 6.0 - 0.5 + (np.arange(2) + 0.5) * 8 / 2
    np.testing.assert_allclose(got, 3 * cy[:, None] - 2 * cx[None, :] + 1, rtol=1e-5)


def test_gradient_is_the_adjoint_and_boxes_get_none():
    rng = np.random.default_rng(5)
    features = jnp.asarray(rng.normal(size=(1, 8, 8, 2)), jnp.float32)
    boxes = jnp.asarray(random_boxes(rng, (1, 6), 8.0))
    cotangent = jnp.asarray(rng.normal(size=(1, 6, 3, 3, 2)), jnp.float32)

    def f(feat, b):
        return roi_align(feat, b, 3, spatial_scale=1.0)

    out, vjp = jax.vjp(f, features, boxes)
    grad_features, grad_boxes = vjp(cotangent)
    # ROIAlign is linear in the features: <A f, g> == <f, A^T g>.
    np.testing.assert_allclose(jnp.vdot(out, cotangent), jnp.vdot(features, grad_features), rtol=1e-4)
    np.testing.assert_array_equal(grad_boxes, 0.0)


def test_assign_levels_by_the_fpn_rule():
    sides = np.array([10.0, 55.0, 56.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=-1)
    levels = assign_fpn_levels(boxes, num_levels=4, min_level=2)
    # floor(4 + log2(side / 224)) clamped to P2..P5, as indices from P2.
    expected = [np.clip(math.floor(4 + math.log2(s / 224)), 2, 5) - 2 for s in sides]
    np.testing.assert_array_equal(levels, expected)
    np.testing.assert_array_equal(assign_fpn_levels(boxes, num_levels=4, canonical_size=56)[:3], [0, 1, 2])


def test_multilevel_uses_each_boxes_level_and_keeps_order():
    rng = np.random.default_rng(6)
    strides = (4, 8, 16, 32)
    pyramid = [jnp.asarray(rng.normal(size=(2, 128 // s, 128 // s, 4)), jnp.float32) for s in strides]
    boxes = random_boxes(rng, (2, 20), 128.0)
    got = multilevel_roi_align(pyramid, boxes, 5, strides=strides, canonical_size=32)
    levels = np.asarray(assign_fpn_levels(boxes, num_levels=4, canonical_size=32))
    assert len(set(levels.ravel())) > 1
    for i, (stride, fmap) in enumerate(zip(strides, pyramid, strict=True)):
        single = roi_align(fmap, boxes, 5, spatial_scale=1 / stride)
        np.testing.assert_allclose(
            np.asarray(got)[levels == i], np.asarray(single)[levels == i], rtol=1e-5, atol=1e-6
        )


def test_window_weights_by_hand():
    # Two bins, one sample each, box [0, 16) not aligned: samples at 4 and 12, corners 4, 5 and 12, 13.
    pos = [
        jnp.asarray(a)
        for a in roi_align_module._axis_samples(
            jnp.array([0.0]), jnp.array([16.0]), 2, 1, jnp.array([40]), aligned=False
        )
    ]
    np.testing.assert_array_equal(pos[0], [[4, 12]])
    start, fits, weights = roi_align_module._window_weights(*pos, 2, 1, jnp.array([40]), 8)
    assert int(start[0]) == 4 and not bool(fits[0])  # corners 4..13 need 10 cells
    start, fits, weights = roi_align_module._window_weights(*pos, 2, 1, jnp.array([40]), 10)
    assert int(start[0]) == 4 and bool(fits[0])
    expected = np.zeros((2, 10))
    expected[0, 0], expected[1, 8] = 1.0, 1.0  # each sample sits on a cell: all weight on its low corner
    np.testing.assert_allclose(weights[0], expected)
    # Near the far border the window slides back inside the map: it starts at 40 - 10.
    start, _, _ = roi_align_module._window_weights(
        *roi_align_module._axis_samples(jnp.array([37.0]), jnp.array([39.0]), 2, 1, jnp.array([40]), False),
        2,
        1,
        jnp.array([40]),
        10,
    )
    assert int(start[0]) == 30


def _misfits(fmap, boxes, output_size, window):
    shapes = [tuple(fmap.shape[1:3])]
    flat = jnp.asarray(boxes).reshape(-1, 4)
    level = jnp.zeros(flat.shape[0], jnp.int32)
    *_, fits = roi_align_module._window_geometry(flat, level, shapes, [1.0], output_size, 2, True, window)
    return int((~fits).sum())


@pytest.mark.parametrize(
    "large", [2, 12], ids=["few-large-boxes-spare-slots", "many-large-boxes-gather-form"]
)
def test_window_form_is_the_definition_whether_boxes_fit_or_not(large):
    # On a 40x40 map a window of 8 cells holds boxes up to 6 cells; `large` of the 16 boxes are bigger.
    # With 2 (<= the 2 spare slots) the gather form redoes just those, with 12 it pools every box.
    rng = np.random.default_rng(large)
    features = rng.normal(size=(2, 40, 40, 3)).astype(np.float32)
    yx = rng.uniform(0, 20, (2, 8, 2))
    sides = np.where(
        np.arange(8)[None, :, None] < large // 2,
        rng.uniform(12, 20, (2, 8, 2)),
        rng.uniform(0.5, 5, (2, 8, 2)),
    )
    boxes = np.concatenate([yx, yx + sides], axis=-1).astype(np.float32)
    assert _misfits(features, boxes, (3, 3), 8) == large
    spare = math.ceil(16 * roi_align_module.SPARE_SLOTS)
    assert (large <= spare) == (large == 2)  # the two cases take the two branches
    got = roi_align(features, boxes, 3, spatial_scale=1.0, window=8)
    np.testing.assert_allclose(got, reference_roi_align(features, boxes, (3, 3), 1.0, 2, True), atol=1e-5)
    np.testing.assert_allclose(got, roi_align(features, boxes, 3, spatial_scale=1.0, window=None), atol=1e-6)


def test_window_form_gradient_equals_the_gather_forms():
    rng = np.random.default_rng(9)
    strides = (4, 8, 16, 32)
    pyramid = [jnp.asarray(rng.normal(size=(2, 128 // s, 128 // s, 4)), jnp.float32) for s in strides]
    boxes = random_boxes(rng, (2, 20), 128.0)
    cotangent = jnp.asarray(rng.normal(size=(2, 20, 5, 5, 4)), jnp.float32)

    def grads(window):
        def f(*p):
            return multilevel_roi_align(list(p), boxes, 5, strides=strides, canonical_size=32, window=window)

        return jax.vjp(f, *pyramid)[1](cotangent)

    for windowed, gathered in zip(grads(8), grads(None), strict=True):
        np.testing.assert_allclose(windowed, gathered, rtol=1e-5, atol=1e-5)


def test_window_form_under_vmap_and_jit():
    # Under vmap the form's lax.cond becomes a select: both forms run, the numbers stay the same.
    rng = np.random.default_rng(10)
    features = jnp.asarray(rng.normal(size=(3, 1, 24, 24, 2)), jnp.float32)
    boxes = jnp.asarray(random_boxes(rng, (3, 1, 6), 24.0))

    def f(x, b):
        return roi_align(x, b, 4, spatial_scale=1.0, window=6)

    np.testing.assert_allclose(
        jax.jit(jax.vmap(f))(features, boxes),
        jax.vmap(lambda x, b: roi_align(x, b, 4, spatial_scale=1.0, window=None))(features, boxes),
        atol=1e-6,
    )


def test_bfloat16_features_keep_their_dtype():
    features = jnp.ones((1, 8, 8, 2), jnp.bfloat16)
    out = roi_align(features, jnp.array([[[1.0, 1.0, 5.0, 5.0]]]), 2, spatial_scale=1.0)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(np.float32), 1.0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(jnp.ones((1, 4, 4, 1)), jnp.ones((1, 1, 4)), 2, spatial_scale=1.0, sampling_ratio=0)
    with pytest.raises(ValueError, match="window must be None or at least 2"):
        roi_align(jnp.ones((1, 4, 4, 1)), jnp.ones((1, 1, 4)), 2, spatial_scale=1.0, window=1)
    with pytest.raises(ValueError, match=r"boxes must be \(B, R, 4\)"):
        roi_align(jnp.ones((1, 4, 4, 1)), jnp.ones((1, 4)), 2, spatial_scale=1.0)
