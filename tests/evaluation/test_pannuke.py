import json

import numpy as np
import pytest

from maskrcnn.evaluation import (
    PANNUKE_TISSUES,
    combine_channels,
    image_scores,
    instances_to_pannuke,
    pannuke_metrics,
    pannuke_to_instances,
    panoptic_quality,
    save_overlays,
    tissue_table,
    write_report,
)
from tests.evaluation import references as ref


def square(mask, channel, ident, y, x, side=4):
    mask[y : y + side, x : x + side, channel] = ident


def random_masks(rng, n, size=32, covered=False):
    """(N, H, W, 6) float64 PanNuke-like truth and prediction: some class swaps, misses and overlaps."""
    true = np.zeros((n, size, size, 6))
    pred = np.zeros_like(true)
    for i in range(n):
        for k in range(int(rng.integers(0, 9))):
            c, (y, x), side = int(rng.integers(0, 5)), rng.integers(0, size - 6, 2), int(rng.integers(3, 7))
            square(true[i], c, k + 1 + 300 * c, y, x, side)  # ids repeat across channels in PanNuke
            if rng.random() < 0.75:
                dy, dx = rng.integers(-1, 2, 2)
                pc = c if rng.random() < 0.8 else int(rng.integers(0, 5))
                square(pred[i], pc, 100 + k, max(y + dy, 0), max(x + dx, 0), int(rng.integers(3, 7)))
        if covered and rng.random() < 0.5:  # a nucleus of channel 0 hidden under one of channel 4
            square(true[i], 0, 77, 1, 1, 3)
            square(true[i], 4, 78, 0, 0, 5)
    true[..., 5] = ~true[..., :5].any(-1)
    return true, pred


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_official_protocol_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    n = 24
    true, pred = random_masks(rng, n, covered=seed % 2 == 1)
    tissues = list(rng.choice(["Lung", "Skin", "Colon", "Breast"], n))
    got = pannuke_metrics(true, pred, tissues)
    expected = ref.pannuke_run(true, pred, tissues)
    assert got["bpq"] == pytest.approx(expected["bpq"], rel=1e-12)
    assert got["mpq"] == pytest.approx(expected["mpq"], rel=1e-12)
    for tissue, row in got["per_tissue"].items():
        assert row["bpq"] == pytest.approx(expected["per_tissue_bpq"][tissue], rel=1e-12, nan_ok=True)
        assert row["mpq"] == pytest.approx(expected["per_tissue_mpq"][tissue], rel=1e-12, nan_ok=True)
    np.testing.assert_allclose(list(got["per_class"].values()), expected["per_class"], rtol=1e-12)


def test_matches_the_official_protocol_when_no_pixel_holds_two_nuclei():
    rng = np.random.default_rng(9)
    true, pred = np.zeros((2, 12, 40, 40, 6))
    for i in range(12):  # as PanNuke and a model's label map give: channels never overlap
        labels = ref_blobs(rng, count=int(rng.integers(0, 15)))
        true[i] = instances_to_pannuke(labels, rng.integers(0, 5, labels.max(initial=0)))
        moved = np.roll(labels, tuple(rng.integers(-1, 2, 2)), axis=(0, 1)) * (rng.random() < 0.9)
        pred[i] = instances_to_pannuke(moved, rng.integers(0, 5, labels.max(initial=0)))
    tissues = ["Lung", "Colon", "Skin"] * 4
    got = pannuke_metrics(true, pred, tissues)
    expected = ref.pannuke_run(true, pred, tissues)
    assert got["bpq"] == pytest.approx(expected["bpq"], rel=1e-12)
    assert got["mpq"] == pytest.approx(expected["mpq"], rel=1e-12)
    np.testing.assert_allclose(list(got["per_class"].values()), expected["per_class"], rtol=1e-12)


def ref_blobs(rng, size=40, count=12):
    labels = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(1, count + 1):
        y, x = rng.uniform(0, size, 2)
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= rng.uniform(2, 6) ** 2] = i
    return labels


def test_image_scores_match_get_fast_pq_per_class():
    rng = np.random.default_rng(7)
    true, pred = random_masks(rng, 10, covered=True)
    for t, p in zip(true, pred, strict=True):
        bpq, class_pq = image_scores(t, p)
        tb = ref.binarize(t[..., :5])
        if tb.any():
            assert bpq == pytest.approx(ref.get_fast_pq(tb, ref.binarize(p[..., :5]))[2], rel=1e-12)
        for c in range(5):
            if t[..., c].any():
                assert class_pq[c] == pytest.approx(ref.get_fast_pq(t[..., c], p[..., c])[2], rel=1e-12)
            else:
                assert np.isnan(class_pq[c])


def test_combine_channels_is_binarize():
    rng = np.random.default_rng(3)
    true, _ = random_masks(rng, 8, covered=True)
    for t in true:
        np.testing.assert_array_equal(combine_channels(t), ref.binarize(t[..., :5]))
    m = np.zeros((8, 8, 6))
    square(m, 0, 3.0, 0, 0)
    square(m, 1, 3.0, 4, 4)  # the same id in another channel is another nucleus
    square(m, 2, 900.0, 2, 2)  # overlaps both; channel 2 comes later and wins
    out = combine_channels(m)
    assert out.dtype == np.int32 and len(np.unique(out)) == 4
    assert out[0, 0] == 1 and out[7, 7] == 2 and out[3, 3] == out[5, 5] == out[2, 2] == 3


def test_a_covered_nucleus_leaves_a_gap_that_is_not_counted():
    true = np.zeros((12, 12, 6))
    square(true, 0, 5, 1, 1, 3)  # id 1 after binarize, hidden entirely by...
    square(true, 1, 5, 0, 0, 6)  # ... this one, id 2: the pooled truth holds one nucleus
    pred = np.zeros_like(true)
    square(pred, 1, 1, 0, 0, 6)
    bpq, class_pq = image_scores(true, pred)
    assert bpq == pytest.approx(1 / (1 + 1e-6))  # one nucleus, found exactly (not a missed id 1)
    assert class_pq[0] == 0.0 and class_pq[1] == pytest.approx(1 / (1 + 1e-6))


def test_hand_worked_protocol():
    true = np.zeros((4, 16, 16, 6))
    pred = np.zeros((4, 16, 16, 6))
    # Image 0 (Breast): one neoplastic nucleus found exactly, one inflammatory missed.
    square(true[0], 0, 1, 0, 0)
    square(pred[0], 0, 1, 0, 0)
    square(true[0], 1, 2, 8, 8)
    # Image 1 (Breast): no nuclei at all, a false positive: left out of every mean.
    square(pred[1], 0, 1, 0, 0)
    # Image 2 (Colon): one neoplastic nucleus found exactly.
    square(true[2], 0, 5, 4, 4)
    square(pred[2], 0, 9, 4, 4)
    # Image 3 (Colon): one connective nucleus found, but called inflammatory: bPQ 1, class PQ 0.
    square(true[3], 2, 1, 4, 4)
    square(pred[3], 1, 1, 4, 4)
    result = pannuke_metrics(true, pred, ["Breast", "Breast", "Colon", "Colon"])
    sq = 1 / (1 + 1e-6)
    # Image 0: bPQ = DQ 1/(1 + 0.5) * SQ 1; class PQs: neoplastic 1, inflammatory 0 -> mPQ 0.5.
    assert result["per_tissue"]["Breast"]["bpq"] == pytest.approx(sq / 1.5)
    assert result["per_tissue"]["Breast"]["mpq"] == pytest.approx(sq / 2)
    assert result["per_tissue"]["Colon"]["bpq"] == pytest.approx(sq)
    assert result["per_tissue"]["Colon"]["mpq"] == pytest.approx(sq / 2)  # images 2 and 3: 1 and 0
    assert result["bpq"] == pytest.approx((sq / 1.5 + sq) / 2)
    assert result["mpq"] == pytest.approx((sq / 2 + sq / 2) / 2)
    assert result["per_class"]["neoplastic"] == pytest.approx(sq)
    assert result["per_class"]["inflammatory"] == 0.0
    assert result["per_class"]["connective"] == 0.0
    assert np.isnan(result["per_class"]["dead"])
    assert result["bpq_image_mean"] == pytest.approx((sq / 1.5 + sq + sq) / 3)
    assert np.isnan(result["per_image"]["bpq"][1]) and np.isnan(result["per_image"]["mpq"][1])
    assert list(result["per_tissue"]) == ["Breast", "Colon"]  # PanNuke's tissue order
    assert result["per_tissue"]["Breast"]["images"] == 2


def test_neoplastic_only_setting():
    rng = np.random.default_rng(11)
    true, pred = random_masks(rng, 12)
    pred_neo = np.zeros_like(pred)
    pred_neo[..., 0] = pred[..., :5].max(-1)  # a binary model: every nucleus in channel 0
    tissues = ["Lung"] * 6 + ["Skin"] * 6
    result = pannuke_metrics(true, pred_neo, tissues, classes=("neoplastic",))
    per_image = [
        panoptic_quality(t[..., 0], p[..., 0]).pq if t[..., 0].any() else np.nan
        for t, p in zip(true, pred_neo, strict=True)
    ]
    np.testing.assert_allclose(result["per_image"]["bpq"], per_image, rtol=1e-12)
    np.testing.assert_allclose(result["per_image"]["mpq"], per_image, rtol=1e-12)
    assert list(result["per_class"]) == ["neoplastic"]
    expected = np.nanmean([np.nanmean(per_image[:6]), np.nanmean(per_image[6:])])
    assert result["bpq"] == pytest.approx(expected, rel=1e-12)
    # Scored against all five classes instead, the other nuclei count as missed.
    assert pannuke_metrics(true, pred_neo, tissues)["bpq"] <= result["bpq"] + 1e-12


def test_pannuke_instance_round_trip():
    rng = np.random.default_rng(5)
    true, _ = random_masks(rng, 6, covered=True)
    for t in true:
        labels, classes = pannuke_to_instances(t)
        assert labels.dtype == np.int32 and classes.dtype == np.int32
        assert labels.max() == len(classes)
        back = instances_to_pannuke(labels, classes)
        assert back.shape == t.shape and back.dtype == np.float64
        np.testing.assert_array_equal(back[..., 5], labels == 0)
        again, again_classes = pannuke_to_instances(back)
        np.testing.assert_array_equal(again, labels)
        np.testing.assert_array_equal(again_classes, classes)
        # Same nuclei, same classes: a perfect score.
        bpq, class_pq = image_scores(t, back)
        assert bpq == pytest.approx(1 / (1 + 1e-6))
    labels = np.array([[0, 1], [2, 2]])
    out = instances_to_pannuke(labels, [3, 0])
    assert out[0, 1, 3] == 1 and out[1, 0, 0] == 2 and out[0, 0, 5] == 1 and out[..., :5].sum() == 5
    with pytest.raises(ValueError, match="only 1 classes"):
        instances_to_pannuke(labels, [0])
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 5\)"):
        instances_to_pannuke(labels, [0, 5])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="equal size"):
        pannuke_metrics(np.zeros((2, 8, 8, 6)), np.zeros((2, 8, 9, 6)), ["Lung", "Lung"])
    with pytest.raises(ValueError, match="tissue types"):
        pannuke_metrics(np.zeros((2, 8, 8, 6)), np.zeros((2, 8, 8, 6)), ["Lung"])
    with pytest.raises(ValueError, match="pred channel 0 must hold whole-number"):
        pannuke_metrics(np.ones((1, 8, 8, 6)), np.full((1, 8, 8, 6), 0.5), ["Lung"])
    with pytest.raises(ValueError, match="true channel 0 must hold ids >= 0"):
        pannuke_metrics(-np.ones((1, 8, 8, 6)), np.zeros((1, 8, 8, 6)), ["Lung"])
    with pytest.raises(ValueError, match=r"got shape \(8, 8, 3\)"):
        image_scores(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="classes must be a non-empty subset"):
        pannuke_metrics(np.zeros((1, 8, 8, 6)), np.zeros((1, 8, 8, 6)), ["Lung"], classes=("tumour",))


def test_progress_bar_and_memmap(tmp_path):
    rng = np.random.default_rng(2)
    true, pred = random_masks(rng, 5)
    np.save(tmp_path / "t.npy", true)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    a = pannuke_metrics(mm, pred, ["Lung"] * 5, progress=True)
    b = pannuke_metrics(true, pred, np.array(["Lung"] * 5))
    assert a["bpq"] == b["bpq"] and a["mpq"] == b["mpq"]


def test_report_files(tmp_path):
    rng = np.random.default_rng(1)
    true, pred = random_masks(rng, 6)
    tissues = ["Kidney", "Breast", "Kidney", "Breast", "Adrenal_gland", "Kidney"]
    result = pannuke_metrics(true, pred, tissues)
    references = {"PanNuke Mask R-CNN": {"Kidney": 0.5, "mean": 0.6}}
    paths = write_report(result, str(tmp_path), title="test", extra={"mAP@0.5": 0.25}, references=references)
    text = open(paths["markdown"]).read()
    assert "| tissue | images | bPQ | mPQ | bPQ PanNuke Mask R-CNN |" in text
    assert text.index("Adrenal_gland") < text.index("Breast") < text.index("Kidney")
    assert f"| Kidney | 3 | {result['per_tissue']['Kidney']['bpq']:.4f} |" in text
    assert "| **mean over tissues** | **6** |" in text and "- mAP@0.5: 0.2500" in text
    rows = open(paths["csv"]).read().splitlines()
    assert rows[0] == "tissue,images,bpq,mpq,bpq_pannuke_mask_r-cnn" and rows[-1].startswith("mean,6,")
    data = json.load(open(paths["json"]))
    assert data["bpq"] == pytest.approx(result["bpq"]) and data["extra"] == {"mAP@0.5": 0.25}
    assert all(v is None or 0 <= v <= 1 for v in data["per_class"].values())  # NaN written as null
    binary = pannuke_metrics(true, pred, tissues, classes=("neoplastic",))
    assert "| mPQ |" not in tissue_table(binary)  # one class: bPQ only, as the seed paper's table
    assert tissue_table(result).count("\n") > 10 and set(result["per_tissue"]) <= set(PANNUKE_TISSUES)


def test_references_csv_round_trip_and_errors(tmp_path):
    from maskrcnn.evaluation import read_references

    path = tmp_path / "refs.csv"
    path.write_text("tissue,PanNuke Mask R-CNN,seed paper\nKidney,0.5,\nmean,0.6,0.65\n")
    refs = read_references(str(path))
    assert refs == {"PanNuke Mask R-CNN": {"Kidney": 0.5, "mean": 0.6}, "seed paper": {"mean": 0.65}}
    rng = np.random.default_rng(1)
    true, pred = random_masks(rng, 2)
    text = tissue_table(pannuke_metrics(true, pred, ["Kidney", "Lung"]), references=refs)
    assert "| bPQ PanNuke Mask R-CNN | bPQ seed paper |" in text and "| 0.5000 | - |" in text
    path.write_text("tissue,x\nKidney,high\n")
    with pytest.raises(ValueError, match="line 2, column 'x': 'high' is not a number"):
        read_references(str(path))
    path.write_text("organ,x\nKidney,0.5\n")
    with pytest.raises(ValueError, match="first column is 'tissue'"):
        read_references(str(path))


def test_overlay_pictures(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    true, pred = random_masks(rng, 3)
    trues = [combine_channels(t) for t in true]
    preds = [combine_channels(p) for p in pred]
    paths = save_overlays(images, trues, preds, str(tmp_path), captions=["a", "b", "c"], limit=2)
    assert len(paths) == 2
    picture = np.asarray(Image.open(paths[0]))
    assert picture.shape == (32 + 14, 4 * 32 + 6, 3)
    np.testing.assert_array_equal(picture[14:, :32], images[0])  # the first panel is the plain image
    assert (picture[14:, 34:66] != images[0]).any() or not trues[0].any()
