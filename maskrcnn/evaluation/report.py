"""Report writers: the per-tissue table (Markdown and CSV) and overlay pictures."""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from maskrcnn.config import PANNUKE_CLASSES


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def tissue_table(metrics: dict, *, title: str = "", extra: dict | None = None) -> str:
    """Markdown table of :func:`pannuke_metrics` output: one row per tissue, then the mean over tissues.

    ``extra`` adds lines under the table (e.g. ``{"mAP@0.5": 0.71}``).
    """
    lines = [f"## {title}", ""] if title else []
    lines += ["| tissue | images | bPQ | mPQ |", "|---|---:|---:|---:|"]
    for tissue, row in metrics["per_tissue"].items():
        lines.append(f"| {tissue} | {row['images']} | {_fmt(row['bpq'])} | {_fmt(row['mpq'])} |")
    images = sum(row["images"] for row in metrics["per_tissue"].values())
    lines.append(
        f"| **mean over tissues** | {images} | **{_fmt(metrics['bpq'])}** | **{_fmt(metrics['mpq'])}** |"
    )
    lines += ["", "| class | PQ |", "|---|---:|"]
    lines += [f"| {name} | {_fmt(metrics['per_class'][name])} |" for name in PANNUKE_CLASSES]
    image_mean = _fmt(metrics["bpq_image_mean"])
    lines += ["", f"bPQ averaged over images instead of tissues (the seed paper's way): {image_mean}"]
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {_fmt(value) if isinstance(value, float) else value}")
    return "\n".join(lines) + "\n"


def write_report(metrics: dict, out_dir: str, *, title: str = "", extra: dict | None = None) -> dict:
    """Writes ``report.md`` and ``tissues.csv`` into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, "report.md"), "csv": os.path.join(out_dir, "tissues.csv")}
    with open(paths["markdown"], "w") as f:
        f.write(tissue_table(metrics, title=title, extra=extra))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tissue", "images", "bpq", "mpq"])
        for tissue, row in metrics["per_tissue"].items():
            writer.writerow([tissue, row["images"], row["bpq"], row["mpq"]])
        writer.writerow(
            ["mean", sum(r["images"] for r in metrics["per_tissue"].values()), metrics["bpq"], metrics["mpq"]]
        )
    return paths


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Bool (H, W): pixels of an instance whose 4-neighbour has another label (or is outside)."""
    padded = np.pad(labels, 1, mode="constant")
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]] != centre
    return differs & (labels > 0)


def overlay(image: np.ndarray, true: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image with true outlines in green and predicted outlines in yellow."""
    out = np.asarray(image)[..., :3].astype(np.uint8).copy()
    if true is not None:
        out[boundaries(true)] = (0, 200, 0)
    out[boundaries(pred)] = (255, 220, 0)
    return out


def save_overlays(images, trues, preds, out_dir: str, names=None, *, limit: int | None = 16) -> list[str]:
    """Writes ``overlay_<name>.png`` side by side with the plain image for the first ``limit`` images."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, (image, true, pred) in enumerate(zip(images, trues, preds, strict=True)):
        if limit is not None and i >= limit:
            break
        name = names[i] if names is not None else f"{i:04d}"
        picture = np.concatenate(
            [np.asarray(image)[..., :3].astype(np.uint8), overlay(image, true, pred)], axis=1
        )
        path = os.path.join(out_dir, f"overlay_{name}.png")
        Image.fromarray(picture).save(path)
        paths.append(path)
    return paths
