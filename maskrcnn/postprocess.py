"""From raw head outputs to proposals, detections and instance label maps (pure, jittable, per image).

Boxes are (y1, x1, y2, x2) absolute pixels of the image the model sees, on pixel edges. Batch these
functions with ``jax.vmap``. Padded outputs are zeros with ``valid`` False.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskrcnn.ops import BOX_STD, clip_boxes, decode_boxes, nms, pairwise_iou

# Boxes narrower or shorter than these (in model pixels) are dropped: torchvision's ``remove_small_boxes``
# with its RPN (1e-3) and ROI-head (1e-2) sizes. Clipping to the image can leave such boxes, which have no
# area, pool nothing and can never match a nucleus.
MIN_PROPOSAL_SIZE = 1e-3
MIN_DETECTION_SIZE = 1e-2


def _big_enough(boxes, min_size: float):
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def propose(
    logits,
    deltas,
    anchors,
    *,
    image_size: tuple[int, int],
    pre_nms_limit: int,
    num_proposals: int,
    nms_threshold: float,
    level_sizes: tuple[int, ...] | None = None,
    std=BOX_STD,
):
    """Region proposals of one image.

    Without ``level_sizes`` (Matterport's ``ProposalLayer``): the ``pre_nms_limit`` highest-scoring anchors
    of all levels, their deltas applied, clipped to the image, ``num_proposals`` kept by NMS at
    ``nms_threshold``. With ``level_sizes`` (torchvision's and detectron2's RPN): the ``pre_nms_limit``
    best of each level, NMS within each level, then the ``num_proposals`` best over all. Boxes left
    without area by the clipping are dropped either way.

    Args:
      logits: (A, 2) RPN logits (background, object); deltas: (A, 4); anchors: float32 (A, 4).
      level_sizes: anchors per FPN level in the order of ``anchors`` (static), for per-level selection.

    Returns:
      boxes float32 (num_proposals, 4), scores float32 (num_proposals,) object probability, valid bool,
      in descending score order.
    """
    anchors = jnp.asarray(anchors, jnp.float32)
    scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1]
    if level_sizes is None:
        top_scores, top = jax.lax.top_k(scores, min(pre_nms_limit, scores.shape[0]))
        level = jnp.zeros(top.shape, jnp.float32)
    else:
        picks, first = [], 0
        for size in level_sizes:
            _, idx = jax.lax.top_k(scores[first : first + size], min(pre_nms_limit, size))
            picks.append(first + idx)
            first += size
        top = jnp.concatenate(picks)
        top_scores = scores[top]
        level = jnp.concatenate([jnp.full(p.shape, i, jnp.float32) for i, p in enumerate(picks)])
    boxes = decode_boxes(deltas[top].astype(jnp.float32), anchors[top], std=std)
    boxes = clip_boxes(boxes, *image_size)
    # Per-level NMS in one call: each level's boxes are shifted far from the others' (as in `detect`).
    offset = (level * (max(image_size) + 1.0))[:, None]
    keep, num_valid = nms(
        boxes + offset,
        jnp.where(_big_enough(boxes, MIN_PROPOSAL_SIZE), top_scores, -jnp.inf),
        iou_threshold=nms_threshold,
        max_output_size=num_proposals,
    )
    valid = jnp.arange(num_proposals) < num_valid
    safe = jnp.maximum(keep, 0)
    return (
        jnp.where(valid[:, None], boxes[safe], 0.0),
        jnp.where(valid, top_scores[safe], 0.0),
        valid,
    )


def detection_candidates(
    class_logits,
    box_deltas,
    rois,
    roi_valid,
    roi_scores=None,
    *,
    image_size: tuple[int, int],
    objectness_weight: float = 0.0,
    std=BOX_STD,
):
    """Every (ROI, foreground class) pair of one image as a detection candidate, before the score
    threshold and NMS of :func:`detect`.

    Args: as :func:`detect`.

    Returns:
      boxes float32 (R * K, 4) each class's refined box clipped to the image, scores float32 (R * K,) the
      score (:func:`detect`), classes int32 (R * K,) in 1..K, usable bool (R * K,): a valid ROI and a box with
      area. Candidate ``r * K + k - 1`` is ROI ``r`` with class ``k``.
    """
    num_rois, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[:, 1:]  # (R, K)
    if objectness_weight and roi_scores is not None:
        objectness = jnp.clip(roi_scores.astype(jnp.float32), 0.0, 1.0)[:, None]
        probs = probs ** (1.0 - objectness_weight) * objectness**objectness_weight
    probs = probs.reshape(-1)  # (R * K,)
    per_class = box_deltas[:, 1:] if box_deltas.shape[1] > 1 else box_deltas  # class-agnostic: one set
    deltas = jnp.broadcast_to(per_class, (num_rois, num_classes, 4)).astype(jnp.float32).reshape(-1, 4)
    classes = jnp.tile(jnp.arange(1, num_classes + 1, dtype=jnp.int32), num_rois)
    candidate_rois = jnp.repeat(jnp.asarray(rois, jnp.float32), num_classes, axis=0)
    boxes = clip_boxes(decode_boxes(deltas, candidate_rois, std=std), *image_size)
    usable = jnp.repeat(roi_valid, num_classes) & _big_enough(boxes, MIN_DETECTION_SIZE)
    return boxes, probs, classes, usable


def refined_rois(class_logits, box_deltas, rois, *, image_size: tuple[int, int], std=BOX_STD):
    """One image's ROIs (R, 4) each moved by the deltas of its most probable foreground class and clipped
    to the image: :func:`detection_candidates`' box of that class. Args: as :func:`detect`."""
    num_rois, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    boxes, probs, _, _ = detection_candidates(
        class_logits, box_deltas, rois, jnp.ones(num_rois, bool), image_size=image_size, std=std
    )
    best = jnp.argmax(probs.reshape(num_rois, num_classes), axis=-1)
    return boxes.reshape(num_rois, num_classes, 4)[jnp.arange(num_rois), best]


def detect(
    class_logits,
    box_deltas,
    rois,
    roi_valid,
    roi_scores=None,
    *,
    image_size: tuple[int, int],
    min_confidence: float,
    nms_threshold: float,
    max_detections: int,
    objectness_weight: float = 0.0,
    std=BOX_STD,
):
    """Final detections of one image (torchvision's ``postprocess_detections``).

    Every foreground class of every ROI is a candidate: its probability is the score, its class's box
    deltas refine the ROI. Candidates scoring below ``min_confidence``, or left without area by the
    clipping, are dropped; NMS runs within each class; the ``max_detections`` best are kept in descending
    score order. Scoring each class on its own means a nucleus is never lost because its probability is
    split between classes (background 0.1 with two classes at 0.45 gives two candidates at 0.45), where
    Matterport's ``refine_detections_graph`` (one argmax class per ROI, background included) drops it.

    The score is the class probability ``p``, or with ``objectness_weight`` ``w`` > 0 the weighted
    geometric mean ``p ** (1 - w) * o ** w`` with the RPN's object probability ``o`` of the ROI
    (``roi_scores``): both stages' evidence that a nucleus is there.

    Args:
      class_logits: (R, K+1); box_deltas: (R, K+1, 4), or (R, 1, 4) from a class-agnostic box head;
      rois: float32 (R, 4); roi_valid: bool (R,); roi_scores: float (R,) the proposals' object
        probabilities (used only with ``objectness_weight``).

    Returns:
      dict: ``boxes`` float32 (D, 4), ``scores`` float32 (D,), ``classes`` int32 (D,) in 1..K,
      ``valid`` bool (D,), D = ``max_detections``.
    """
    boxes, probs, classes, usable = detection_candidates(
        class_logits,
        box_deltas,
        rois,
        roi_valid,
        roi_scores,
        image_size=image_size,
        objectness_weight=objectness_weight,
        std=std,
    )
    keep = usable & (probs >= min_confidence)
    # Per-class NMS in one call: shifting each class's boxes by a multiple of the image size puts boxes of
    # different classes far apart, so they never suppress each other.
    offset = (classes.astype(jnp.float32) * (max(image_size) + 1.0))[:, None]
    idx, num_valid = nms(
        boxes + offset,
        jnp.where(keep, probs, -jnp.inf),
        iou_threshold=nms_threshold,
        max_output_size=max_detections,
    )
    valid = jnp.arange(max_detections) < num_valid
    safe = jnp.maximum(idx, 0)
    return {
        "boxes": jnp.where(valid[:, None], boxes[safe], 0.0),
        "scores": jnp.where(valid, probs[safe], 0.0),
        "classes": jnp.where(valid, classes[safe], 0),
        "valid": valid,
    }


def merge_views(
    boxes, scores, classes, valid, *, min_confidence: float, nms_threshold: float, max_detections: int
):
    """One image's detections from V views of it (test-time flips), boxes already in the image's frame.

    The views' detections are pooled and NMS runs within each class, as in :func:`detect`. A kept box's
    score is the mean over the V views of that view's best score among the boxes of its class at IoU >
    ``nms_threshold`` with it (the boxes this NMS suppresses, its own included), zero where a view has
    none: a nucleus all views find keeps its score, one that a single view of four finds keeps a quarter.
    Boxes scoring below ``min_confidence`` after the vote are dropped; the ``max_detections`` best remain,
    best first.

    Args:
      boxes: float32 (V, D, 4); scores: float32 (V, D); classes: int32 (V, D); valid: bool (V, D).

    Returns:
      :func:`detect`'s dict, D = ``max_detections``.
    """
    num_views, slots = scores.shape
    flat_boxes, flat_classes = boxes.reshape(-1, 4), classes.reshape(-1)
    flat_scores = jnp.where(valid, scores, 0.0).reshape(-1)
    offset = (flat_classes.astype(jnp.float32) * (jnp.max(flat_boxes) + 1.0))[:, None]
    idx, num_kept = nms(
        flat_boxes + offset,
        jnp.where(valid.reshape(-1), flat_scores, -jnp.inf),
        iou_threshold=nms_threshold,
        max_output_size=max_detections,
    )
    kept = jnp.arange(max_detections) < num_kept
    safe = jnp.maximum(idx, 0)
    kept_boxes, kept_classes = flat_boxes[safe], flat_classes[safe]
    voters = (
        (pairwise_iou(kept_boxes, flat_boxes) > nms_threshold)
        & (kept_classes[:, None] == flat_classes[None, :])
        & valid.reshape(-1)[None, :]
    )  # (D, V * D)
    votes = jnp.where(voters, flat_scores[None, :], 0.0).reshape(max_detections, num_views, slots)
    score = jnp.where(kept, votes.max(axis=2).mean(axis=1), 0.0)
    keep = kept & (score >= min_confidence)
    order_scores, order = jax.lax.top_k(jnp.where(keep, score, -1.0), max_detections)
    out_valid = order_scores >= 0.0
    return {
        "boxes": jnp.where(out_valid[:, None], kept_boxes[order], 0.0),
        "scores": jnp.where(out_valid, order_scores, 0.0),
        "classes": jnp.where(out_valid, kept_classes[order], 0),
        "valid": out_valid,
    }


def _paste_weights(lo, hi, mask_len: int, out_len: int, scale):
    """Bilinear weights (D, out_len, mask_len) that map a mask resized over [lo, hi) to output pixels.

    Output pixel p has its centre at (p + 0.5) * scale in model pixels (``scale``: model pixels per output
    pixel), which sits at mask coordinate ((p + 0.5) * scale - lo) * mask_len / (hi - lo) - 0.5 (mask cell
    centres at i + 0.5). Outside the box the weights are zero.
    """
    centre = (jnp.arange(out_len, dtype=jnp.float32) + 0.5) * scale  # (out,)
    size = jnp.maximum(hi - lo, 1e-6)[:, None]
    u = (centre[None, :] - lo[:, None]) * mask_len / size - 0.5  # (D, out)
    inside = (centre[None, :] >= lo[:, None]) & (centre[None, :] < hi[:, None])
    u = jnp.clip(u, 0.0, mask_len - 1.0)
    cells = jnp.arange(mask_len, dtype=jnp.float32)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(u[..., None] - cells))  # (D, out, mask_len)
    return w * inside[..., None]


def paste_masks(masks, boxes, output_size: tuple[int, int], scale: float = 1.0):
    """Pastes box-relative masks into a full-size image by bilinear interpolation.

    Args:
      masks: float (D, m, m) probabilities, each covering its box.
      boxes: float32 (D, 4) yxyx in model pixels.
      output_size: (H, W) of the output, in original-image pixels.
      scale: model pixels per original pixel (the input pipeline's resize factor).

    Returns:
      float32 (D, H, W): each mask's value at every output pixel centre, 0 outside its box.
    """
    m_h, m_w = masks.shape[1:]
    wy = _paste_weights(boxes[:, 0], boxes[:, 2], m_h, output_size[0], scale)
    wx = _paste_weights(boxes[:, 1], boxes[:, 3], m_w, output_size[1], scale)
    return jnp.einsum("dyi,dij,dxj->dyx", wy, masks.astype(jnp.float32), wx)


def instance_label_map(masks, scores, valid, threshold: float = 0.5):
    """Turns full-size instance masks into an instance label map; overlaps go to the higher score.

    Args:
      masks: float (D, H, W) probabilities; scores: float (D,); valid: bool (D,).

    Returns:
      int32 (H, W): 0 background, detection ``d`` (in input order) is labelled ``d + 1``.
    """
    on = (masks >= threshold) & valid[:, None, None]
    rank_score = jnp.where(on, scores[:, None, None], -jnp.inf)
    best = jnp.argmax(rank_score, axis=0)
    return jnp.where(jnp.any(on, axis=0), best + 1, 0).astype(jnp.int32)
