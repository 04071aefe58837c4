"""Kill a training run with SIGKILL, resume it, and get the weights of a run that was never stopped."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

CONFIG = textwrap.dedent(
    """
    import dataclasses
    from maskrcnn.config import StageConfig, load_config

    def get_config():
        c = load_config("tiny")
        return dataclasses.replace(
            c,
            name="resume-test",
            data=dataclasses.replace(c.data, builder="synthetic", synthetic_images_per_fold=6, scale=0.25),
            train=dataclasses.replace(
                c.train, checkpoint_every_steps=2, stages=(StageConfig("all", "all", 3, 1e-2),)
            ),
        )
    """
)


def run(config, workdir, *extra):
    cmd = [sys.executable, "-m", "maskrcnn.cli", "train", "--config", config, "--workdir", workdir, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weights(path):
    with h5py.File(path) as f:
        out = []
        f.visititems(lambda name, obj: out.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
    return dict(out)


@pytest.mark.slow  # two training processes and a resume: about two minutes on 2 cores
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    config = tmp_path / "resume_config.py"
    config.write_text(CONFIG)
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    first = run(str(config), whole)
    victim = run(str(config), killed)
    checkpoint = os.path.join(killed, "checkpoints", "0-00000004")
    deadline = time.time() + 600
    while not os.path.exists(checkpoint) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert victim.poll() is None, "the run ended before it could be killed: " + victim.stderr.read()[-2000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not os.path.exists(os.path.join(killed, "model.weights.h5"))
    resumed = run(str(config), killed, "--resume")
    for p in (first, resumed):
        assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]
    a, b = weights(os.path.join(whole, "model.weights.h5")), weights(os.path.join(killed, "model.weights.h5"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    log = open(os.path.join(killed, "log.csv")).read()
    assert "validation" in log
