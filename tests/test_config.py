"""The input scale (data.scale): the model's image side, the anchors and ROI level size that follow it,
and configs written before it existed."""

import dataclasses
import json

import pytest

from maskrcnn.config import Config, apply_overrides, config_from_dict, load_config, rescale


def test_scale_sets_the_model_side_and_the_anchors_and_roi_levels_follow():
    base = load_config("learning")
    assert base.data.scale == 1.0 and base.data.image_size == 256
    twice = apply_overrides(base, ["data.scale=2"])
    assert twice.data.image_size == 512
    assert (
        twice.model.anchor_scales == tuple(2 * s for s in base.model.anchor_scales) == (16, 32, 64, 128, 256)
    )
    assert twice.model.roi_canonical_size == 2 * base.model.roi_canonical_size
    assert rescale(base, 2.0) == twice
    back = apply_overrides(twice, ["data.scale=1.0"])
    assert back == base
    paper = load_config("paper")  # the seed paper's code: 4x, anchors 32-512 at 1024 px
    assert (paper.data.scale, paper.data.image_size, paper.model.anchor_scales[0]) == (4.0, 1024, 32)


@pytest.mark.parametrize("order", [1, -1])
def test_anchors_set_in_the_same_call_as_the_scale_are_taken_as_given(order):
    overrides = ["data.scale=2", "model.anchor_scales=(10, 20, 40, 80, 160)"][::order]
    config = apply_overrides(load_config("learning"), overrides)
    assert config.data.image_size == 512 and config.model.anchor_scales == (10, 20, 40, 80, 160)


def test_a_scale_that_gives_no_valid_image_side_is_refused_with_the_rule():
    with pytest.raises(ValueError, match=r"data.scale=0.6 gives 153.6 px model images.*multiple of 0.25"):
        apply_overrides(load_config("learning"), ["data.scale=0.6"])
    with pytest.raises(ValueError, match=r"data.image_size=512.*set data.scale \(data.scale=2 for 512 px"):
        apply_overrides(load_config("learning"), ["data.image_size=512"])


def test_a_config_json_written_before_the_scale_reads_its_image_size_as_the_scale():
    config = apply_overrides(load_config("tiny"), ["data.scale=2"])
    old = json.loads(config.to_json())
    del old["data"]["scale"]
    old["data"]["image_size"] = 512
    assert config_from_dict(old) == config
    assert isinstance(config_from_dict(json.loads(config.to_json())), Config)
    assert "image_size" not in config.to_dict()["data"]  # derived, not stored
    assert dataclasses.replace(config.data, scale=0.25).image_size == 64
