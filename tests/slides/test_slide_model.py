"""The real path once: a saved `tiny` run (random weights) segments an Aperio slide through the CLI."""

import json
import os

import pytest

from maskrcnn.cli import main
from maskrcnn.slides import output_paths
from tests.slides.helpers import aperio_description, write_pyramid
from tests.slides.test_slide_pipeline import make_slide


@pytest.mark.slow
def test_a_trained_run_segments_a_slide_through_predict(tmp_path):
    from maskrcnn.config import load_config
    from maskrcnn.model import build_model

    config = load_config("tiny")
    model = build_model(config.model, config.data.image_size, mini_masks=True)
    workdir = tmp_path / "run"
    workdir.mkdir()
    model.save_weights(str(workdir / "model.weights.h5"))
    (workdir / "config.json").write_text(config.to_json())
    image, *_ = make_slide(5, (600, 700), ((50, 60, 450, 560),), count=60)
    write_pyramid(
        str(tmp_path / "s.svs"), image, None, levels=2, description=aperio_description(700, 600, 0.25)
    )
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "s.svs"), "--workdir", str(workdir), "--out", str(out)]) == 0
    paths = output_paths(str(out), "s")
    with open(paths["summary"]) as f:
        summary = json.load(f)
    assert summary["tiles_read"] == 12 and summary["model_mpp"] == 0.25
    with open(paths["geojson"]) as f:
        assert len(json.load(f)["features"]) == summary["nuclei"]
    assert all(os.path.exists(paths[k]) for k in ("csv", "thumbnail"))
