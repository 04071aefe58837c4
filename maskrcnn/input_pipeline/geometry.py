"""Augmentation (flips, rotation) and resizing of an image with its label map."""

from __future__ import annotations

import numpy as np
from PIL import Image


def augment(image, instances, classes, rng: np.random.Generator, max_degrees: float):
    """Random horizontal and vertical flips and a rotation within +-max_degrees (the seed paper's).

    Args:
      image: uint8 (H, W, 3); instances: int (H, W) label map; classes: (H, W) class map or None;
      rng: draws flip h, flip v (each with probability 1/2), then the angle uniformly.

    Returns:
      the three arrays transformed alike (PIL's rotate about the image centre, counter-clockwise for a
      positive angle): the image bilinearly, the label maps by nearest neighbour, zeros where the
      rotation brings in pixels from outside (imgaug's default, which the paper used).
    """
    flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
    angle = rng.uniform(-max_degrees, max_degrees) if max_degrees > 0 else 0.0
    flip = (slice(None, None, -1 if flip_v else 1), slice(None, None, -1 if flip_h else 1))
    out = [None if a is None else np.ascontiguousarray(a[flip]) for a in (image, instances, classes)]
    if abs(angle) < 1e-3:
        return tuple(out)
    out[0] = np.asarray(Image.fromarray(out[0]).rotate(angle, Image.BILINEAR))
    for i in (1, 2):
        if out[i] is not None:  # mode "I" (int32): ids of any size survive
            dtype = out[i].dtype
            out[i] = np.asarray(Image.fromarray(out[i].astype(np.int32)).rotate(angle, Image.NEAREST))
            out[i] = out[i].astype(dtype)
    return tuple(out)


def _nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """Source pixel of each output pixel when resizing size_in -> size_out by nearest pixel centre."""
    return np.minimum(((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1)


def resize(image, instances, classes, size: int):
    """Resizes to size x size: the image bilinearly (PIL, antialiased when shrinking), the label maps by
    nearest pixel centre (output pixel i reads input pixel floor((i + 0.5) * H / size)).

    Args: image uint8 (H, H, 3); instances, classes (H, H) (classes may be None). Returns the three arrays
    at (size, size).
    """
    height = image.shape[0]
    if size == height:
        return image, instances, classes
    image = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), Image.BILINEAR))
    if size % height == 0:  # integer upscale: the same pixels as the index below, faster
        f = size // height
        nearest = lambda a: np.repeat(np.repeat(a, f, 0), f, 1)  # noqa: E731
    else:
        src = _nearest_index(height, size)
        nearest = lambda a: a[np.ix_(src, src)]  # noqa: E731
    return image, nearest(instances), None if classes is None else nearest(classes)
