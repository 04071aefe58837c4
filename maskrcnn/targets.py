"""Training targets for the RPN and the ROI heads, as pure per-image functions with static shapes.

Both functions take one image's arrays and an explicit ``jax.random`` key; batch them with ``jax.vmap``.
Boxes are (y1, x1, y2, x2) absolute pixels on pixel edges. Padded ground-truth slots are marked by
``gt_valid`` and never match anything.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from maskrcnn.ops import BOX_STD, encode_boxes, pairwise_iou, roi_align


def random_subset(candidates, max_count: int, key, limit=None, weights=None):
    """Marks a random subset of the True entries of ``candidates``, uniform or weighted.

    Args:
      candidates: bool (N,).
      max_count: static upper bound on the subset size.
      key: a ``jax.random`` key.
      limit: optional int32 scalar (traced) further capping the subset size.
      weights: optional float (N,), positive on the candidates: draw without replacement with
        probabilities proportional to them (Efraimidis and Spirakis 2006: the largest keys u^(1/w), taken
        in log form, log(u) / w). None draws uniformly.

    Returns:
      bool (N,): ``min(sum(candidates), max_count, limit)`` entries, all of them candidates.
    """
    n = candidates.shape[0]
    k = min(max_count, n)
    if k == 0:
        return jnp.zeros_like(candidates)
    if weights is None:
        unchosen = -1.0
        priority = jnp.where(candidates, jax.random.uniform(key, (n,)), unchosen)
    else:
        # log(u) / w < 0, finite for u in [tiny, 1): -inf marks the entries that are not candidates.
        unchosen = -jnp.inf
        u = jax.random.uniform(key, (n,), minval=jnp.finfo(jnp.float32).tiny)
        priority = jnp.where(candidates, jnp.log(u) / jnp.where(candidates, weights, 1.0), unchosen)
    top, idx = jax.lax.top_k(priority, k)
    keep = top > unchosen
    if limit is not None:
        keep &= jnp.arange(k) < limit
    return jnp.zeros((n,), bool).at[idx].set(keep)


def _max_iou(boxes, others, others_valid):
    """Each box's best IoU with the valid ``others`` (-1 when there is none): float32 (N,)."""
    if others.shape[0] == 0:
        return jnp.full(boxes.shape[:1], -1.0)
    return jnp.where(others_valid[None, :], pairwise_iou(boxes, others), -1.0).max(axis=1)


def assign_anchors(
    anchors,
    gt_boxes,
    gt_valid,
    *,
    rule: str = "iou",
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    topk: int = 9,
    level_sizes: tuple[int, ...] | None = None,
    atss_candidates: str = "anchors",
    anchors_per_location: int = 1,
    level_shapes: tuple[tuple[int, int], ...] | None = None,
    ignore_boxes=None,
    ignore_valid=None,
):
    """Which anchors are RPN positives and negatives for one image's ground truth, before sampling.

    ``rule="iou"`` (Ren et al. 2015, Sec. 3.1.2; Matterport's ``build_rpn_targets``): an anchor is
    positive at IoU >= ``positive_iou`` with some box, or when it is (one of) the best anchor(s) of a box.
    ``rule="atss"`` (Zhang et al. 2020, Alg. 1): for each box, the ``topk`` anchors of each level whose
    centres are nearest its centre are candidates; those whose IoU is at least the candidates' mean + std
    (unbiased, as the authors' code) and whose centre lies inside the box are positive, matched to the box
    of highest IoU. ``atss_candidates="anchors"`` takes ``topk`` anchors a level, as Alg. 1 is written (with
    several anchors a location, that is the nearest ``topk / anchors_per_location`` locations);
    ``"locations"`` takes every anchor of the ``topk`` nearest locations, ``topk * anchors_per_location``
    a level, as the authors' code does (``TOPK * num_anchors_per_loc``). Anchors must be ordered
    location-major (``maskrcnn.ops.anchors``), ``anchors_per_location`` of them a location.

    Either way an anchor is negative when its best IoU is below ``negative_iou`` and it is not positive;
    anchors at IoU >= ``negative_iou`` with an ignored box (ground truth left out by the
    input pipeline) are not negatives, so a nucleus without a slot is never taught as background.

    The ATSS candidates are found in a window of locations around each box's centre on each level
    (:func:`_atss_candidates`), not by ranking every anchor of the level: the same candidates, without a
    top-k or a scatter over all anchors (what a GPU runs slowly).

    Args:
      anchors: float32 (A, 4) yxyx pixels; gt_boxes: float32 (M, 4); gt_valid: bool (M,).
      level_sizes: anchors per FPN level, in the order of ``anchors`` (needed by "atss").
      atss_candidates: "anchors" or "locations" (see above); anchors_per_location: for "locations".
      level_shapes: (rows, columns) of locations on each level, the grid ``anchors`` were made on ("atss";
        from ``level_sizes`` and ``anchors_per_location`` for square levels when not given).
      ignore_boxes: optional float32 (G, 4) with ignore_valid bool (G,).

    Returns:
      positive bool (A,), negative bool (A,), matched int32 (A,): the ground-truth index whose box a
      positive anchor regresses to.
    """
    anchors = jnp.asarray(anchors, jnp.float32)
    if gt_boxes.shape[0] == 0:
        positive = jnp.zeros(anchors.shape[:1], bool)
        negative = ~positive
        if ignore_boxes is not None:
            negative &= _max_iou(anchors, ignore_boxes, ignore_valid) < negative_iou
        return positive, negative, jnp.zeros(anchors.shape[:1], jnp.int32)
    iou = jnp.where(gt_valid[None, :], pairwise_iou(anchors, gt_boxes), -1.0)  # (A, M)
    best_iou, best_gt = iou.max(axis=1), iou.argmax(axis=1).astype(jnp.int32)
    if rule == "iou":
        # Every ground-truth box gets its best anchor(s), even below the threshold (ties all count).
        best_per_gt = iou.max(axis=0, keepdims=True)
        is_best = jnp.any((iou == best_per_gt) & gt_valid[None, :] & (best_per_gt > 0), axis=1)
        positive = (best_iou >= positive_iou) | is_best
        matched = best_gt
    elif rule == "atss":
        if level_sizes is None or sum(level_sizes) != anchors.shape[0]:
            raise ValueError(
                f"rule='atss' needs level_sizes summing to {anchors.shape[0]}, got {level_sizes}"
            )
        if atss_candidates not in ("anchors", "locations"):
            raise ValueError(f"atss_candidates must be 'anchors' or 'locations', got {atss_candidates!r}")
        if level_shapes is None:  # square levels
            side = [round((size // anchors_per_location) ** 0.5) for size in level_sizes]
            level_shapes = tuple((n, n) for n in side)
        candidates = _atss_candidates(
            anchors, gt_boxes, level_sizes, level_shapes, topk, anchors_per_location, atss_candidates
        )  # (M, C) anchor indices
        boxes = anchors[candidates]  # (M, C, 4)
        c_iou = _aligned_iou(boxes, gt_boxes[:, None, :])  # (M, C)
        count = candidates.shape[1]
        mean = jnp.mean(c_iou, axis=1, keepdims=True)
        var = jnp.sum((c_iou - mean) ** 2, axis=1, keepdims=True) / max(count - 1, 1)  # unbiased
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        inside = (
            (centre[..., 0] > gt_boxes[:, None, 0])
            & (centre[..., 1] > gt_boxes[:, None, 1])
            & (centre[..., 0] < gt_boxes[:, None, 2])
            & (centre[..., 1] < gt_boxes[:, None, 3])
        )
        pairs = inside & gt_valid[:, None] & (c_iou >= mean + jnp.sqrt(var)) & (c_iou > 0)
        # Each anchor takes the box of highest IoU among those it is a positive for (the lowest index on
        # ties, as an argmax): a scatter-max of the IoUs, then a scatter-min of the boxes that reach it.
        flat = candidates.reshape(-1)
        pair_iou = jnp.where(pairs, c_iou, -1.0).reshape(-1)
        best = jnp.full(anchors.shape[:1], -1.0).at[flat].max(pair_iou)
        owner = jnp.broadcast_to(jnp.arange(gt_boxes.shape[0], dtype=jnp.int32)[:, None], candidates.shape)
        reaches = pairs.reshape(-1) & (pair_iou == best[flat])
        first = (
            jnp.full(anchors.shape[:1], gt_boxes.shape[0], jnp.int32)
            .at[flat]
            .min(jnp.where(reaches, owner.reshape(-1), gt_boxes.shape[0]))
        )
        positive = best >= 0
        matched = jnp.where(positive, first, best_gt).astype(jnp.int32)
    else:
        raise ValueError(f"model.rpn_assignment must be 'iou' or 'atss', got {rule!r}")
    negative = (best_iou < negative_iou) & ~positive
    if ignore_boxes is not None:
        negative &= _max_iou(anchors, ignore_boxes, ignore_valid) < negative_iou
    return positive, negative, matched


def _aligned_iou(a, b):
    """IoU of boxes paired elementwise: float (..., 4) and (..., 4) yxyx, broadcast -> float32 (...), with
    :func:`maskrcnn.ops.pairwise_iou`'s arithmetic."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    inter = jnp.maximum(
        jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0.0
    ) * jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _atss_candidates(anchors, gt_boxes, level_sizes, level_shapes, topk, per_location, mode):
    """int32 (M, C): each box's ATSS candidates, level by level, nearest first (ties: the lower index).

    ``mode="anchors"``: the ``topk`` anchors of each level whose centres are nearest the box's centre;
    ``"locations"``: every anchor of the ``topk`` nearest locations. Anchors are on a regular grid, so a
    box's nearest locations lie in a small window of them around its centre: each level ranks the anchors
    of a window of ``2 h + 1`` locations a side (``h = ceil(sqrt(k)) + 1`` for the ``k`` locations it
    needs), moved inward at the level's edges. Every location outside the window is at least ``h - 1/2``
    strides from the centre, farther than the ``k``-th nearest (``sqrt(k / pi) + 1/sqrt(2)`` strides at
    most), so the window holds the same candidates as ranking the whole level, and the window is listed
    in index order, so ties break the same way.
    """
    a_centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    g_centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    picked, first = [], 0
    for size, (rows, cols) in zip(level_sizes, level_shapes, strict=True):
        if rows * cols * per_location != size:
            raise ValueError(f"a level of {size} anchors is not {rows} x {cols} locations of {per_location}")
        k = min(topk, size if mode == "anchors" else rows * cols)  # anchors or locations to take
        k_locations = -(-k // per_location) if mode == "anchors" else k
        half = math.ceil(math.sqrt(k_locations)) + 1
        side_y, side_x = min(2 * half + 1, rows), min(2 * half + 1, cols)
        # The nearest location's row and column, from the level's grid of location centres.
        origin = a_centre[first]
        step_y = a_centre[first + cols * per_location, 0] - origin[0] if rows > 1 else 1.0
        step_x = a_centre[first + per_location, 1] - origin[1] if cols > 1 else 1.0
        row = jnp.round((g_centre[:, 0] - origin[0]) / step_y).astype(jnp.int32)
        col = jnp.round((g_centre[:, 1] - origin[1]) / step_x).astype(jnp.int32)
        top = jnp.clip(row - side_y // 2, 0, rows - side_y)
        left = jnp.clip(col - side_x // 2, 0, cols - side_x)
        window = (top[:, None, None] + jnp.arange(side_y)[None, :, None]) * cols + (
            left[:, None, None] + jnp.arange(side_x)[None, None, :]
        )  # (M, side_y, side_x) location indices, in index order
        locations = window.reshape(window.shape[0], -1)
        if mode == "anchors":  # every anchor of the window ranked on its own centre
            units = (locations[:, :, None] * per_location + jnp.arange(per_location)).reshape(
                window.shape[0], -1
            )
        else:  # each location ranked on its first anchor's centre
            units = locations * per_location
        dist = jnp.sum((g_centre[:, None, :] - a_centre[first + units]) ** 2, axis=-1)
        _, nearest = jax.lax.top_k(-dist, k)
        chosen = jnp.take_along_axis(units, nearest, axis=1)
        if mode == "locations":
            chosen = (chosen[:, :, None] + jnp.arange(per_location)).reshape(chosen.shape[0], -1)
        picked.append(first + chosen)
        first += size
    return jnp.concatenate(picked, axis=1).astype(jnp.int32)


def rpn_targets(
    anchors,
    gt_boxes,
    gt_valid,
    key,
    *,
    num_samples: int | None = 256,
    positive_fraction: float = 0.5,
    std=BOX_STD,
    ignore_boxes=None,
    ignore_valid=None,
    **assignment,
):
    """Labels and box targets of one image's anchors: :func:`assign_anchors`, then sampling.

    At most ``num_samples * positive_fraction`` positives are kept at random, and negatives fill the
    sample up to ``num_samples``; the rest are ignored. ``num_samples`` None keeps every anchor the
    assignment labels (a loss over all of them, such as :func:`maskrcnn.losses.rpn_focal_loss`).

    Args:
      anchors: float32 (A, 4) yxyx pixels.
      gt_boxes: float32 (M, 4) yxyx pixels; gt_valid: bool (M,).
      key: ``jax.random`` key.
      ignore_boxes, ignore_valid, assignment: passed to :func:`assign_anchors` (rule, thresholds, ...).

    Returns:
      labels int32 (A,): 1 positive, -1 negative, 0 ignored; deltas float32 (A, 4): the encoded box of
      each positive anchor's ground truth (zero elsewhere).
    """
    positive, negative, matched = assign_anchors(
        anchors, gt_boxes, gt_valid, ignore_boxes=ignore_boxes, ignore_valid=ignore_valid, **assignment
    )
    if num_samples is not None:
        key_pos, key_neg = jax.random.split(key)
        max_pos = int(num_samples * positive_fraction)
        positive = random_subset(positive, max_pos, key_pos)
        negative = random_subset(negative, num_samples, key_neg, limit=num_samples - positive.sum())
    labels = jnp.where(positive, 1, jnp.where(negative, -1, 0)).astype(jnp.int32)
    target = gt_boxes[matched] if gt_boxes.shape[0] else jnp.zeros_like(anchors)
    deltas = jnp.where(positive[:, None], encode_boxes(target, anchors, std=std), 0.0)
    return labels, deltas.astype(jnp.float32)


def positive_slots(num_rois: int, positive_fraction: float) -> int:
    """The most positives :func:`sample_rois` draws, ``round(num_rois * positive_fraction)``: they fill
    the first slots of its ROIs, so the mask head needs only these."""
    return int(round(num_rois * positive_fraction))


def sample_rois(
    proposals,
    proposal_valid,
    gt_boxes,
    gt_classes,
    gt_masks,
    gt_valid,
    key,
    *,
    num_rois: int,
    positive_fraction: float = 0.33,
    positive_iou: float = 0.5,
    mask_size: int = 28,
    mini_masks: bool = True,
    add_gt_as_proposals: bool = False,
    positive_sampling: str = "uniform",
    std=BOX_STD,
    ignore_boxes=None,
    ignore_valid=None,
):
    """Samples one image's training ROIs and builds their class, box and mask targets.

    A candidate is positive at IoU >= ``positive_iou`` with a ground truth box, negative below it
    (Matterport's ``detection_targets_graph``). Up to ``round(num_rois * positive_fraction)`` positives are
    drawn at random; negatives fill the remaining slots (torchvision's balanced sampler: an image with few
    nuclei still trains the classifier on background). Slots left over are padding (``valid`` False).

    Args:
      proposals: float32 (P, 4) yxyx pixels; proposal_valid: bool (P,).
      gt_boxes: float32 (M, 4); gt_classes: int32 (M,) in 1..K; gt_valid: bool (M,).
      gt_masks: (M, m, m) 0/1 masks; with ``mini_masks`` each is the instance cropped to its box and
        resized (pixel (i, j) covers the box's (i, j)-th cell of an m x m grid); otherwise the full image
        (M, H, W).
      key: ``jax.random`` key.
      add_gt_as_proposals: also offer the ground-truth boxes as candidates (Detectron's default); helps
        the heads train while the RPN is still poor.
      positive_sampling: ``"uniform"`` draws the positives uniformly (Matterport, torchvision), so a
        nucleus weighs by its number of positive candidates, which grows with its size; ``"per_nucleus"``
        draws each with probability proportional to 1 / (its nucleus's positive candidates), every nucleus
        the same total weight: a tile denser than its positive slots spreads them over more nuclei.
      ignore_boxes, ignore_valid: optional (G, 4) and (G,): ground truth the input pipeline had no slot
        for; a candidate at IoU >= ``positive_iou`` with one of them is never a negative (Matterport's
        crowd boxes play this part).

    Returns:
      dict with ``rois`` float32 (R, 4), ``classes`` int32 (R,) (0 = background), ``deltas`` float32
      (R, 4) encoded with ``std`` (zero for negatives), ``masks`` float32 (R, mask_size, mask_size) 0/1
      (zero for negatives), ``positive`` bool (R,), ``valid`` bool (R,); R = ``num_rois``, positives first.
    """
    candidates, cand_valid = proposals, proposal_valid
    if add_gt_as_proposals:
        candidates = jnp.concatenate([proposals, gt_boxes], axis=0)
        cand_valid = jnp.concatenate([proposal_valid, gt_valid], axis=0)
    if candidates.shape[0] < num_rois:
        raise ValueError(f"{candidates.shape[0]} ROI candidates cannot fill {num_rois} training ROIs")

    iou = jnp.where(gt_valid[None, :], pairwise_iou(candidates, gt_boxes), -1.0)  # (P', M)
    best_iou, best_gt = iou.max(axis=1), iou.argmax(axis=1)
    positive = cand_valid & (best_iou >= positive_iou)
    negative = cand_valid & (best_iou < positive_iou)
    if ignore_boxes is not None:
        negative &= _max_iou(candidates, ignore_boxes, ignore_valid) < positive_iou
    key_pos, key_neg = jax.random.split(key)
    weights = None
    if positive_sampling == "per_nucleus":
        per_nucleus = jnp.zeros(gt_boxes.shape[:1]).at[best_gt].add(positive.astype(jnp.float32))
        weights = 1.0 / jnp.maximum(per_nucleus[best_gt], 1.0)
    elif positive_sampling != "uniform":
        raise ValueError(f"positive_sampling={positive_sampling!r}: must be 'uniform' or 'per_nucleus'")
    positive = random_subset(positive, positive_slots(num_rois, positive_fraction), key_pos, weights=weights)
    negative = random_subset(negative, num_rois, key_neg, limit=num_rois - positive.sum())

    # Gather the chosen candidates into num_rois slots, positives first (top_k keeps index order on ties).
    rank, idx = jax.lax.top_k(2 * positive.astype(jnp.int32) + negative.astype(jnp.int32), num_rois)
    valid, is_pos = rank > 0, rank == 2
    rois = jnp.where(valid[:, None], candidates[idx], 0.0)
    matched = best_gt[idx]
    classes = jnp.where(is_pos, gt_classes[matched], 0).astype(jnp.int32)
    deltas = jnp.where(is_pos[:, None], encode_boxes(gt_boxes[matched], rois, std=std), 0.0)
    masks = crop_mask_targets(gt_masks[matched], gt_boxes[matched], rois, mask_size, mini_masks=mini_masks)
    masks = jnp.where(is_pos[:, None, None], masks, 0.0)
    return {
        "rois": rois,
        "classes": classes,
        "deltas": deltas.astype(jnp.float32),
        "masks": masks,
        "positive": is_pos,
        "valid": valid,
    }


def crop_mask_targets(masks, mask_boxes, rois, mask_size: int, *, mini_masks: bool = True):
    """Crops each ROI out of its matched ground-truth mask and resizes it to ``mask_size`` squared.

    Bilinear samples at the centres of a ``mask_size`` grid over the ROI (ROIAlign with one sample per
    bin), then a 0.5 threshold, as Matterport's ``tf.image.crop_and_resize`` + round. A mini-mask is
    framed by one cell of zeros first: the instance is empty outside its tight box, so samples beyond the
    box edge fade to 0 as they do on a full mask, instead of repeating the (always on) border cells.

    Args:
      masks: (R, m, m) mini-masks (with ``mini_masks``: the instance inside ``mask_boxes``) or full-image
        masks (R, H, W).
      mask_boxes: float32 (R, 4) the boxes the mini-masks were cut from (unused for full masks).
      rois: float32 (R, 4) yxyx pixels.

    Returns:
      float32 (R, mask_size, mask_size) of 0/1.
    """
    masks = masks.astype(jnp.float32)
    if mini_masks:
        m_h, m_w = masks.shape[1:]
        y1, x1, y2, x2 = jnp.split(mask_boxes, 4, axis=-1)
        scale = jnp.concatenate(
            [m_h / jnp.maximum(y2 - y1, 1e-6), m_w / jnp.maximum(x2 - x1, 1e-6)] * 2, axis=-1
        )
        frame_rois = (rois - jnp.concatenate([y1, x1, y1, x1], axis=-1)) * scale + 1.0
        masks = jnp.pad(masks, ((0, 0), (1, 1), (1, 1)))
    else:
        frame_rois = rois

    def one(mask, box):
        crop = roi_align(
            mask[None, :, :, None],
            box[None, None],
            mask_size,
            spatial_scale=1.0,
            sampling_ratio=1,
            window=None,  # one channel, under vmap: the window form would run both of its branches
        )
        return crop[0, 0, :, :, 0]

    return (jax.vmap(one)(masks, frame_rois) >= 0.5).astype(jnp.float32)
