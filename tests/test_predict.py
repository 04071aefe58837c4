import numpy as np
import pytest
import tifffile
from PIL import Image

from maskrcnn.predict import ImageError, instance_table, list_inputs, read_image, write_outputs
from maskrcnn.tiling import TILE, segment_large, tile_origins
from tests.model.helpers import make_instances


def oracle(truth, origins):
    """A perfect 'model': for the n-th tile it returns the true nuclei inside that tile, cut at its edges."""
    calls = iter(origins)

    def predict_tiles(tiles):
        out = []
        for _ in tiles:
            y, x = next(calls)
            crop = truth[y : y + TILE, x : x + TILE]
            ids = np.unique(crop)[1:]
            labels = np.searchsorted(ids, crop) + 1
            labels[crop == 0] = 0
            out.append((labels, np.linspace(0.9, 0.5, len(ids)), np.ones(len(ids), int)))
        return out

    return predict_tiles


@pytest.mark.parametrize("shape", [(700, 530), (256, 256), (300, 1000)])
def test_every_nucleus_comes_out_once_and_whole(shape):
    rng = np.random.default_rng(sum(shape))
    truth = make_instances(rng, max(shape), 400, radius=(4, 12))[: shape[0], : shape[1]]
    truth = truth * (np.isin(truth, np.unique(truth[0])) == 0)  # drop nuclei cut by the crop
    ys, xs = tile_origins(shape[0], TILE, 64), tile_origins(shape[1], TILE, 64)
    origins = [(y, x) for y in ys for x in xs]
    image = np.zeros((*shape, 3), np.uint8)
    labels, instances = segment_large(image, oracle(truth, origins), overlap=64, batch=5)
    assert labels.shape == shape
    true_ids = np.unique(truth)[1:]
    assert len(instances) == len(true_ids)  # once each
    # Whole: each predicted nucleus is exactly one true nucleus.
    pairs = {(int(t), int(p)) for t, p in zip(truth.ravel(), labels.ravel(), strict=True) if t or p}
    assert len(pairs) == len(true_ids) and all(t and p for t, p in pairs)


def test_tile_origins_cover_with_overlap():
    assert tile_origins(200, 256, 64) == [0]
    origins = tile_origins(1000, 256, 64)
    assert origins[0] == 0 and origins[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(origins, origins[1:], strict=False))


def test_small_image_is_padded(tmp_path):
    truth = np.zeros((100, 120), np.int32)
    truth[10:20, 30:45] = 1
    truth[60:70, 60:80] = 2
    padded = np.zeros((256, 256), np.int32)
    padded[:100, :120] = truth
    labels, instances = segment_large(np.zeros((100, 120, 3), np.uint8), oracle(padded, [(0, 0)]))
    assert labels.shape == (100, 120) and len(instances) == 2
    rows = instance_table(labels, instances, ("neoplastic",))
    assert rows[0]["class"] == "neoplastic" and rows[0]["area"] == 150
    assert (rows[0]["y1"], rows[0]["x1"], rows[0]["y2"], rows[0]["x2"]) == (10, 30, 20, 45)
    paths = write_outputs(str(tmp_path), "small", np.zeros((100, 120, 3), np.uint8), labels, rows)
    back = tifffile.imread(paths["labels"])
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    assert open(paths["csv"]).read().startswith("id,class,score,area,centroid_y,centroid_x,y1,x1,y2,x2")


@pytest.mark.parametrize(
    "kind",
    ["rgb.png", "rgba.png", "grey.png", "rgb.jpg", "rgb16.tif", "grey16.tif", "chw.tif", "float.tif"],
)
def test_image_kinds(tmp_path, kind):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = str(tmp_path / kind)
    if kind == "rgb.png":
        Image.fromarray(rgb).save(path)
    elif kind == "rgba.png":
        Image.fromarray(np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], -1)).save(path)
    elif kind == "grey.png":
        Image.fromarray(rgb[..., 0]).save(path)
    elif kind == "rgb.jpg":
        Image.fromarray(rgb).save(path, quality=100, subsampling=0)
    elif kind == "rgb16.tif":
        tifffile.imwrite(path, rgb.astype(np.uint16) * 257)
    elif kind == "grey16.tif":
        tifffile.imwrite(path, rgb[..., 0].astype(np.uint16) * 257)
    elif kind == "chw.tif":
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0))
    else:
        tifffile.imwrite(path, rgb.astype(np.float32) / 255)
    image = read_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    expected = np.repeat(rgb[..., :1], 3, -1) if "grey" in kind else rgb
    tolerance = 12 if kind.endswith(".jpg") else 0
    assert np.abs(image.astype(int) - expected).max() <= tolerance


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png: cannot read"):
        read_image(str(bad))
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(str(empty), np.zeros((0, 5), np.uint8))
    with pytest.raises(ImageError, match="empty.tif"):
        read_image(str(empty))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.rsplit("/", 1)[1] for p in list_inputs([str(tmp_path)])] == [
        "broken.png",
        "empty.tif",
        "ok.png",
    ]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        list_inputs([str(tmp_path / "missing.png")])


def test_a_checkpoint_from_another_config_is_explained(tmp_path):
    import dataclasses

    from maskrcnn.config import load_config
    from maskrcnn.model import build_model
    from maskrcnn.train.workdir import CONFIG_FILE, WEIGHTS_FILE, load_trained

    with pytest.raises(FileNotFoundError, match="is not a training run"):
        load_trained(str(tmp_path))
    config = load_config("tiny")
    model = build_model(config.model, config.data.image_size, mini_masks=True)
    model.save_weights(str(tmp_path / WEIGHTS_FILE))
    wider = dataclasses.replace(config, model=dataclasses.replace(config.model, mask_head_width=16))
    (tmp_path / CONFIG_FILE).write_text(wider.to_json())
    with pytest.raises(ValueError, match="does not fit the network that .*config.json describes"):
        load_trained(str(tmp_path))
    (tmp_path / CONFIG_FILE).write_text(config.to_json())
    loaded_config, loaded = load_trained(str(tmp_path))
    assert loaded_config == config
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_predict_takes_inference_settings_and_refuses_the_others(tmp_path, capsys):
    import csv

    from maskrcnn.cli import main
    from maskrcnn.config import load_config
    from tests.model.helpers import classifier_near_half

    config = load_config("tiny")
    model = classifier_near_half(config)
    workdir = tmp_path / "run"
    workdir.mkdir()
    model.save_weights(str(workdir / "model.weights.h5"))
    (workdir / "config.json").write_text(config.to_json())
    rgb = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")

    def nuclei(out, *settings):
        sets = [arg for s in settings for arg in ("--set", s)]
        assert (
            main(["predict", str(tmp_path / "a.png"), "--workdir", str(workdir), "--out", str(out), *sets])
            == 0
        )
        with open(out / "a_instances.csv") as f:
            return len(list(csv.DictReader(f)))

    # Every proposal scores near 1/2: none reaches 1, and many 0.05 (voted over the four flips).
    assert nuclei(tmp_path / "none", "model.detection_min_confidence=1.0") == 0
    assert nuclei(tmp_path / "flips", "model.detection_min_confidence=0.05", "model.test_time_flips=True") > 0
    capsys.readouterr()
    refused = ["--out", str(tmp_path / "refused"), "--set", "model.pool_size=5"]
    assert main(["predict", str(tmp_path / "a.png"), "--workdir", str(workdir), *refused]) == 2
    assert "model.pool_size cannot change after training" in capsys.readouterr().err
