"""The classical nucleus segmentation that the learning benchmark measures Mask R-CNN against.

Colour deconvolution to the haematoxylin channel (Ruifrok & Johnston, ``skimage.color.rgb2hed``),
Gaussian smoothing, a per-image Otsu threshold scaled by a tuned factor, hole filling and removal of
small objects, then a watershed of the inverted distance transform seeded at its local maxima (at
least ``min_distance`` px apart), so touching nuclei split along their necks.

The parameters are tuned on training images only (:func:`tune`, a coordinate search that maximises the
mean binary PQ) and then applied unchanged to the test images.

    from maskrcnn import baseline
    params, history = baseline.tune(train_images, train_instances)
    labels, scores = baseline.segment(test_image, params)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage import color, feature, filters, segmentation

from maskrcnn.evaluation import panoptic_quality


@dataclasses.dataclass(frozen=True)
class Params:
    sigma: float = 1.0  # Gaussian smoothing of the haematoxylin channel, px
    threshold_factor: float = 1.0  # the Otsu threshold is multiplied by this
    min_size: int = 20  # objects (and watershed pieces) smaller than this many px are dropped
    min_distance: int = 5  # seeds of the watershed: distance-transform maxima at least this far apart


# The values the tuning tries for each parameter (the defaults above are among them).
SEARCH_SPACE: dict[str, tuple] = {
    "sigma": (0.5, 1.0, 2.0, 3.0),
    "threshold_factor": (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5),
    "min_size": (10, 20, 40, 80, 120, 160),
    "min_distance": (3, 4, 5, 7, 9, 12, 15),
}


def haematoxylin(image: np.ndarray) -> np.ndarray:
    """The haematoxylin optical density of an RGB uint8 (H, W, 3) image, float (H, W)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return color.rgb2hed(image)[..., 0]


def segment(image: np.ndarray, params: Params = Params(), *, stain: np.ndarray | None = None):
    """Instance label map int32 (H, W) (0 background, nuclei 1..N) and per-nucleus scores (N,).

    A nucleus' score is its mean haematoxylin density, so darker nuclei rank first in mask AP.
    ``stain``: the image's :func:`haematoxylin` channel if already computed.
    """
    h = haematoxylin(image) if stain is None else stain
    smooth = filters.gaussian(h, sigma=params.sigma) if params.sigma > 0 else h
    if np.ptp(smooth) <= 0:  # a blank image has no threshold and no nuclei
        return np.zeros(h.shape, np.int32), np.zeros(0, np.float32)
    foreground = smooth > filters.threshold_otsu(smooth) * params.threshold_factor
    components, _ = ndi.label(ndi.binary_fill_holes(foreground))
    components = _drop_small(components, params.min_size)
    foreground = components > 0
    distance = ndi.distance_transform_edt(foreground)
    peaks = feature.peak_local_max(
        distance, min_distance=params.min_distance, labels=components, exclude_border=False
    )
    markers = np.zeros(h.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=foreground)
    # A component without a peak (flat plateau) keeps its own label rather than vanishing.
    orphans = (labels == 0) & foreground
    if orphans.any():
        extra, _ = ndi.label(orphans)
        labels = np.where(orphans, extra + labels.max(), labels)
    labels, _, _ = segmentation.relabel_sequential(_drop_small(labels, params.min_size))
    n = int(labels.max())
    scores = ndi.mean(h, labels, np.arange(1, n + 1)) if n else np.zeros(0)
    return labels.astype(np.int32), np.asarray(scores, np.float32)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` without the objects of fewer than ``min_size`` pixels."""
    sizes = np.bincount(labels.ravel())
    return np.where(sizes[labels] < min_size, 0, labels)


def mean_pq(
    images: Sequence[np.ndarray], instances: Sequence[np.ndarray], params: Params, stains=None
) -> float:
    """Mean binary PQ over the images whose truth holds nuclei (the PanNuke protocol's bPQ per image)."""
    values = []
    for i, (image, truth) in enumerate(zip(images, instances, strict=True)):
        if not np.any(truth):
            continue
        labels, _ = segment(image, params, stain=None if stains is None else stains[i])
        values.append(panoptic_quality(truth, labels).pq)
    if not values:
        raise ValueError("no image with nuclei to tune on")
    return float(np.mean(values))


def tune(
    images: Sequence[np.ndarray],
    instances: Sequence[np.ndarray],
    *,
    space: dict[str, tuple] = SEARCH_SPACE,
    start: Params = Params(),
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
) -> tuple[Params, list[tuple[Params, float]]]:
    """The parameters that maximise :func:`mean_pq` on (training) images, by coordinate search.

    Each round sweeps every parameter over its values in ``space`` with the others held at their best
    so far; it stops after ``rounds`` rounds or when a round changes nothing. Returns the best
    parameters and every (params, mean PQ) evaluated, in order.
    """
    stains = [haematoxylin(image) for image in images]
    seen: dict[Params, float] = {}

    def score(params: Params) -> float:
        if params not in seen:
            seen[params] = mean_pq(images, instances, params, stains)
            if progress:
                progress(f"{params} -> bPQ {seen[params]:.4f}")
        return seen[params]

    best = start
    for _ in range(rounds):
        before = best
        for name, values in space.items():
            candidates = [dataclasses.replace(best, **{name: v}) for v in values]
            best = max(candidates, key=lambda p: (score(p), p == best))  # ties keep the current value
        if best == before:
            break
    return best, list(seen.items())
