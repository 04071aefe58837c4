import numpy as np
import pytest

from maskrcnn.ops import box_area, generate_anchors


def test_anchor_count_order_and_geometry():
    anchors = generate_anchors((64, 48), strides=(4, 8), scales=(8, 16), ratios=(0.5, 1.0, 2.0))
    per_level = [16 * 12 * 3, 8 * 6 * 3]
    assert anchors.shape == (sum(per_level), 4) and anchors.dtype == np.float32
    # First cell of P2: centre (2, 2); ratio 0.5 is tall (w / h = 0.5), 2 is wide.
    h, w = 8 / np.sqrt(0.5), 8 * np.sqrt(0.5)
    np.testing.assert_allclose(anchors[0], [2 - h / 2, 2 - w / 2, 2 + h / 2, 2 + w / 2], rtol=1e-6)
    np.testing.assert_allclose(anchors[1], [-2, -2, 6, 6])
    # Next column comes after the three ratios; next row after 12 columns.
    np.testing.assert_allclose(anchors[3] - anchors[0], [0, 4, 0, 4], atol=1e-5)
    np.testing.assert_allclose(anchors[12 * 3] - anchors[0], [4, 0, 4, 0], atol=1e-5)
    # Every anchor of a level has area scale ** 2; P3 starts right after P2.
    np.testing.assert_allclose(box_area(anchors[: per_level[0]]), 64.0, rtol=1e-5)
    np.testing.assert_allclose(anchors[per_level[0] + 1], [-4, -4, 12, 12])


def test_sizes_not_divisible_by_the_stride_round_up():
    anchors = generate_anchors((10, 10), strides=(4,), scales=(4,), ratios=(1.0,))
    assert anchors.shape == (9, 4)  # ceil(10 / 4) = 3 cells a side
    np.testing.assert_allclose(anchors[-1], [8, 8, 12, 12])


def test_mismatched_scales_are_rejected():
    with pytest.raises(ValueError, match="one anchor scale per stride"):
        generate_anchors((64, 64), strides=(4, 8), scales=(8,), ratios=(1.0,))


def test_octaves_multiply_each_level_scale_and_come_before_ratios():
    from maskrcnn.ops import anchors_per_level

    anchors = generate_anchors(
        (32, 32), strides=(8, 16), scales=(8, 16), ratios=(1.0, 2.0), octaves=(1.0, 2.0)
    )
    assert anchors_per_level((32, 32), (8, 16), 4) == [16 * 4, 4 * 4]
    assert anchors.shape == (16 * 4 + 4 * 4, 4)
    # The first cell of the first level: (octave 1, ratio 1), (1, 2), (2, 1), (2, 2), all centred on (4, 4).
    np.testing.assert_allclose(box_area(anchors[:4]), [64, 64, 256, 256], rtol=1e-6)
    np.testing.assert_allclose(anchors[0], [0, 0, 8, 8])
    np.testing.assert_allclose(anchors[2], [-4, -4, 12, 12])
    np.testing.assert_allclose((anchors[:4, :2] + anchors[:4, 2:]) / 2, 4.0)
    np.testing.assert_allclose(anchors[4] - anchors[0], [0, 8, 0, 8])  # the next column
    np.testing.assert_allclose(box_area(anchors[64:68]), [256, 256, 1024, 1024], rtol=1e-6)
