import numpy as np
import pytest

from maskrcnn.evaluation import (
    combine_channels,
    pannuke_metrics,
    panoptic_quality,
    tissue_table,
    write_report,
)


def square(mask, channel, ident, y, x, side=4):
    mask[y : y + side, x : x + side, channel] = ident


def reference_protocol(true, pred, tissues):
    """PanNuke-metrics run.py, looping as it does (with NaN where it means NaN)."""

    def binarize(x):
        out = np.zeros(x.shape[:2])
        count = 1
        for c in range(5):
            for j in sorted(set(np.unique(x[..., c])) - {0}):
                sel = x[..., c] == j
                out *= 1 - sel
                out += count * sel
                count += 1
        return out.astype(np.int32)

    b_all, m_all = [], []
    for i in range(len(true)):
        tb = binarize(true[i])
        b_all.append(np.nan if len(np.unique(tb)) == 1 else panoptic_quality(tb, binarize(pred[i])).pq)
        row = []
        for c in range(5):
            t = true[i, ..., c].astype(np.int32)
            row.append(
                np.nan if len(np.unique(t)) == 1 else panoptic_quality(t, pred[i, ..., c].astype(np.int32)).pq
            )
        m_all.append(row)
    m_img = [np.nanmean(r) if not np.all(np.isnan(r)) else np.nan for r in m_all]
    per_t_b, per_t_m = [], []
    for t in dict.fromkeys(tissues):
        idx = [i for i, x in enumerate(tissues) if x == t]
        vals_b = [b_all[i] for i in idx if not np.isnan(b_all[i])]
        vals_m = [m_img[i] for i in idx if not np.isnan(m_img[i])]
        per_t_b.append(np.mean(vals_b) if vals_b else np.nan)
        per_t_m.append(np.mean(vals_m) if vals_m else np.nan)
    return np.nanmean(per_t_b), np.nanmean(per_t_m)


def test_combine_channels_keeps_same_ids_apart_and_later_channels_win():
    m = np.zeros((8, 8, 6))
    square(m, 0, 3.0, 0, 0)
    square(m, 1, 3.0, 4, 4)  # the same id in another channel is another nucleus
    square(m, 2, 900.0, 2, 2)  # overlaps both; channel 2 comes later and wins
    out = combine_channels(m)
    assert out.dtype == np.int32
    assert len(np.unique(out)) == 4
    assert out[0, 0] != out[7, 7]
    assert out[3, 3] == out[5, 5] == out[2, 2]


def test_hand_worked_protocol():
    true = np.zeros((3, 16, 16, 6))
    pred = np.zeros((3, 16, 16, 6))
    # Image 0 (Breast): one neoplastic nucleus found exactly, one inflammatory missed.
    square(true[0], 0, 1, 0, 0)
    square(pred[0], 0, 1, 0, 0)
    square(true[0], 1, 2, 8, 8)
    # Image 1 (Breast): no nuclei at all, a false positive: left out of every mean.
    square(pred[1], 0, 1, 0, 0)
    # Image 2 (Colon): one neoplastic nucleus found exactly.
    square(true[2], 0, 5, 4, 4)
    square(pred[2], 0, 9, 4, 4)
    result = pannuke_metrics(true, pred, ["Breast", "Breast", "Colon"])
    sq = 1 / (1 + 1e-6)
    # Image 0: bPQ = DQ 1/(1 + 0.5) * SQ 1; class PQs: neoplastic 1, inflammatory 0 -> mPQ 0.5.
    assert result["per_tissue"]["Breast"]["bpq"] == pytest.approx(sq / 1.5)
    assert result["per_tissue"]["Breast"]["mpq"] == pytest.approx(sq / 2)
    assert result["per_tissue"]["Colon"]["bpq"] == pytest.approx(sq)
    assert result["bpq"] == pytest.approx((sq / 1.5 + sq) / 2)
    assert result["mpq"] == pytest.approx((sq / 2 + sq) / 2)
    assert result["per_class"]["neoplastic"] == pytest.approx(sq)
    assert result["per_class"]["inflammatory"] == 0.0
    assert np.isnan(result["per_class"]["dead"])
    assert result["bpq_image_mean"] == pytest.approx((sq / 1.5 + sq) / 2)
    assert np.isnan(result["per_image"]["bpq"][1])
    assert list(result["per_tissue"]) == ["Breast", "Colon"]  # PanNuke's tissue order


def test_matches_the_reference_loop_on_random_masks():
    rng = np.random.default_rng(0)
    n = 6
    true = np.zeros((n, 32, 32, 6))
    pred = np.zeros((n, 32, 32, 6))
    for i in range(n):
        for k in range(rng.integers(0, 7)):
            c, y, x = rng.integers(0, 5), *rng.integers(0, 26, 2)
            square(true[i], c, k + 1 + 300 * c, y, x, side=rng.integers(3, 7))
            if rng.random() < 0.7:
                dy, dx = rng.integers(-1, 2, 2)
                pc = c if rng.random() < 0.8 else (c + 1) % 5
                square(pred[i], pc, k + 1, max(y + dy, 0), max(x + dx, 0), side=rng.integers(3, 7))
    tissues = ["Lung", "Skin", "Lung", "Colon", "Skin", "Lung"]
    result = pannuke_metrics(true, pred, tissues)
    b, m = reference_protocol(true, pred, tissues)
    assert result["bpq"] == pytest.approx(b, rel=1e-12)
    assert result["mpq"] == pytest.approx(m, rel=1e-12)


def test_report_files(tmp_path):
    true = np.zeros((1, 8, 8, 6))
    square(true[0], 0, 1, 0, 0)
    result = pannuke_metrics(true, true, ["Kidney"])
    paths = write_report(result, str(tmp_path), title="test", extra={"mAP@0.5": 1.0})
    text = open(paths["markdown"]).read()
    assert "| Kidney | 1 |" in text and "mAP@0.5: 1.0000" in text
    assert open(paths["csv"]).read().splitlines()[0] == "tissue,images,bpq,mpq"
    assert tissue_table(result).count("\n") > 5


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="equal size"):
        pannuke_metrics(np.zeros((2, 8, 8, 6)), np.zeros((2, 8, 9, 6)), ["Lung", "Lung"])
    with pytest.raises(ValueError, match="tissue types"):
        pannuke_metrics(np.zeros((2, 8, 8, 6)), np.zeros((2, 8, 8, 6)), ["Lung"])
