"""The input scale (data.scale): the model's image side, the anchors and ROI level size that follow it,
and configs written before it existed; overrides of a training stage."""

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


def test_a_training_stage_is_overridden_by_its_index_or_all_of_them_by_a_star():
    paper = load_config("paper")  # stages heads (20 epochs from 1e-3) and all (30 from 1e-4)
    one = apply_overrides(paper, ["train.stages[1].learning_rate=2e-4", "train.stages[0].epochs=5"])
    assert [(s.name, s.epochs, s.learning_rate) for s in one.train.stages] == [
        ("heads", 5, 1e-3),
        ("all", 30, 2e-4),
    ]
    every = apply_overrides(paper, ["train.stages[*].learning_rate=1"])  # an int, stored as a float
    assert [s.learning_rate for s in every.train.stages] == [1.0, 1.0]
    assert all(isinstance(s.learning_rate, float) for s in every.train.stages)
    assert dataclasses.replace(one.train, stages=paper.train.stages) == paper.train  # nothing else moved
    with pytest.raises(ValueError, match=r"train.stages\[2\].*index below 2 \(stages \['heads', 'all'\]\)"):
        apply_overrides(paper, ["train.stages[2].epochs=1"])
    with pytest.raises(ValueError, match=r"a stage has no field 'lr'; fields: \['epochs', 'layers'"):
        apply_overrides(paper, ["train.stages[0].lr=1e-2"])
    with pytest.raises(ValueError, match=r"train.stages\[0\].learning_rate"):  # the range check still runs
        apply_overrides(paper, ["train.stages[0].learning_rate=-1"])
