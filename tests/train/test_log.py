"""The training log takes whatever loss parts a model returns: columns, validation means, their sum."""

import csv

import pytest

from maskrcnn.config import StageConfig
from maskrcnn.train.log import CsvLog
from maskrcnn.train.loop import validation_loss
from tests.model.helpers import tiny_training_config


def test_the_csv_log_has_a_column_for_every_loss_part_and_a_resumed_log_keeps_them(tmp_path):
    path = str(tmp_path / "log.csv")
    parts = {"rpn_class": 0.5, "rpn_box": 0.25, "class": 1.0, "box": 0.125, "mask": 0.75, "mask_dice": 0.3}
    first = {"stage": 0, "epoch": 0, "step": 10, "split": "train", "loss": 2.925, **parts, "lr": 0.01}
    log = CsvLog(path)
    log.write({**first, "grad_norm": 1.5, "skipped": 0, "seconds": 2.0})
    log.write({"stage": 0, "epoch": 0, "step": 20, "split": "validation", "loss": 2.0, **parts})
    log.close()
    again = CsvLog(path)  # a resumed run appends under the same header
    again.write({**first, "step": 30, "grad_norm": 1.0, "skipped": 0, "seconds": 1.0})
    again.close()
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "stage", "epoch", "step", "split", "loss",
        "rpn_class", "rpn_box", "class", "box", "mask", "mask_dice",
        "lr", "grad_norm", "skipped", "seconds",
    ]  # fmt: skip
    assert [r["step"] for r in rows] == ["10", "20", "30"]
    assert [float(r["mask_dice"]) for r in rows] == [0.3, 0.3, 0.3]
    assert rows[1]["lr"] == "" and rows[1]["split"] == "validation"


def test_validation_means_every_part_and_sums_them():
    config = tiny_training_config([StageConfig("all", "all", 1, 1e-2)])
    seen = []

    def loss_fn(state, batch):
        seen.append(len(batch["image"]))
        return {"mask": 1.0, "mask_dice": float(len(seen))}  # 1, 2, 3 ... over the batches

    means = validation_loss(loss_fn, None, config)
    n = len(seen)
    assert n >= 1
    assert means["mask"] == 1.0 and means["mask_dice"] == pytest.approx((n + 1) / 2)
    assert means["loss"] == pytest.approx(1.0 + (n + 1) / 2)
