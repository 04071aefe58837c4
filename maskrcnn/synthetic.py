"""Synthetic H&E patches with nuclei, in PanNuke's exact file format (for the demo, tests and benchmarks).

Nothing here is real tissue: pink eosin-stained stroma with fibre texture, and purple hematoxylin-stained
nuclei with chromatin texture and irregular outlines, touching and overlapping, whose size, shape and
darkness depend on their class (large pale-rimmed neoplastic, small round dark inflammatory, spindle
connective, small fragmented dead, medium epithelial). Density, class mix and tissue vary per image.
Deterministic from a seed.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from maskrcnn.pannuke import PANNUKE_TISSUES

# Per class: radius range (px), elongation range (long / short axis), darkness (0-1), outline roughness.
_NUCLEI = (
    ((6.0, 11.0), (1.0, 1.5), 0.70, 0.12),  # neoplastic
    ((3.0, 4.5), (1.0, 1.15), 0.95, 0.04),  # inflammatory
    ((2.5, 4.0), (2.2, 3.8), 0.80, 0.06),  # connective
    ((2.0, 3.5), (1.0, 1.4), 1.00, 0.25),  # dead
    ((4.5, 7.5), (1.1, 1.6), 0.65, 0.08),  # epithelial
)
_HEMATOXYLIN = np.array([70.0, 40.0, 125.0])
_EOSIN = np.array([236.0, 170.0, 205.0])


def _smooth_noise(rng, shape, sigma):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-8)


def _nucleus(rng, cls: int):
    """A nucleus footprint: bool (h, w) and its centre offset, with an irregular elliptic outline."""
    (r_lo, r_hi), (e_lo, e_hi), _, rough = _NUCLEI[cls]
    r = rng.uniform(r_lo, r_hi)
    elong = rng.uniform(e_lo, e_hi)
    a, b = r * np.sqrt(elong), r / np.sqrt(elong)
    half = int(np.ceil(a * (1 + 2 * rough))) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    theta = np.arctan2(v, u)
    wobble = 1 + rough * sum(
        rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) / k for k in (2, 3, 5)
    )
    inside = (u / a) ** 2 + (v / b) ** 2 <= wobble**2
    if cls == 3:  # dead: fragmented, pyknotic
        inside &= _smooth_noise(rng, inside.shape, 1.0) > -0.6
    return inside, half


def make_image(rng: np.random.Generator, size: int = 256, tissue: str | None = None):
    """One synthetic patch.

    Returns:
      image float64 (size, size, 3) in 0-255, mask float64 (size, size, 6) PanNuke channels (instance ids
      in channels 0-4, background in 5), tissue name.
    """
    tissue = tissue or str(rng.choice(PANNUKE_TISSUES))
    count = int(rng.integers(4, 70))
    mix = rng.dirichlet(np.full(5, 0.6))
    if rng.random() < 0.7:  # most patches hold tumour; the neoplastic config keeps only those
        mix[0] += 1.5
    mix /= mix.sum()
    classes = rng.choice(5, size=count, p=mix)
    clusters = rng.uniform(0, size, (max(1, count // 12), 2))

    labels = np.zeros((size, size), np.int64)
    owner_class = np.full(size * size, -1)
    darkness = np.zeros((size, size))
    first_id = int(rng.choice([1, 1, 300, 70_000]))  # ids above 255 and 65535 occur in the wild
    next_id = first_id
    for cls in classes:
        inside, half = _nucleus(rng, int(cls))
        cy, cx = clusters[rng.integers(len(clusters))] + rng.normal(0, size / 8, 2)
        cy, cx = int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))
        y0, x0 = cy - half, cx - half
        ys, xs = np.nonzero(inside)
        ys, xs = ys + y0, xs + x0
        keep = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        ys, xs = ys[keep], xs[keep]
        if len(ys) < 6:
            continue
        under = labels[ys, xs]
        covered = under[under > 0]
        if covered.size:  # overlap allowed, but a nucleus must not hide most of another
            ids, hits = np.unique(covered, return_counts=True)
            if np.any(hits > 0.4 * np.array([np.sum(labels == i) for i in ids])):
                continue
        labels[ys, xs] = next_id
        owner_class[ys * size + xs] = cls
        darkness[ys, xs] = _NUCLEI[cls][2] * rng.uniform(0.85, 1.1)
        next_id += 1

    owner_class = owner_class.reshape(size, size)
    mask = np.zeros((size, size, 6))
    for c in range(5):
        mask[..., c] = np.where(owner_class == c, labels, 0)
    mask[..., 5] = (labels == 0).astype(np.float64)

    # Stain: eosin background with fibres, hematoxylin nuclei with chromatin and a darker rim.
    fibres = _smooth_noise(rng, (size, size), (1.5, 4.0) if rng.random() < 0.5 else (4.0, 1.5))
    stroma = _smooth_noise(rng, (size, size), 8.0)
    white = np.clip(_smooth_noise(rng, (size, size), 20.0) - 1.2, 0, None)  # lumen / fat
    stain = rng.uniform(0.9, 1.1, (2, 3))  # stain variation between slides
    background = (_EOSIN * stain[0])[None, None] * (1 + 0.06 * stroma[..., None] + 0.05 * fibres[..., None])
    background = background + (255 - background) * np.clip(white, 0, 1)[..., None]
    chromatin = _smooth_noise(rng, (size, size), 0.8)
    nuclear = darkness * (1 + 0.18 * chromatin)
    rim = ndimage.grey_dilation(labels, size=3) != ndimage.grey_erosion(labels, size=3)
    nuclear = np.where(rim & (labels > 0), np.minimum(nuclear * 1.15, 1.1), nuclear)
    alpha = np.clip(ndimage.gaussian_filter((labels > 0) * 1.0, 0.6) * 0.9 + (labels > 0) * 0.1, 0, 1)
    nucleus_rgb = (_HEMATOXYLIN * stain[1])[None, None] * (1.6 - 0.7 * np.clip(nuclear, 0, 1.2))[..., None]
    image = background * (1 - alpha[..., None]) + nucleus_rgb * alpha[..., None]
    image = ndimage.gaussian_filter(image, (0.6, 0.6, 0)) + rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255), mask, tissue  # whole numbers in float64, as PanNuke stores them


def make_fold(num_images: int, seed: int, size: int = 256):
    """``num_images`` patches: images (N, size, size, 3) and masks (N, size, size, 6) float64, types (N,)."""
    rng = np.random.default_rng(seed)
    tissues = [PANNUKE_TISSUES[i % 6] for i in range(num_images)]  # a few tissues, each several times
    out = [make_image(rng, size, t) for t in tissues]
    return (
        np.stack([o[0] for o in out]),
        np.stack([o[1] for o in out]),
        np.array([o[2] for o in out]),
    )


def write_folds(root: str, images_per_fold, seed: int = 0, size: int = 256) -> str:
    """Writes three folds laid out as PanNuke's unzipped downloads (``Fold 1/images/fold1/images.npy``...).

    ``images_per_fold`` is an int or one count per fold, e.g. PanNuke's real sizes (2656, 2523, 2722)
    to measure a full-size build. Images are generated and written one at a time into memory-mapped
    .npy files, so a full-size fold (8 GB of float64 masks) needs little memory.
    """
    counts = (images_per_fold,) * 3 if np.ndim(images_per_fold) == 0 else tuple(images_per_fold)
    for fold, count in zip((1, 2, 3), counts, strict=True):
        rng = np.random.default_rng(seed * 10 + fold)
        base = os.path.join(root, f"Fold {fold}")
        paths = {
            name: os.path.join(base, sub, f"fold{fold}", f"{name}.npy")
            for sub, name in (("images", "images"), ("images", "types"), ("masks", "masks"))
        }
        for path in paths.values():
            os.makedirs(os.path.dirname(path), exist_ok=True)
        open_npy = np.lib.format.open_memmap
        images = open_npy(paths["images"], "w+", np.float64, (count, size, size, 3))
        masks = open_npy(paths["masks"], "w+", np.float64, (count, size, size, 6))
        types = []
        for i in range(count):
            images[i], masks[i], tissue = make_image(rng, size, PANNUKE_TISSUES[i % 6])
            types.append(tissue)
        images.flush(), masks.flush()
        del images, masks
        np.save(paths["types"], np.array(types))
    return root
