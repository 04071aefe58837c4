"""Report writers: the per-tissue table (Markdown, CSV, JSON) and overlay pictures (numpy + PIL).

The table follows the seed paper's Table 2: one row per tissue with its bPQ (and mPQ when the model has
all five classes), then the mean over tissues (the PanNuke protocol) and, on its own line, bPQ averaged
over images (the seed paper's way). Reference figures for each tissue (the PanNuke paper's Mask R-CNN,
the seed paper) can be set beside ours through ``references``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

MEAN_ROW = "mean over tissues"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float | np.floating) else str(value)


def _rows(metrics: dict, references: Mapping[str, Mapping[str, float]] | None) -> tuple[list, list]:
    """Header and rows (tissues, then the mean) shared by the Markdown and CSV writers."""
    with_mpq = len(metrics["per_class"]) > 1
    references = references or {}
    header = ["tissue", "images", "bPQ"] + (["mPQ"] if with_mpq else []) + [f"bPQ {k}" for k in references]
    rows = []
    for tissue, row in metrics["per_tissue"].items():
        values = [tissue, row["images"], row["bpq"]] + ([row["mpq"]] if with_mpq else [])
        rows.append(values + [ref.get(tissue, float("nan")) for ref in references.values()])
    images = sum(row["images"] for row in metrics["per_tissue"].values())
    mean = [MEAN_ROW, images, metrics["bpq"]] + ([metrics["mpq"]] if with_mpq else [])
    rows.append(mean + [ref.get("mean", float("nan")) for ref in references.values()])
    return header, rows


def tissue_table(
    metrics: dict,
    *,
    title: str = "",
    extra: Mapping[str, object] | None = None,
    references: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """Markdown report of :func:`pannuke_metrics` output.

    Args:
      metrics: the dict returned by ``pannuke_metrics``.
      title: a heading.
      extra: lines added under the table, e.g. ``{"mAP@0.5 (mean over images)": 0.71}``.
      references: column name -> {tissue: bPQ, "mean": bPQ}, figures of other work set beside ours.

    Returns:
      the Markdown text.
    """
    header, rows = _rows(metrics, references)
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        cells = [_fmt(v) for v in row]
        if row[0] == MEAN_ROW:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "bPQ and mPQ: per image, then the mean per tissue, then the mean over tissues (the PanNuke protocol;",
        "images without nuclei of a class are left out of that class).",
        "bPQ averaged over images instead of tissues (the seed paper's way): "
        + _fmt(metrics["bpq_image_mean"]),
    ]
    if len(metrics["per_class"]) > 1:
        lines += ["", "| class | PQ |", "|---|---:|"]
        lines += [f"| {name} | {_fmt(pq)} |" for name, pq in metrics["per_class"].items()]
    if extra:
        lines.append("")
        lines += [f"- {key}: {_fmt(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def read_references(path: str) -> dict[str, dict[str, float]]:
    """Published figures to set beside ours, from a CSV file: a ``tissue`` column, then one column per
    source (its header names it), one row per tissue and optionally a ``mean`` row; empty cells are
    left out. Returns column -> {tissue: bPQ}, the ``references`` of :func:`write_report`.

    Raises:
      ValueError naming the file and the cell that is not a number, or a missing ``tissue`` column.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "tissue" not in rows[0]:
        raise ValueError(f"{path}: expected a CSV file whose first column is 'tissue', then one per source")
    out: dict[str, dict[str, float]] = {name: {} for name in rows[0] if name != "tissue"}
    for line, row in enumerate(rows, start=2):
        for name in out:
            cell = (row.get(name) or "").strip()
            if not cell:
                continue
            try:
                out[name][row["tissue"].strip()] = float(cell)
            except ValueError:
                raise ValueError(f"{path}, line {line}, column {name!r}: {cell!r} is not a number") from None
    return out


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


def write_report(
    metrics: dict,
    out_dir: str,
    *,
    title: str = "",
    extra: Mapping[str, object] | None = None,
    references: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, str]:
    """Writes ``report.md``, ``tissues.csv`` and ``metrics.json`` (NaN as null) into ``out_dir``.

    Arguments as :func:`tissue_table`. Returns {"markdown", "csv", "json"} -> path.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, file) for name, file in
             (("markdown", "report.md"), ("csv", "tissues.csv"), ("json", "metrics.json"))}  # fmt: skip
    with open(paths["markdown"], "w") as f:
        f.write(tissue_table(metrics, title=title, extra=extra, references=references))
    header, rows = _rows(metrics, references)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([h.lower().replace(" ", "_") for h in header])
        writer.writerows([["mean" if r[0] == MEAN_ROW else r[0], *r[1:]] for r in rows])
    with open(paths["json"], "w") as f:
        json.dump(_jsonable({"title": title, **metrics, "extra": dict(extra or {})}), f, indent=1)
    return paths


# --- pictures -------------------------------------------------------------------------------------------


def boundaries(labels) -> np.ndarray:
    """Bool (H, W): instance pixels of an integer (H, W) label map with another label as 4-neighbour."""
    labels = np.asarray(labels)
    padded = np.pad(labels, 1, mode="constant")
    h, w = labels.shape
    differs = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy : dy + h, dx : dx + w] != labels
    return differs & (labels > 0)


# Paul Tol's "bright" and "vibrant" qualitative colours: distinct, and readable on H&E pink and purple.
_PALETTE = np.array(
    [(68, 119, 170), (102, 204, 238), (34, 136, 51), (204, 187, 68), (238, 102, 119), (170, 51, 119),
     (0, 119, 187), (51, 187, 238), (0, 153, 136), (238, 119, 51), (204, 51, 17), (238, 51, 119)],
    np.uint8,
)  # fmt: skip


def instance_colours(labels) -> np.ndarray:
    """uint8 (H, W, 3): a palette colour per instance id of an integer (H, W) map (a fixed hash of the id)."""
    ids = np.asarray(labels).astype(np.uint64)
    return _PALETTE[(ids * np.uint64(2654435761) >> np.uint64(8)) % np.uint64(len(_PALETTE))]


def paint_instances(image, labels, *, alpha: float = 0.45, outline=None) -> np.ndarray:
    """The image with each instance as a coloured alpha mask and its outline (the seed paper's Fig. 5).

    Args:
      image: (H, W, 3) uint8 RGB (or float 0-255); labels: integer (H, W) instance label map.
      alpha: opacity of the fill; outline: RGB of all outlines, or None for each instance's own colour.

    Returns:
      uint8 (H, W, 3).
    """
    image = np.asarray(image)[..., :3].astype(np.float64)
    labels = np.asarray(labels)
    colours = instance_colours(labels).astype(np.float64)
    inside = (labels > 0)[..., None]
    out = np.where(inside, (1 - alpha) * image + alpha * colours, image)
    edge = boundaries(labels)
    out[edge] = colours[edge] if outline is None else outline
    return np.clip(out, 0, 255).astype(np.uint8)


def overlay(image, true, pred) -> np.ndarray:
    """uint8 (H, W, 3): the image with true outlines in green and predicted outlines in yellow."""
    out = np.asarray(image)[..., :3].astype(np.uint8).copy()
    if true is not None:
        out[boundaries(true)] = (0, 200, 0)
    out[boundaries(pred)] = (255, 220, 0)
    return out


def comparison_picture(image, true, pred, caption: str = "") -> np.ndarray:
    """uint8 (H + 14, 4 W + 6, 3): image | ground truth | prediction | both outlines, captioned.

    The ground truth and prediction panels show instances as coloured alpha masks with outlines; the last
    panel draws true outlines in green and predicted ones in yellow. ``true`` may be None.
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image)[..., :3].astype(np.uint8)
    blank = np.zeros_like(image)
    panels = [
        image,
        paint_instances(image, true) if true is not None else blank,
        paint_instances(image, pred),
        overlay(image, true, pred),
    ]
    gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    picture = Image.fromarray(np.concatenate([np.full((14, row.shape[1], 3), 255, np.uint8), row]))
    draw = ImageDraw.Draw(picture)
    width = image.shape[1] + 2
    for k, name in enumerate(("image", "ground truth", "prediction", "green: truth, yellow: prediction")):
        draw.text((k * width + 2, 1), name if k or not caption else f"{name}  {caption}", fill=(0, 0, 0))
    return np.asarray(picture)


def save_overlays(
    images, trues, preds, out_dir: str, names: Sequence[str] | None = None, *,
    captions: Sequence[str] | None = None, limit: int | None = 16,
) -> list[str]:  # fmt: skip
    """Writes ``overlay_<name>.png`` (:func:`comparison_picture`) for the first ``limit`` images.

    Args:
      images: (N, H, W, 3) uint8; trues, preds: (N, H, W) integer instance label maps (trues may be None).
      names: file name parts (default 0000, 0001, ...); captions: text set above each picture.

    Returns:
      the paths written.
    """
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    count = len(images) if limit is None else min(limit, len(images))
    paths = []
    for i in range(count):
        true = None if trues is None else trues[i]
        caption = captions[i] if captions is not None else ""
        name = names[i] if names is not None else f"{i:04d}"
        path = os.path.join(out_dir, f"overlay_{name}.png")
        Image.fromarray(comparison_picture(images[i], true, preds[i], caption)).save(path)
        paths.append(path)
    return paths
