import numpy as np
import pytest

from maskrcnn.inference import mean_aji


def test_mean_aji_known_answer_skips_images_without_nuclei():
    same = np.zeros((6, 6), np.int32)
    same[1:3, 1:3] = 1
    truth = np.zeros((6, 6), np.int32)
    truth[0:2, 0:2] = 7
    pred = np.zeros((6, 6), np.int32)
    pred[0:2, 0:4] = 3  # covers the true 4 px and 4 more: intersection 4, union 8
    empty, spurious = np.zeros((6, 6), np.int32), same.copy()
    assert mean_aji([same, truth, empty], [same, pred, spurious]) == 0.75
    assert np.isnan(mean_aji([empty], [spurious]))


class _StubModel:
    """Stands in for MaskRCNN in `inference.evaluate`: fixed detections, chosen by the image's first pixel."""

    def __init__(self, detections_per_image):
        import jax.numpy as jnp

        # detections_per_image[k]: boxes (y1, x1, y2, x2) in model pixels of image k (first pixel value k)
        slots = max(len(d) for d in detections_per_image)
        boxes = np.zeros((len(detections_per_image), slots, 4), np.float32)
        valid = np.zeros((len(detections_per_image), slots), bool)
        for k, dets in enumerate(detections_per_image):
            boxes[k, : len(dets)] = dets
            valid[k, : len(dets)] = True
        self.boxes, self.valid = jnp.asarray(boxes), jnp.asarray(valid)
        self.trainable_variables, self.non_trainable_variables = [], []

    def stateless_call(self, trainable, non_trainable, images):
        import jax.numpy as jnp

        which = images[:, 0, 0, 0].astype(jnp.int32)
        boxes, valid = self.boxes[which], self.valid[which]
        d = boxes.shape[1]
        scores = jnp.where(valid, 0.9 - 0.1 * jnp.arange(d), 0.0)
        detections = {
            "boxes": boxes,
            "scores": scores,
            "classes": jnp.ones(valid.shape, jnp.int32),
            "masks": jnp.ones((*valid.shape, 28, 28)),  # a full mask: the detection is its box
            "valid": valid,
        }
        return detections, non_trainable


def test_evaluate_on_two_images_with_a_stub_model_gives_the_pq_worked_by_hand(tmp_path):
    # Two 256 px Breast and Colon images, each with two square nuclei. The stub finds both of the first
    # image's exactly (PQ 1), and on the second one of them plus a false positive (TP 1, FP 1, FN 1:
    # DQ = 1 / (1 + 0.5 + 0.5) = 0.5, SQ 1, PQ 0.5). bPQ is the mean over tissues: 0.75; mAP@0.5 is
    # the mean of AP 1 and AP 0.5 (the true match ranks first): 0.75.
    import dataclasses
    import json

    from maskrcnn.config import load_config
    from maskrcnn.inference import evaluate

    folder = tmp_path / "fold"
    (folder / "images").mkdir(parents=True)
    images = np.full((2, 256, 256, 3), 200.0)
    images[:, 0, 0, 0] = (0, 1)  # tells the stub which image it sees
    masks = np.zeros((2, 256, 256, 6))
    masks[..., 5] = 1
    squares = [((10, 10, 30, 30), (100, 120, 130, 150)), ((40, 40, 60, 70), (200, 10, 220, 40))]
    for k, pair in enumerate(squares):
        for ident, (y1, x1, y2, x2) in enumerate(pair, start=1):
            masks[k, y1:y2, x1:x2, 0], masks[k, y1:y2, x1:x2, 5] = ident, 0
    np.save(folder / "images" / "images.npy", images)
    np.save(folder / "images" / "types.npy", np.array(["Breast", "Colon"]))
    np.save(folder / "masks.npy", masks)
    config = load_config("tiny")
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, scale=1.0),
        train=dataclasses.replace(config.train, batch_size=2),
    )
    found = [list(squares[0]), [squares[1][0], (150, 150, 170, 170)]]
    out = tmp_path / "eval"
    out.mkdir()
    metrics = evaluate(config, _StubModel(found), str(folder), str(out), progress=False, max_overlays=0)
    near = lambda x: pytest.approx(x, abs=1e-5)  # noqa: E731 (SQ carries get_fast_pq's 1e-6 epsilon)
    assert metrics["per_tissue"]["Breast"]["bpq"] == near(1.0)
    assert metrics["per_tissue"]["Colon"]["bpq"] == near(0.5)
    assert metrics["bpq"] == near(0.75) and metrics["map50"] == 0.75
    saved = np.load(out / "predictions.npz")
    second = saved["pred_instances"][1]
    assert (second == 1).sum() == 20 * 30 and (second == 2).sum() == 20 * 20
    assert json.loads((out / "metrics.json").read_text())["bpq"] == near(0.75)
