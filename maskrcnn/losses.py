"""The five Mask R-CNN losses (He et al. 2017), and RetinaNet's focal loss as an RPN option, as pure
functions of batched arrays.

Each averages over the entries that take part in the whole batch (as Matterport flattens the batch;
the focal loss divides its sum by the batch's positives instead) and returns a float32 scalar. When
nothing takes part (an image without nuclei has no positive anchor or ROI) the loss is exactly 0, never
NaN. Inputs may be bf16; the arithmetic is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def class_channel(values, channel, axis: int):
    """``values`` at each entry's ``channel`` along ``axis`` (which is then dropped); a class-agnostic
    head, with one channel on that axis, gives that channel to every class.

    values: (..., C, ...) with C = 1 or the number of channels; channel: int (...) for the leading axes.
    """
    if values.shape[axis] == 1:
        return jnp.squeeze(values, axis)
    index = jnp.expand_dims(channel, tuple(range(channel.ndim, values.ndim)))
    return jnp.squeeze(jnp.take_along_axis(values, index, axis=axis), axis)


def _masked_mean(values, mask):
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def smooth_l1(x):
    """Huber loss with delta 1 (Fast R-CNN Eq. 3): 0.5 x^2 for |x| < 1, |x| - 0.5 otherwise."""
    ax = jnp.abs(x)
    return jnp.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def rpn_class_loss(logits, labels):
    """Objectness cross-entropy over the sampled anchors.

    logits: (B, A, 2) (background, object); labels: int32 (B, A), 1 positive, -1 negative, 0 ignored.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.where(labels == 1, logp[..., 1], logp[..., 0])
    return _masked_mean(ce, labels != 0)


def rpn_focal_loss(logits, labels, alpha: float = 0.25, gamma: float = 2.0):
    """Objectness focal loss (Lin et al. 2017, Eq. 5) over every labelled anchor, summed over the batch
    and divided by its positive anchors (RetinaNet's normalisation; by 1 when there is none).

    Each anchor costs -alpha_t (1 - p_t)^gamma log p_t, with p_t the softmax probability of its label and
    alpha_t = alpha for a positive, 1 - alpha for a negative. logits: (B, A, 2) (background, object);
    labels: int32 (B, A), 1 positive, -1 negative, 0 ignored.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    positive = labels == 1
    logp_t = jnp.where(positive, logp[..., 1], logp[..., 0])
    alpha_t = jnp.where(positive, alpha, 1.0 - alpha)
    focal = -alpha_t * (1.0 - jnp.exp(logp_t)) ** gamma * logp_t
    return jnp.sum(jnp.where(labels != 0, focal, 0.0)) / jnp.maximum(jnp.sum(positive), 1.0)


def rpn_box_loss(deltas, target_deltas, labels):
    """Smooth-L1 on the encoded boxes of positive anchors, averaged over their coordinates (Matterport).

    deltas, target_deltas: (B, A, 4); labels: int32 (B, A).
    """
    per_coord = smooth_l1(deltas.astype(jnp.float32) - target_deltas)
    return _masked_mean(per_coord, jnp.broadcast_to((labels == 1)[..., None], per_coord.shape))


def class_loss(logits, target_classes, valid):
    """Softmax cross-entropy of the ROI classifier over the valid (sampled) ROIs.

    logits: (B, R, K+1); target_classes: int32 (B, R) in 0..K; valid: bool (B, R).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, target_classes[..., None], axis=-1)[..., 0]
    return _masked_mean(ce, valid)


def box_loss(deltas, target_deltas, target_classes, positive):
    """Smooth-L1 on the true class's box deltas of positive ROIs, averaged over their coordinates.

    deltas: (B, R, K+1, 4) (or (B, R, 1, 4) from a class-agnostic head); target_deltas: (B, R, 4);
    target_classes: int32 (B, R); positive: bool (B, R).
    """
    picked = class_channel(deltas.astype(jnp.float32), target_classes, axis=2)
    per_coord = smooth_l1(picked - target_deltas)
    return _masked_mean(per_coord, jnp.broadcast_to(positive[..., None], per_coord.shape))


def mask_loss(mask_logits, target_masks, target_classes, positive):
    """Per-pixel binary cross-entropy of the true class's mask on positive ROIs.

    mask_logits: (B, R, m, m, K) one channel per foreground class (or (B, R, m, m, 1) from a
    class-agnostic head); target_masks: (B, R, m, m) 0/1; target_classes: int32 (B, R) in 1..K for
    positives; positive: bool (B, R).
    """
    logits = class_channel(mask_logits.astype(jnp.float32), jnp.maximum(target_classes - 1, 0), axis=-1)
    bce = jnp.maximum(logits, 0) - logits * target_masks + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return _masked_mean(bce, jnp.broadcast_to(positive[..., None, None], bce.shape))


def mask_dice_loss(mask_logits, target_masks, target_classes, positive, eps: float = 1.0):
    """1 - soft Dice of the true class's mask on positive ROIs (an optional extra term, not the paper's).

    Same arguments as :func:`mask_loss`. Soft Dice per ROI, 2 * sum(p * t) + eps over sum(p) + sum(t) + eps,
    averaged over positive ROIs; 0 when there is none.
    """
    logits = class_channel(mask_logits.astype(jnp.float32), jnp.maximum(target_classes - 1, 0), axis=-1)
    probs = jax.nn.sigmoid(logits)
    inter = jnp.sum(probs * target_masks, axis=(-2, -1))
    dice = (2 * inter + eps) / (jnp.sum(probs, axis=(-2, -1)) + jnp.sum(target_masks, axis=(-2, -1)) + eps)
    return _masked_mean(1.0 - dice, positive)
