"""The package as a user installs it: a wheel, in a fresh virtual environment, from an empty folder."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # builds a wheel, makes a virtual environment and trains: about two minutes
def test_a_wheel_in_a_fresh_venv_trains_tiny_and_builds_the_dataset(tmp_path):
    # From a copy of the sources, so that the build leaves nothing in the repository (and nothing stale
    # from an earlier build gets in).
    source = tmp_path / "source"
    skip = (".venv", ".git", "runs", "build", "*.egg-info", ".pytest_cache", ".ruff_cache", "__pycache__")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skip))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-w", tmp_path],
        check=True,
        capture_output=True,
    )
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", tmp_path / wheel], check=True)
    # The dependencies come from this environment's site-packages (a path, so its editable finder of the
    # repository's own maskrcnn is not loaded): the package itself is the wheel's alone.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda *args: subprocess.run(  # noqa: E731
        args, cwd=empty, env=env, capture_output=True, text=True, timeout=900
    )
    where = run(python, "-c", "import maskrcnn; print(maskrcnn.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(site), where.stdout + where.stderr
    train = run(
        str(venv / "bin" / "maskrcnn"), "train", "--config", "tiny", "--workdir", "run", "--epochs", "1",
        "--no-validation", "--set", "data.builder=synthetic", "--set", "data.synthetic_images_per_fold=6",
        "--set", "train.steps_per_epoch=2",
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    assert (empty / "run" / "model.weights.h5").exists()
    build = run(
        python,
        "-c",
        "import tensorflow_datasets as tfds\n"
        "from maskrcnn.datasets.pannuke import Builder\n"
        "from maskrcnn.synthetic import write_folds\n"
        "write_folds('folds', 2, seed=0)\n"
        "builder = Builder(config='all_classes', data_dir='tfds')\n"
        "builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir='folds'))\n"
        "n = len(tfds.data_source('pannuke/all_classes', split='fold1', data_dir='tfds'))\n"
        "print('RESULT', n, builder.info.citation.split(',')[0])\n",
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (result,) = [line for line in build.stdout.splitlines() if line.startswith("RESULT")]
    assert result == "RESULT 2 @inproceedings{gamper2019pannuke"  # two images, and the shipped citation
