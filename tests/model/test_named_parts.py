"""The researcher's contract: parts and the model class named in a config are rebuilt by every command,
and Keras' own losses (regularisers, add_loss) are trained and logged."""

import csv
import json
import os
import textwrap

import jax
import keras
import numpy as np
import pytest

from maskrcnn import cli
from maskrcnn.config import StageConfig, apply_overrides
from maskrcnn.model import build_model
from maskrcnn.train.step import REGULARIZATION, prepare_stage
from tests.model import parts
from tests.model.helpers import batch_from_labels, make_instances, tiny_training_config


def test_a_kernel_regulariser_on_a_head_is_trained_and_reported():
    config = tiny_training_config([StageConfig("all", "all", 1, 1e-2)])
    rng = np.random.default_rng(0)
    batch = batch_from_labels([make_instances(rng, 64, 3, (3, 6)) for _ in range(2)], 16, 14)
    keras.utils.set_random_seed(0)
    model = build_model(apply_overrides(config, ["model.box_head='tests.model.parts:l2_box_head'"]).model, 64)
    kernels = (model.box_head.conv1.kernel, model.box_head.conv2.kernel)
    initial = [np.asarray(k.value, np.float64) for k in kernels]
    stage = prepare_stage(model, config.train, StageConfig("all", "all", 10, 0.05), 1)
    state, metrics = stage.step(stage.state, batch, jax.random.PRNGKey(0))
    # Reported: Keras' L2, strength * sum(w ** 2) over both regularised kernels at the weights used, and a
    # term of the total like the five losses (a model without one reports none: tests/train/test_step.py).
    expected = parts.STRONG_L2 * sum(float(np.sum(k**2)) for k in initial)
    assert float(metrics[REGULARIZATION]) == pytest.approx(expected, rel=1e-4)
    total = sum(float(v) for k, v in metrics.items() if k not in ("loss", "lr", "grad_norm", "finite"))
    assert float(metrics["loss"]) == pytest.approx(total, rel=1e-5)
    # Trained: the first update (momentum starts at zero) is -lr times the clipped gradient, whose kernel part
    # the regulariser's 2 * 100 * w dominates, so it points from each kernel towards zero. The data's gradient
    # alone points nowhere in particular: at this seed the cosines are 0.93 and 1.00 with the regulariser,
    # 0.01 and 0.03 with the plain box head.
    trained = [v for v, m in zip(model.trainable_variables, stage.mask, strict=True) if m]
    by_path = {v.path: np.asarray(value, np.float64) for v, value in zip(trained, state.trained, strict=True)}
    for k, w in zip(kernels, initial, strict=True):
        update = (by_path[k.path] - w).ravel()
        cosine = float(update @ -w.ravel()) / (np.linalg.norm(update) * np.linalg.norm(w))
        assert cosine > 0.9, (k.path, cosine)


CONFIG = textwrap.dedent(
    """
    import dataclasses
    from maskrcnn.config import StageConfig, load_config

    def get_config():
        c = load_config("tiny")
        return dataclasses.replace(
            c,
            name="named-parts",
            data=dataclasses.replace(c.data, builder="synthetic", synthetic_images_per_fold=4, scale=0.25),
            model=dataclasses.replace(
                c.model,
                model_class="tests.model.parts:DiceMaskRCNN",
                mask_head="tests.model.parts:small_mask_head",
                box_head="tests.model.parts:agnostic_box_head",
                detection_min_confidence=0.0,
            ),
            train=dataclasses.replace(
                c.train, steps_per_epoch=2, stages=(StageConfig("all", "all", 1, 1e-2),)
            ),
        )
    """
)


def _log_rows(workdir):
    with open(os.path.join(workdir, "log.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # train, resume, evaluate, diagnose and predict (an image and a slide): about 2 minutes
def test_named_parts_and_class_are_rebuilt_by_train_resume_evaluate_and_predict(tmp_path):
    from PIL import Image

    from maskrcnn.model.heads import MaskHead
    from maskrcnn.train.workdir import load_trained
    from tests.slides.helpers import draw_tissue, write_pyramid

    config_file = tmp_path / "named.py"
    config_file.write_text(CONFIG)
    workdir = str(tmp_path / "run")
    train = ["train", "--config", str(config_file), "--workdir", workdir, "--no-validation"]
    cli.main(train)
    first = _log_rows(workdir)
    assert first and all(float(r["mask_dice"]) >= 0 for r in first)
    cli.main([*train, "--resume", "--epochs", "2"])  # the subclass's loss term survives the resume
    rows = _log_rows(workdir)
    assert [r["step"] for r in rows] == ["2", "4"] and all(r["mask_dice"] != "" for r in rows)
    _, model = load_trained(workdir)
    assert type(model) is parts.DiceMaskRCNN
    assert isinstance(model.mask_head, MaskHead) and model.mask_head.width == 16
    assert isinstance(model.box_head, parts.AgnosticBoxHead)

    assert cli.main(["evaluate", "--workdir", workdir, "--split", "fold3", "--overlays", "0"]) is None
    assert os.path.exists(os.path.join(workdir, "eval-fold3", "report.md"))
    assert cli.main(["diagnose", "--workdir", workdir, "--split", "fold3"]) is None
    result = json.loads(open(os.path.join(workdir, "diagnose-fold3", "diagnose.json")).read())
    assert result["nuclei"] > 0

    rng = np.random.default_rng(0)
    tissue, _, _ = draw_tissue(rng, 300, 300, 20)
    Image.fromarray(tissue).save(tmp_path / "tile.png")
    slide = np.full((1024, 1024, 3), 250, np.uint8)
    slide[200:500, 300:600] = tissue
    write_pyramid(str(tmp_path / "slide.tif"), slide, mpp=0.25)
    out = str(tmp_path / "out")
    code = cli.main(
        [
            "predict",
            str(tmp_path / "tile.png"),
            str(tmp_path / "slide.tif"),
            "--workdir",
            workdir,
            "--out",
            out,
        ]
    )
    assert code == 0
    assert os.path.exists(os.path.join(out, "tile_labels.tif"))
    assert os.path.exists(os.path.join(out, "slide.geojson"))


def test_a_named_part_that_cannot_be_imported_is_named_in_the_error(tmp_path, capsys):
    from maskrcnn.config import load_config
    from maskrcnn.train.workdir import CONFIG_FILE

    config = apply_overrides(load_config("tiny"), ["model.mask_head=my_lab.heads:wide_mask_head"])
    (tmp_path / CONFIG_FILE).write_text(config.to_json())
    assert cli.main(["evaluate", "--workdir", str(tmp_path), "--split", "fold3"]) == 2
    err = capsys.readouterr().err
    assert "model.mask_head='my_lab.heads:wide_mask_head': cannot import module 'my_lab.heads'" in err
    assert "PYTHONPATH" in err
    with pytest.raises(
        ValueError, match="model.model_class='tests.model.parts:small_mask_head' is not a subclass"
    ):
        build_model(
            apply_overrides(
                config, ["model.model_class=tests.model.parts:small_mask_head", "model.mask_head=''"]
            ).model,
            64,
        )
    with pytest.raises(ValueError, match="model.box_head='heads' must be '' .* or 'package.module:name'"):
        apply_overrides(config, ["model.box_head=heads"])
