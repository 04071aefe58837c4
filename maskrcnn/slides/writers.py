"""A slide's outputs, streamed as nuclei come and made complete atomically.

Everything is written into ``<out>/.<name>.partial/`` and moved to ``<out>/`` when the slide is done,
``<name>_summary.json`` last: a slide whose summary exists is finished (``--resume`` skips it), and a
slide killed half-way leaves only the ``.partial`` folder, which the next run removes.

- ``<name>.geojson``: a FeatureCollection QuPath imports (File > Import objects), one Feature per nucleus:
  a Polygon of its outline in level-0 pixels (x, y), ``properties.objectType`` "detection",
  ``classification`` {name, color} and ``measurements`` {score, area_um2}.
- ``<name>_nuclei.csv``: id, class, score, centroid_x, centroid_y, area_px, area_um2, y1, x1, y2, x2, in
  level-0 pixels on pixel edges (pixel (0, 0) spans [0, 1); QuPath's coordinates).
- ``<name>_thumbnail.png``: the slide's low-resolution image with the nuclei drawn in their class colour.
- ``<name>_summary.json``: tiles read and skipped, nuclei per class, seconds, tiles per second, ...
- ``<name>_labels.zarr`` (``labels=True``): the level-0 instance label map, int32, chunked and compressed,
  with coarser levels (each half the last) as OME-Zarr multiscales.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid

import numpy as np

from maskrcnn.slides.stitch import Nucleus, outline

# Colours per PanNuke class (QuPath's classification colour, RGB), then for further classes.
CLASS_COLORS = ((255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 220, 0), (255, 128, 0), (200, 0, 200))
CSV_FIELDS = (
    "id",
    "class",
    "score",
    "centroid_x",
    "centroid_y",
    "area_px",
    "area_um2",
    "y1",
    "x1",
    "y2",
    "x2",
)
LABEL_CHUNK = 512
_NAMESPACE = uuid.UUID("6f1c2b1e-7d0c-4a51-9a59-5d2f0c7e3b10")  # feature ids: uuid5(slide name, nucleus id)


def output_paths(out_dir: str, name: str) -> dict[str, str]:
    """The final path of each output of slide ``name``."""
    return {
        "geojson": os.path.join(out_dir, f"{name}.geojson"),
        "csv": os.path.join(out_dir, f"{name}_nuclei.csv"),
        "thumbnail": os.path.join(out_dir, f"{name}_thumbnail.png"),
        "labels": os.path.join(out_dir, f"{name}_labels.zarr"),
        "summary": os.path.join(out_dir, f"{name}_summary.json"),
    }


def is_finished(out_dir: str, name: str) -> bool:
    return os.path.exists(output_paths(out_dir, name)["summary"])


def _num(value: float, digits: int = 2):
    value = round(float(value), digits)
    return int(value) if value.is_integer() else value


class SlideWriter:
    """Streams nuclei of one slide to its outputs.

    Args:
      out_dir, name: outputs go to ``out_dir/<name>*``.
      scale: level-0 pixels per model pixel; nuclei come in model pixels.
      model_mpp: microns per model pixel (for areas in um^2).
      class_names: names of classes 1..K.
      thumbnail: uint8 (h, w, 3) the slide at ``thumbnail_downsample`` level-0 pixels per pixel.
      labels_size: (height, width) of level 0 to write the label map, or None.
    """

    def __init__(
        self,
        out_dir: str,
        name: str,
        *,
        scale: float,
        model_mpp: float,
        class_names,
        thumbnail: np.ndarray,
        thumbnail_downsample: float,
        labels_size: tuple[int, int] | None = None,
    ):
        from PIL import Image, ImageDraw

        self.out_dir, self.name = out_dir, name
        self.scale, self.model_mpp = scale, model_mpp
        self.class_names = tuple(class_names)
        self.temp = os.path.join(out_dir, f".{name}.partial")
        shutil.rmtree(self.temp, ignore_errors=True)
        os.makedirs(self.temp)
        self._paths = {
            k: os.path.join(self.temp, os.path.basename(p)) for k, p in output_paths(out_dir, name).items()
        }
        self._geojson = open(self._paths["geojson"], "w")
        self._geojson.write('{"type": "FeatureCollection", "features": [\n')
        self._csv_file = open(self._paths["csv"], "w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(CSV_FIELDS)
        self.count = 0
        self.per_class: dict[str, int] = {}
        self._picture = Image.fromarray(thumbnail)
        self._draw = ImageDraw.Draw(self._picture)
        self._thumbnail_downsample = thumbnail_downsample
        self._labels = None
        self._painted: set[tuple[int, int]] = set()  # level-0 chunks (row, column) holding nuclei
        if labels_size is not None:
            try:
                import zarr
            except ImportError:
                raise ValueError("--labels writes zarr: pip install 'maskrcnn-nuclei[labels]'") from None
            group = zarr.open_group(self._paths["labels"], mode="w")
            self._labels_group = group
            self._labels = group.create_array(
                "0", shape=labels_size, chunks=(LABEL_CHUNK, LABEL_CHUNK), dtype="int32", fill_value=0
            )

    def class_name(self, cls: int) -> str:
        return self.class_names[cls - 1] if 0 < cls <= len(self.class_names) else str(cls)

    def color(self, cls: int) -> tuple[int, int, int]:
        return CLASS_COLORS[(cls - 1) % len(CLASS_COLORS)]

    def write(self, nuclei: list[Nucleus]):
        """Writes one tile's nuclei (model pixels) to every output."""
        s = self.scale
        for n in nuclei:
            ring = (outline(n.mask) + (n.x0, n.y0)) * s
            cy, cx = n.centroid
            y1, x1, y2, x2 = (v * s for v in n.box)
            area = n.area
            name, color = self.class_name(n.cls), self.color(n.cls)
            area_um2 = area * self.model_mpp**2
            feature = {
                "type": "Feature",
                "id": str(uuid.uuid5(_NAMESPACE, f"{self.name}/{n.id}")),
                "geometry": {"type": "Polygon", "coordinates": [[[_num(x), _num(y)] for x, y in ring]]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": list(color)},
                    "measurements": {"score": round(n.score, 4), "area_um2": round(area_um2, 3)},
                    "nucleus_id": n.id,
                },
            }
            self._geojson.write((",\n" if self.count else "") + json.dumps(feature, separators=(",", ":")))
            box = [_num(v) for v in (y1, x1, y2, x2)]
            self._csv.writerow(
                [
                    n.id,
                    name,
                    round(n.score, 4),
                    _num(cx * s),
                    _num(cy * s),
                    _num(area * s * s),
                    round(area_um2, 3),
                ]
                + box
            )
            self.count += 1
            self.per_class[name] = self.per_class.get(name, 0) + 1
            td = self._thumbnail_downsample
            if (y2 - y1) / td >= 3:
                self._draw.polygon([(x / td, y / td) for x, y in ring], outline=color)
            else:
                self._draw.point([(cx * s / td, cy * s / td)], fill=color)
        if self._labels is not None and nuclei:
            self._paint(nuclei)

    def _paint(self, nuclei: list[Nucleus]):
        """Paints one tile's nuclei into the level-0 label map: each level-0 pixel takes the nucleus of the
        model pixel its centre falls in (one read and one write of the tile's block)."""
        s = self.scale
        height, width = self._labels.shape
        ya = max(0, int(np.floor(min(n.y0 for n in nuclei) * s)))
        xa = max(0, int(np.floor(min(n.x0 for n in nuclei) * s)))
        yb = min(height, int(np.ceil(max(n.box[2] for n in nuclei) * s)))
        xb = min(width, int(np.ceil(max(n.box[3] for n in nuclei) * s)))
        if ya >= yb or xa >= xb:
            return
        rows = np.floor((np.arange(ya, yb) + 0.5) / s).astype(int)  # model pixel of each level-0 pixel
        cols = np.floor((np.arange(xa, xb) + 0.5) / s).astype(int)
        block = self._labels[ya:yb, xa:xb]
        for n in nuclei:
            r, c = rows - n.y0, cols - n.x0
            r_in, c_in = (
                np.nonzero((r >= 0) & (r < n.mask.shape[0]))[0],
                np.nonzero((c >= 0) & (c < n.mask.shape[1]))[0],
            )
            if not len(r_in) or not len(c_in):
                continue
            mask = n.mask[np.ix_(r[r_in], c[c_in])]
            sub = block[r_in[0] : r_in[-1] + 1, c_in[0] : c_in[-1] + 1]
            sub[mask & (sub == 0)] = n.id
        self._labels[ya:yb, xa:xb] = block
        self._painted.update(
            (cy, cx)
            for cy in range(ya // LABEL_CHUNK, (yb - 1) // LABEL_CHUNK + 1)
            for cx in range(xa // LABEL_CHUNK, (xb - 1) // LABEL_CHUNK + 1)
        )

    def _label_pyramid(self, mpp0: float):
        """Levels 1, 2, ...: each the last at half the size (every second pixel), down to one chunk."""
        level, arrays, painted = self._labels, [self._labels], self._painted
        while max(level.shape) > LABEL_CHUNK:
            shape = ((level.shape[0] + 1) // 2, (level.shape[1] + 1) // 2)
            coarser = self._labels_group.create_array(
                str(len(arrays)), shape=shape, chunks=(LABEL_CHUNK, LABEL_CHUNK), dtype="int32", fill_value=0
            )
            step = 2 * LABEL_CHUNK  # one chunk of the coarser level from 2 x 2 chunks of this one
            above = set()
            for cy, cx in sorted({(cy // 2, cx // 2) for cy, cx in painted}):  # the rest stays 0
                block = level[cy * step : (cy + 1) * step : 2, cx * step : (cx + 1) * step : 2]
                if block.any():
                    y, x = cy * LABEL_CHUNK, cx * LABEL_CHUNK
                    coarser[y : y + block.shape[0], x : x + block.shape[1]] = block
                    above.add((cy, cx))
            painted = above
            arrays.append(coarser)
            level = coarser
        axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in ("y", "x")]
        datasets = [
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [mpp0 * 2**i] * 2}]}
            for i in range(len(arrays))
        ]
        self._labels_group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [{"name": f"{self.name} nuclei", "axes": axes, "datasets": datasets}],
        }

    def finish(self, summary: dict, slide_mpp: float):
        """Closes every output and moves them into place, the summary last."""
        self._geojson.write("\n]}\n")
        self._geojson.close()
        self._csv_file.close()
        self._picture.save(self._paths["thumbnail"])
        written = ["geojson", "csv", "thumbnail"]
        if self._labels is not None:
            self._label_pyramid(slide_mpp)
            written.append("labels")
        with open(self._paths["summary"], "w") as f:
            json.dump(summary, f, indent=2)
        final = output_paths(self.out_dir, self.name)
        if os.path.exists(final["summary"]):
            os.remove(final["summary"])  # an earlier run's outputs are not finished while they are replaced
        for key in [*written, "summary"]:
            if os.path.isdir(final[key]):
                shutil.rmtree(final[key])
            os.replace(self._paths[key], final[key])
        shutil.rmtree(self.temp, ignore_errors=True)

    def abort(self):
        """Drops everything written for this slide."""
        for f in (self._geojson, self._csv_file):
            if not f.closed:
                f.close()
        shutil.rmtree(self.temp, ignore_errors=True)
