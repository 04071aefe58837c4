"""Speed of our PQ against the published loop algorithm (get_fast_pq), and of the whole PanNuke protocol.

    make bench-evaluation        # writes experiments/results/evaluation.md

Inputs: 256x256 label maps with about 120 nuclei (PanNuke's size and a dense patch), the prediction a
shifted copy with some nuclei missing and some added. The reference is get_fast_pq's algorithm as
published (per-instance masks, a loop over true instances); both give the same numbers (checked here
and in tests/evaluation).
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np

from maskrcnn.evaluation import pannuke_metrics, panoptic_quality

RESULTS = os.path.join(os.path.dirname(__file__), "results", "evaluation.md")


def loop_fast_pq(true, pred, match_iou=0.5):
    """get_fast_pq's algorithm (HoVer-Net / PanNuke-metrics), for ids already contiguous."""
    true_ids, pred_ids = list(np.unique(true))[1:], list(np.unique(pred))[1:]
    true_masks = {t: (true == t).astype(np.uint8) for t in true_ids}
    pred_masks = {p: (pred == p).astype(np.uint8) for p in pred_ids}
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for ti, t in enumerate(true_ids):
        t_mask = true_masks[t]
        for p in np.unique(pred[t_mask > 0]):
            if p == 0:
                continue
            p_mask = pred_masks[p]
            total, inter = (t_mask + p_mask).sum(), (t_mask * p_mask).sum()
            iou[ti, pred_ids.index(p)] = inter / (total - inter)
    paired = iou[iou > match_iou]
    tp, fp, fn = len(paired), len(pred_ids) - len(paired), len(true_ids) - len(paired)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return dq * paired.sum() / (tp + 1e-6)


def dense_maps(rng, size=256, count=120):
    true = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(count):
        y, x = rng.uniform(0, size, 2)
        r = rng.uniform(4, 9)
        true[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k + 1
    pred = np.roll(true, (1, 2), axis=(0, 1))
    pred[np.isin(pred, rng.choice(count, count // 10))] = 0
    true = np.unique(true, return_inverse=True)[1].reshape(true.shape).astype(np.int32)  # contiguous ids
    pred = np.unique(pred, return_inverse=True)[1].reshape(pred.shape).astype(np.int32)
    return true, pred


def median(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    rng = np.random.default_rng(0)
    pairs = [dense_maps(rng) for _ in range(10)]
    for t, p in pairs:
        assert abs(panoptic_quality(t, p).pq - loop_fast_pq(t, p)) < 1e-12
    ours = median(lambda: [panoptic_quality(t, p) for t, p in pairs], 5) / len(pairs)
    ref = median(lambda: [loop_fast_pq(t, p) for t, p in pairs], 3) / len(pairs)

    n = 200
    true = np.zeros((n, 256, 256, 6), np.float64)
    pred = np.zeros_like(true)
    for i in range(n):
        t, p = pairs[i % len(pairs)]
        c = i % 5
        true[i, ..., c], pred[i, ..., c] = t, p
    tissues = [f"tissue{i % 19}" for i in range(n)]
    protocol = median(lambda: pannuke_metrics(true, pred, tissues), 1)

    lines = [
        "# Evaluation speed",
        "",
        "Made by `make bench-evaluation` (`python experiments/bench_evaluation.py`), "
        f"{time.strftime('%Y-%m-%d')}, on {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"numpy {np.__version__}.",
        "",
        "| what | ours | reference | reference / ours |",
        "|---|---:|---:|---:|",
        f"| PQ of one 256x256 image, ~120 nuclei (median of 10 images) | {ours * 1e3:.1f} ms "
        f"| {ref * 1e3:.1f} ms | {ref / ours:.0f}x |",
        f"| PanNuke protocol (bPQ, mPQ, per tissue, per class), {n} images | {protocol:.2f} s | - | - |",
        "",
        "The reference is get_fast_pq's published algorithm (a loop over true instances with full-size",
        "masks);",
        "both give the same PQ to 1e-12 on every image here.",
    ]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
