"""Stain and colour augmentation of H&E images (numpy, per example, training only).

Slides from other centres differ in stain colour; computational pathology trains through it by jittering
the stains themselves (Tellez et al. 2019, "Quantifying the effects of data augmentation and stain color
normalization in convolutional neural networks for computational pathology", Med. Image Anal. 58) and the
plain colour properties. Only the pixels change: masks and boxes are untouched.
"""

from __future__ import annotations

import numpy as np

# Stain vectors of haematoxylin, eosin and DAB in optical density per RGB channel (Ruifrok & Johnston
# 2001, "Quantification of histochemical staining by color deconvolution"; skimage.color.rgb_from_hed).
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
    np.float64,
)
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def rgb_to_hed(image) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float64 (H, W, 3) stain concentrations (H, E, DAB) in optical density.

    Optical density is -ln((I + 1) / 256) per channel (the + 1 keeps black finite), then colour
    deconvolution by the inverse of :data:`RGB_FROM_HED`.
    """
    density = -np.log((np.asarray(image, np.float64) + 1.0) / 256.0)
    return density @ HED_FROM_RGB


def hed_to_rgb(stains) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed`: float (H, W, 3) stain concentrations -> float64 RGB (not clipped)."""
    return 256.0 * np.exp(-(np.asarray(stains, np.float64) @ RGB_FROM_HED)) - 1.0


def color_jitter(
    image,
    rng: np.random.Generator,
    *,
    hed: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> np.ndarray:
    """Random stain, brightness, contrast and saturation changes, applied in that order.

    Args:
      image: uint8 (H, W, 3) RGB.
      rng: draws, for each non-zero strength in turn: ``hed``: three factors alpha ~ U(1 - hed, 1 + hed)
        and three offsets beta ~ U(-hed, hed) (optical density), each stain channel becoming
        ``alpha * c + beta`` (Tellez et al. 2019; their "HED-light" is 0.05); ``brightness``: a factor
        b ~ U(1 - s, 1 + s) on every pixel; ``contrast``: a factor on the distance to the image's mean
        grey; ``saturation``: a factor on the distance of each pixel to its own grey (ITU-R 601 luma).
        A zero strength draws nothing and changes nothing, so with all four zero the image is returned
        as it is and ``rng`` is not advanced.

    Returns:
      uint8 (H, W, 3).
    """
    if not (hed or brightness or contrast or saturation):
        return image
    out = np.asarray(image, np.float64)
    if hed:
        alpha = rng.uniform(1.0 - hed, 1.0 + hed, 3)
        beta = rng.uniform(-hed, hed, 3)
        out = hed_to_rgb(rgb_to_hed(image) * alpha + beta)
    luma = np.array([0.299, 0.587, 0.114])
    if brightness:
        out = out * rng.uniform(1.0 - brightness, 1.0 + brightness)
    if contrast:
        mean = float(np.mean(out @ luma))
        out = mean + (out - mean) * rng.uniform(1.0 - contrast, 1.0 + contrast)
    if saturation:
        grey = (out @ luma)[..., None]
        out = grey + (out - grey) * rng.uniform(1.0 - saturation, 1.0 + saturation)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
