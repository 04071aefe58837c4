"""What the project refuses, and why: hostile but realistic inputs (issue 19), each with the message a
user gets. Scan the test names for the list."""

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from maskrcnn import cli
from maskrcnn.config import apply_overrides, load_config
from maskrcnn.predict import output_names, predict_files
from tests.model.helpers import tiny_training_config

# ----------------------------------------------------------------------------------------- configs
BAD_VALUES = [
    ("data.scale=0.9", "data.scale=0.9 gives 230.4 px model images"),
    ("train.batch_size=0", "train.batch_size=0 must be at least 1"),
    ("train.checkpoint_every_steps=0", "train.checkpoint_every_steps=0 must be at least 1"),
    ("model.rpn_nms_threshold=high", "model.rpn_nms_threshold must be float, got 'high'"),
    ("train.batch_size=True", "train.batch_size must be int, got True"),
    ("model.anchor_scales=(4, 8)", "must hold one scale per stride"),
    ("model.rpn_positive_iou=1.5", "model.rpn_positive_iou=1.5 must be in [0, 1]"),
    ("model.rpn_negative_iou=0.8", "must not exceed model.rpn_positive_iou=0.7"),
    ("model.roi_positive_iou=0.0", "model.roi_positive_iou=0.0 must be in (0, 1]"),
    ("model.rpn_assignment=atts", "model.rpn_assignment='atts' must be 'iou' or 'atss'"),
    ("model.rpn_loss=ohem", "model.rpn_loss='ohem' must be 'sampled' or 'focal'"),
    ("model.rpn_object_prior=1.0", "model.rpn_object_prior=1.0 must be in (0, 1)"),
    ("model.roi_positive_sampling=size", "model.roi_positive_sampling='size' must be 'uniform' or"),
    ("model.atss_candidates=cells", "model.atss_candidates='cells' must be 'anchors' or 'locations'"),
    ("data.hed_jitter=2.0", "data.hed_jitter=2.0 must be in [0, 1)"),
    ("model.train_rois_per_image=10000", "must not exceed the"),
    ("data.mini_mask_size=0", "data.mini_mask_size=0 must be None (full masks) or at least 2"),
    ("model.roi_window=1", "model.roi_window=1 must be 0 or at least 2"),
    ("model.box_context=0.5", "model.box_context=0.5 must be in [1, 4]"),
    ("train.optimizer=adamw", "train.optimizer='adamw' must be 'sgd' or 'adam'"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_config_value_is_refused_when_the_config_is_made(override, message):
    with pytest.raises(ValueError, match="config 'tiny'") as error:
        apply_overrides(load_config("tiny"), [override])
    assert message in str(error.value)


def test_every_preset_is_valid_and_a_config_file_with_bad_values_is_refused(tmp_path):
    for name in ("paper", "fast", "tiny", "demo", "learning", "learning_classes"):
        load_config(name)
    path = tmp_path / "mine.py"
    path.write_text(
        "import dataclasses\nfrom maskrcnn.config import load_config\n"
        "def get_config():\n    c = load_config('tiny')\n"
        "    return dataclasses.replace(c, train=dataclasses.replace(c.train, batch_size=-2))\n"
    )
    with pytest.raises(ValueError, match="train.batch_size=-2 must be at least 1"):
        load_config(str(path))


# ------------------------------------------------------------------------------------------ the CLI
def test_cli_errors_print_the_message_not_a_traceback(tmp_path, capsys):
    assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "maskrcnn evaluate: error:" in err and "config.json not found" in err
    assert "Traceback" not in err
    assert cli.main(["train", "--config", "tiny", "--set", "train.batch_size=0"]) == 2
    assert "train.batch_size=0 must be at least 1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):  # --debug: the traceback, for bug reports
        cli.main(["--debug", "evaluate", "--workdir", str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        cli.main(["evaluate", "--workdir", str(tmp_path), "--debug"])


def _tiny_run(tmp_path):
    """A workdir as `train` leaves it: config.json and model.weights.h5 of the tiny config."""
    from maskrcnn.model import build_model

    config = load_config("tiny")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json())
    build_model(config.model, config.data.image_size).save_weights(str(workdir / "model.weights.h5"))
    return config, workdir


def test_a_damaged_run_names_the_file_and_the_fix(tmp_path):
    from maskrcnn.train.workdir import load_trained

    _, workdir = _tiny_run(tmp_path)
    weights = workdir / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:5000])  # truncated, as by a full disk
    with pytest.raises(ValueError, match=r"model.weights.h5 cannot be read .* --resume"):
        load_trained(str(workdir))
    (workdir / "config.json").write_text('{"name": "tiny", "data": {')
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_trained(str(workdir))


# ------------------------------------------------------------------------------------------ predict
def test_inputs_that_would_write_the_same_outputs_keep_their_suffix_or_are_refused():
    assert output_names(["d/a.png", "d/a.jpg", "d/b.png"]) == ["a_png", "a_jpg", "b"]
    with pytest.raises(ValueError, match="would write the same output files"):
        output_names(["x/a.png", "y/a.png"])


@pytest.mark.parametrize("overlap", [-1, 256, 300])
def test_an_overlap_without_tiles_is_refused_before_the_model_is_built(tmp_path, overlap):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=rf"--overlap {overlap}: must be in \[0, 256\)"):
        predict_files(str(tmp_path / "no-run"), [str(tmp_path)], str(tmp_path / "out"), overlap=overlap)


def test_missing_inputs_and_a_file_as_output_folder_are_found_before_the_model_is_built(tmp_path):
    # The workdir does not exist either: reaching the model would raise about its config.json instead.
    with pytest.raises(FileNotFoundError, match="missing.png: no such file or folder"):
        predict_files(str(tmp_path / "no-run"), [str(tmp_path / "missing.png")], str(tmp_path / "out"))
    (tmp_path / "out.txt").write_text("")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(NotADirectoryError, match="out.txt is a file"):
        predict_files(str(tmp_path / "no-run"), [str(tmp_path / "a.png")], str(tmp_path / "out.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        predict_files(str(tmp_path / "no-run"), [str(empty)], str(tmp_path / "out"))


# ------------------------------------------------------------------------------- runs and checkpoints
def _fake_run(workdir, config, steps=(2, 4)):
    """A workdir as a killed run leaves it: config.json, log.csv and checkpoints at ``steps``."""
    from maskrcnn.train import checkpoint

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json())
    with open(os.path.join(workdir, "log.csv"), "w") as f:
        f.write("stage,step\n")
    return [
        checkpoint.save(
            workdir, {"w": np.full(3, s, np.float32)}, {"stage": 0, "step": s, "config": config.to_dict()}
        )
        for s in steps
    ]


def test_a_used_workdir_is_refused_without_resume_or_overwrite(tmp_path):
    from maskrcnn.train.loop import train
    from maskrcnn.train.workdir import open_workdir

    config = load_config("tiny")
    workdir = str(tmp_path / "run")
    _fake_run(workdir, config)
    before = open(os.path.join(workdir, "config.json")).read()
    other = dataclasses.replace(config, name="another")
    with pytest.raises(
        ValueError, match=r"already holds a training run \(config.json, log.csv, checkpoints\)"
    ):
        train(other, workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before  # nothing was written
    with pytest.raises(ValueError, match="give one"):
        open_workdir(workdir, config, resume=True, overwrite=True)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert open_workdir(workdir, config, resume=False, overwrite=True) is None
    assert sorted(os.listdir(workdir)) == ["notes.txt"]  # the run is gone, the user's file is not


def test_a_resume_with_another_config_is_refused_before_anything_is_written(tmp_path):
    from maskrcnn.config import StageConfig
    from maskrcnn.train.loop import train
    from maskrcnn.train.workdir import open_workdir

    config = load_config("tiny")
    workdir = str(tmp_path / "run")
    paths = _fake_run(workdir, config)
    before = open(os.path.join(workdir, "config.json")).read()
    bigger = apply_overrides(config, ["data.scale=0.75", "train.batch_size=4"])
    with pytest.raises(ValueError, match=r"data.scale: 0.5 -> 0.75; .*train.batch_size: 2 -> 4"):
        train(bigger, workdir, resume=True)
    assert open(os.path.join(workdir, "config.json")).read() == before
    longer = dataclasses.replace(
        config, train=dataclasses.replace(config.train, stages=(StageConfig("all", "all", 5, 1e-2),))
    )
    assert open_workdir(workdir, longer, resume=True, overwrite=False) == paths[-1]  # epochs may change


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, capsys):
    from maskrcnn.train.workdir import open_workdir

    config = load_config("tiny")
    workdir = str(tmp_path / "run")
    older, newest = _fake_run(workdir, config)
    with open(os.path.join(newest, "state.npz"), "r+b") as f:
        f.truncate(40)
    stale = os.path.join(workdir, "checkpoints", ".tmp-killed")
    os.makedirs(stale)
    assert open_workdir(workdir, config, resume=True, overwrite=False) == older
    out = capsys.readouterr().out
    assert f"resume: skipping {newest}, it cannot be read (BadZipFile" in out
    assert not os.path.exists(stale)  # what a killed write left is cleaned up
    with open(os.path.join(older, "meta.json"), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="no checkpoint in .* can be resumed from"):
        open_workdir(workdir, config, resume=True, overwrite=False)


# --------------------------------------------------------------------------------------------- data
def _corrupt_fold(tmp_path, edit):
    """Three one-image synthetic folds with ``edit(images, masks)`` applied to fold 2's arrays."""
    from maskrcnn.synthetic import write_folds

    root = tmp_path / "manual"
    write_folds(str(root), 2, seed=4)
    base = root / "Fold 2"
    paths = {
        "images": base / "images" / "fold2" / "images.npy",
        "masks": base / "masks" / "fold2" / "masks.npy",
    }
    images, masks = np.load(paths["images"]), np.load(paths["masks"])
    edit(images, masks)
    np.save(paths["images"], images)
    np.save(paths["masks"], masks)
    return root, paths


def _nuclei(masks):
    return masks[1, ..., :5] > 0


BAD_FOLDS = [
    (
        "fractional ids",
        lambda im, m: m.__setitem__((1, ..., slice(0, 5)), m[1, ..., :5] * 0.5 + (m[1, ..., :5] > 0) * 0.25),
        r"masks.npy image 1: .*not whole numbers",
    ),
    (
        "negative ids",
        lambda im, m: m.__setitem__((1, ..., slice(0, 5)), -m[1, ..., :5]),
        r"masks.npy image 1: .*negative",
    ),
    ("NaN in masks", lambda im, m: m.__setitem__((1, 10, 10, 0), np.nan), r"masks.npy image 1: .*NaN"),
    (
        "an id of 2**33",
        lambda im, m: m.__setitem__((1, 10, 10, 1), 2.0**33),
        r"masks.npy image 1: .*beyond int32",
    ),
    (
        "images scaled to 0-1",
        lambda im, m: im.__setitem__(1, im[1] / 255.0),
        r"images.npy image 1: .*scaled to 0-1",
    ),
]


@pytest.mark.parametrize("edit,message", [b[1:] for b in BAD_FOLDS], ids=[b[0] for b in BAD_FOLDS])
def test_bad_fold_files_are_errors_that_name_the_file_and_image(tmp_path, edit, message):
    from maskrcnn.input_pipeline import FoldSource

    root, _ = _corrupt_fold(tmp_path, edit)
    source = FoldSource(str(root / "Fold 2"), "all_classes")
    source[0]  # the good image reads
    with pytest.raises(ValueError, match=message):
        source[1]


def test_the_builder_refuses_a_bad_fold_and_builds_once_it_is_fixed(tmp_path):
    import tensorflow_datasets as tfds

    from maskrcnn.datasets.pannuke import Builder

    root, paths = _corrupt_fold(
        tmp_path, lambda im, m: m.__setitem__((1, ..., slice(0, 5)), m[1, ..., :5] * 0.5)
    )
    config = tfds.download.DownloadConfig(manual_dir=str(root))
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match=r"Fold 2.*masks.npy image 1: .*not whole numbers.*build again"):
        Builder(config="all_classes", data_dir=data_dir).download_and_prepare(download_config=config)
    assert not Builder(config="all_classes", data_dir=data_dir).is_prepared()
    masks = np.load(paths["masks"])
    masks[1, ..., :5] = np.rint(masks[1, ..., :5] * 2)
    np.save(paths["masks"], masks)
    stale = tmp_path / "tfds" / "pannuke" / "all_classes" / "incomplete.KILLED_1.0.0"  # a killed build's
    stale.mkdir(parents=True)
    Builder(config="all_classes", data_dir=data_dir).download_and_prepare(download_config=config)
    assert not stale.exists()
    assert len(tfds.data_source("pannuke/all_classes", split="fold2", data_dir=data_dir)) == 2


def test_an_empty_fold_is_named(tmp_path):
    from maskrcnn import pannuke

    root, paths = _corrupt_fold(tmp_path, lambda im, m: None)
    np.save(paths["images"], np.zeros((0, 256, 256, 3)))
    np.save(paths["masks"], np.zeros((0, 256, 256, 6)))
    np.save(paths["images"].parent / "types.npy", np.array([], "<U5"))
    with pytest.raises(ValueError, match=r"images.npy holds no images: an empty fold"):
        pannuke.open_fold(pannuke.fold_files(str(root / "Fold 2")))


class _Quiet:
    def write(self, row):
        pass

    update = set_postfix = lambda self, *a, **k: None  # noqa: E731


def test_the_monitor_calls_a_loss_spike_or_a_skipped_step_unhealthy():
    from maskrcnn.model import LOSS_NAMES
    from maskrcnn.train.log import Monitor

    monitor = Monitor(_Quiet(), None, log_every=1000, max_nonfinite=10)
    monitor.start_epoch(0, 0, 1000, _Quiet())

    def step(i, loss, finite=True):
        metrics = {
            "finite": finite,
            "loss": loss,
            "lr": 0.1,
            "grad_norm": 1.0,
            **dict.fromkeys(LOSS_NAMES, 0.0),
        }
        monitor.record(i, metrics)

    step(1, 4.0), step(2, 2.0), step(3, 19.0)  # within 10x of the best (2.0)
    assert monitor.healthy()
    monitor.checkpointed()
    step(4, 25.0)  # 12.5x the best: diverging
    assert not monitor.healthy()
    monitor.checkpointed()
    step(5, 1.5)
    assert monitor.healthy()
    monitor.checkpointed()
    step(6, float("nan"), finite=False)
    assert not monitor.healthy()


def test_the_newest_healthy_checkpoint_is_kept_and_resumed_from(tmp_path, capsys):
    from maskrcnn.train import checkpoint
    from maskrcnn.train.workdir import open_workdir

    config = load_config("tiny")
    workdir = str(tmp_path / "run")
    (good,) = _fake_run(workdir, config, steps=(2,))
    for s in (4, 6, 8, 10):
        checkpoint.save(
            workdir, {"w": np.full(3, 1e9, np.float32)}, {"stage": 0, "step": s, "healthy": False}
        )
    names = [os.path.basename(p) for p in checkpoint.list_checkpoints(workdir)]
    assert names == ["0-00000002", "0-00000006", "0-00000008", "0-00000010"]  # 3 newest + the healthy one
    assert open_workdir(workdir, config, resume=True, overwrite=False) == good
    assert "written after the loss diverged" in capsys.readouterr().out


@pytest.mark.slow
def test_a_divergence_names_the_last_healthy_checkpoint_and_resume_recovers_from_it(tmp_path):
    from maskrcnn.config import StageConfig
    from maskrcnn.train import checkpoint
    from maskrcnn.train.log import NonFiniteLossError
    from maskrcnn.train.loop import train

    config = tiny_training_config(
        [StageConfig("a", "all", 1, 1e-2), StageConfig("b", "all", 10, 1e6)],
        steps_per_epoch=2,
        checkpoint_every_steps=1,
    )
    workdir = str(tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"last healthy checkpoint is .*0-00000002") as error:
        train(config, workdir, validate=False, progress=False)
    healthy = [p for p in checkpoint.list_checkpoints(workdir) if checkpoint.is_healthy(p)]
    assert [os.path.basename(p) for p in healthy] == ["0-00000002"]
    assert "lower learning rate" in str(error.value)
    calmer = dataclasses.replace(
        config,
        train=dataclasses.replace(
            config.train, stages=(StageConfig("a", "all", 1, 1e-2), StageConfig("b", "all", 1, 1e-3))
        ),
    )
    model = train(calmer, workdir, resume=True, validate=False, progress=False)
    assert all(np.isfinite(np.asarray(v.value)).all() for v in model.trainable_variables)


def test_a_checkpoint_from_before_a_config_field_existed_resumes_with_its_default(tmp_path):
    import json

    from maskrcnn.train import checkpoint
    from maskrcnn.train.workdir import open_workdir

    config = load_config("tiny")
    workdir = str(tmp_path / "run")
    (path,) = _fake_run(workdir, config, steps=(2,))
    meta_path = os.path.join(path, "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    del meta["config"]["data"]["mpp"]  # as written by a version without data.mpp
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    assert checkpoint.problem(path) is None
    assert open_workdir(workdir, config, resume=True, overwrite=False) == path
    changed = apply_overrides(config, ["data.mpp=0.5"])  # a value other than the default still differs
    with pytest.raises(ValueError, match=r"data.mpp: 0.25 -> 0.5"):
        open_workdir(workdir, changed, resume=True, overwrite=False)
