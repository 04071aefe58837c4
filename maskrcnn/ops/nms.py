"""Exact greedy non-maximum suppression with static shapes, computed tile by tile on the IoU matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskrcnn.ops.boxes import pairwise_iou

# Boxes are visited in tiles of this many: each tile is suppressed by the boxes kept in earlier tiles,
# then resolved within itself by a short fixed-point iteration. On the CPU tiles of 64-512 are within 30%
# of each other (experiments/results/ops.md); a GPU may prefer 256-512 (fewer loop iterations).
TILE = 128


def nms(boxes, scores, *, iou_threshold: float, max_output_size: int, tile_size: int = TILE):
    """Greedy NMS: the boxes the classic algorithm keeps, in the order it keeps them.

    The classic algorithm sorts the boxes by descending score (ties by lower index), then walks the list
    and keeps a box unless its IoU with an already kept box is greater than ``iou_threshold``. Boxes whose
    score is -inf (or NaN) are padding: never kept. Zero-area boxes have IoU 0 with everything, so they
    are never suppressed. Works under ``jax.vmap`` for a batch.

    Here the sorted boxes are handled ``tile_size`` at a time: a tile's boxes are first suppressed by the
    boxes kept in earlier tiles (tile-by-tile IoU blocks against the kept boxes only), then the tile is
    resolved within itself by iterating ``keep[j] = candidate[j] and no kept i < j overlaps j`` to its
    fixed point, which is the greedy answer (box j depends only on boxes before it, so the iteration
    settles box by box). Tiles stop being visited once ``max_output_size`` boxes are kept or only
    padding is left.

    Args:
      boxes: float (N, 4) yxyx. scores: float (N,).
      iou_threshold: a box overlapping a kept box by IoU > this is suppressed.
      max_output_size: the number of indices returned (static).

    Returns:
      indices int32 (max_output_size,) into ``boxes``, -1 past ``num_valid``; num_valid int32 ().
    """
    n = boxes.shape[0]
    if n == 0:
        return jnp.full((max_output_size,), -1, jnp.int32), jnp.zeros((), jnp.int32)
    tile = min(tile_size, n)
    num_tiles = -(-n // tile)
    padded = num_tiles * tile

    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores.astype(jnp.float32))
    order = jnp.argsort(-scores, stable=True).astype(jnp.int32)
    boxes = jnp.pad(boxes.astype(jnp.float32)[order], ((0, padded - n), (0, 0)))
    candidate = jnp.pad(scores[order] > -jnp.inf, (0, padded - n))
    boxes = jax.lax.stop_gradient(boxes)

    # The boxes kept so far, packed at the front of a buffer with room for one more tile (rounded up to
    # whole tiles, so that every chunk read by `cross` is in bounds).
    room = (-(-max_output_size // tile) + 1) * tile

    def visit(state):
        t, kept_boxes, kept_pos, count = state
        start = t * tile
        tile_boxes = jax.lax.dynamic_slice_in_dim(boxes, start, tile)
        tile_candidate = jax.lax.dynamic_slice_in_dim(candidate, start, tile)

        # Suppression by the boxes kept in earlier tiles, a tile-sized chunk of them at a time, so the work
        # grows with the number kept rather than with max_output_size.
        def cross(c_alive):
            c, alive = c_alive
            chunk = jax.lax.dynamic_slice_in_dim(kept_boxes, c * tile, tile)
            # (kept chunk, tile), reduced over its major axis: vectorised along the tile on the CPU.
            overlap = (pairwise_iou(chunk, tile_boxes) > iou_threshold) & (
                c * tile + jnp.arange(tile) < count
            )[:, None]
            return c + 1, alive & ~jnp.any(overlap, axis=0)

        _, alive = jax.lax.while_loop(lambda c_alive: c_alive[0] * tile < count, cross, (0, tile_candidate))
        # Greedy within the tile: only earlier boxes of the tile can suppress a later one.
        inner = (pairwise_iou(tile_boxes, tile_boxes) > iou_threshold) & (
            jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]
        )

        def settle(s):
            current, _ = s
            new = alive & ~jnp.any(inner & current[:, None], axis=0)
            return new, jnp.any(new != current)

        tile_keep, _ = jax.lax.while_loop(lambda s: s[1], settle, (alive, jnp.array(True)))
        (local,) = jnp.nonzero(tile_keep, size=tile, fill_value=0)  # kept boxes of the tile, in order
        kept_boxes = jax.lax.dynamic_update_slice_in_dim(kept_boxes, tile_boxes[local], count, axis=0)
        kept_pos = jax.lax.dynamic_update_slice_in_dim(
            kept_pos, start + local.astype(jnp.int32), count, axis=0
        )
        return t + 1, kept_boxes, kept_pos, count + jnp.sum(tile_keep, dtype=jnp.int32)

    def more(state):
        t, _, _, count = state
        return (t < num_tiles) & (count < max_output_size) & candidate[jnp.minimum(t * tile, padded - 1)]

    init = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((room, 4), jnp.float32),
        jnp.zeros((room,), jnp.int32),
        jnp.zeros((), jnp.int32),
    )
    _, _, kept_pos, count = jax.lax.while_loop(more, visit, init)
    num_valid = jnp.minimum(count, max_output_size)
    indices = jnp.where(jnp.arange(max_output_size) < num_valid, order[kept_pos[:max_output_size]], -1)
    return indices.astype(jnp.int32), num_valid
