"""A cohort of slides: bad files reported while the others finish, --resume, the CLI, a Dask cluster."""

import json
import os
import shutil

import numpy as np
import pytest

import maskrcnn.slides
from maskrcnn.cli import main
from maskrcnn.slides import SlideOptions, output_paths, run_cohort
from tests.slides.helpers import aperio_description, oracle_model, write_pyramid
from tests.slides.test_slide_pipeline import make_slide
from tests.slides.test_slide_reader import WSI

OPTIONS = SlideOptions(progress=False, batch=4)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A folder of two good slides (a pyramidal TIFF and an Aperio .svs) and, where the shared fixtures
    are here, the bad ones: a TIFF OpenSlide cannot open and an .svs with a corrupt tile."""
    folder = tmp_path_factory.mktemp("cohort")
    image, *_ = make_slide(2, (700, 800), ((60, 80, 500, 600),), count=80)
    write_pyramid(str(folder / "a.tif"), image, 0.25, levels=2)
    image, *_ = make_slide(3, (600, 500), ((40, 40, 400, 420),), count=60)
    write_pyramid(
        str(folder / "b.svs"), image, None, levels=2, description=aperio_description(500, 600, 0.25)
    )
    if os.path.isdir(WSI):
        for name in ("unopenable.tiff", "unreadable.svs"):
            shutil.copy(os.path.join(WSI, name), folder / name)
    return folder


def jobs_of(folder):
    from maskrcnn.predict import check_arguments

    return check_arguments([str(folder)], str(folder / "out"), 64)


def outputs(out_dir, name):
    paths = output_paths(str(out_dir), name)
    with open(paths["summary"]) as f:
        summary = json.load(f)
    return open(paths["geojson"]).read(), open(paths["csv"]).read(), summary


def test_bad_slides_are_reported_and_the_others_finish_then_resume_skips_them(cohort, tmp_path):
    lines = []
    results = run_cohort(jobs_of(cohort), str(tmp_path), oracle_model, OPTIONS, report=lines.append)
    status = {r.name: r.status for r in results}
    assert status["a"] == status["b"] == "done"
    if os.path.isdir(WSI):
        assert status["unopenable"] == status["unreadable"] == "failed"
        errors = {r.name: r.error for r in results}
        assert "unopenable.tiff: OpenSlide cannot open it" in errors["unopenable"]
        assert "unreadable.svs: reading level 0" in errors["unreadable"] and "damaged" in errors["unreadable"]
        assert not any(name.startswith(("unopenable", "unreadable", ".")) for name in os.listdir(tmp_path))
        assert any("unreadable: FAILED" in line for line in lines)
    assert outputs(tmp_path, "b")[2]["vendor"] == "aperio"
    before = os.path.getmtime(output_paths(str(tmp_path), "a")["geojson"])
    # A slide killed half-way (outputs of a former run, no summary) is redone; finished ones are skipped.
    os.remove(output_paths(str(tmp_path), "b")["summary"])
    os.makedirs(tmp_path / ".b.partial")

    def no_model():
        raise AssertionError("the model is loaded only when a slide is run")

    again = run_cohort(
        jobs_of(cohort)[:1], str(tmp_path), no_model, OPTIONS, resume=True, report=lines.append
    )
    assert [r.status for r in again] == ["skipped"]
    again = run_cohort(
        jobs_of(cohort), str(tmp_path), oracle_model, OPTIONS, resume=True, report=lines.append
    )
    assert {r.name: r.status for r in again}["a"] == "skipped" and {r.name: r.status for r in again}[
        "b"
    ] == "done"
    assert os.path.getmtime(output_paths(str(tmp_path), "a")["geojson"]) == before
    assert not os.path.exists(tmp_path / ".b.partial")


def test_predict_command_takes_slides_and_images_together(cohort, tmp_path, monkeypatch, capsys):
    from PIL import Image

    folder = tmp_path / "in"
    shutil.copytree(cohort, folder)
    image, *_ = make_slide(4, (300, 300), ((20, 20, 260, 260),), count=20)
    Image.fromarray(image).save(folder / "c.png")
    # The trained model is replaced by the oracle: the workdir is never read.
    monkeypatch.setattr(maskrcnn.slides, "load_tile_model", lambda workdir, overrides=(): oracle_model())
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--workdir", "no-run", "--out", str(out), "--batch", "2"])
    files = sorted(os.listdir(out))
    assert {"a.geojson", "b_nuclei.csv", "a_summary.json", "b_thumbnail.png"} <= set(files)
    assert {"c_labels.tif", "c_instances.csv", "c_overlay.png"} <= set(files)
    if os.path.isdir(WSI):
        assert code == 1 and "2 file(s) failed" in capsys.readouterr().out
    assert main(["predict", str(folder / "a.tif"), "--workdir", "x", "--out", str(out), "--mpp", "-1"]) == 2
    assert "--mpp -1.0: must be positive" in capsys.readouterr().err


def test_a_cluster_without_device_workers_is_refused():
    from distributed import LocalCluster

    from maskrcnn.slides.cohort import _check_workers

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        from distributed import Client

        with Client(cluster) as client:
            with pytest.raises(ValueError, match="no worker declares the resource device=1"):
                _check_workers(client, cluster.scheduler_address)


def test_a_local_cluster_of_two_workers_gives_the_sequential_results(cohort, tmp_path):
    jobs = jobs_of(cohort)
    run_cohort(jobs, str(tmp_path / "seq"), oracle_model, OPTIONS, report=lambda line: None)
    results = run_cohort(
        jobs, str(tmp_path / "dask"), oracle_model, OPTIONS, workers=2, report=lambda line: None
    )
    for r in results:
        if r.status == "failed":
            assert r.name in ("unopenable", "unreadable")
            continue
        seq, par = outputs(tmp_path / "seq", r.name), outputs(tmp_path / "dask", r.name)
        assert seq[:2] == par[:2]  # the same GeoJSON and CSV, byte for byte
        assert {k: v for k, v in seq[2].items() if "second" not in k} == {
            k: v for k, v in par[2].items() if "second" not in k
        }
    assert sorted(r.status for r in results).count("done") == 2
    assert np.all([not n.startswith(".") for n in os.listdir(tmp_path / "dask")])
