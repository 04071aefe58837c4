"""experiments/time_trained.py: trained runs' train steps, each from its own weights, timed in turn."""

import dataclasses
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))


@pytest.mark.slow
def test_trained_runs_are_timed_in_turn_against_the_first(tmp_path):
    from time_trained import main

    from maskrcnn.config import load_config
    from maskrcnn.model import build_model
    from maskrcnn.train.workdir import CONFIG_FILE, WEIGHTS_FILE

    config = load_config("tiny")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, builder="synthetic"))
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        run.mkdir()
        model = build_model(config.model, config.data.image_size, mini_masks=True)
        model.save_weights(str(run / WEIGHTS_FILE))
        (run / CONFIG_FILE).write_text(config.to_json())
        runs.append(str(run))
    out = tmp_path / "steps.md"
    assert main([*runs, "--rounds", "2", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == runs
    assert rows[0].endswith("| 1.00x | 1.00-1.00 |")  # the first run is the reference of every round
    for row in rows:
        seconds = float(row.split("|")[2])
        assert seconds > 0
