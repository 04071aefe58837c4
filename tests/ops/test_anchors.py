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
