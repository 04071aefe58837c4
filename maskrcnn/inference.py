"""Running a trained model: instance label maps for batches of images, and the evaluation of a split.

The jitted prediction runs the network, pastes every detection's mask at the original resolution and
resolves overlaps by score, all on the device; only the label maps and per-detection scores and classes
come back to the host. Evaluation turns them into PanNuke-format masks and scores them with the numpy
metrics of :mod:`maskrcnn.evaluation`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from tqdm.auto import tqdm

from maskrcnn import evaluation, input_pipeline, pannuke
from maskrcnn.config import Config
from maskrcnn.model import MaskRCNN, detections_to_label_maps


def make_predict_fn(model: MaskRCNN, output_size: tuple[int, int], scale: float, mask_threshold: float = 0.5):
    """Returns ``predict(images) -> dict`` (jitted) for uint8 (B, S, S, 3) images the model's size.

    The result holds ``labels`` int32 (B, H, W) at ``output_size`` (detection d is instance d + 1),
    ``scores`` float32 (B, D), ``classes`` int32 (B, D) in 1..K and ``valid`` bool (B, D).
    """

    @jax.jit
    def run(variables, images):
        trainable, non_trainable = variables
        detections, _ = model.stateless_call(trainable, non_trainable, images)
        labels = detections_to_label_maps(detections, output_size, scale, mask_threshold)
        return {"labels": labels, **{k: detections[k] for k in ("scores", "classes", "valid")}}

    def predict(images):
        variables = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )
        return jax.device_get(run(variables, images))

    return predict


def evaluate(
    config: Config,
    model: MaskRCNN,
    split: str,
    out_dir: str,
    *,
    max_overlays: int = 16,
    progress: bool = True,
    references: dict[str, dict[str, float]] | None = None,
) -> dict:
    """Scores ``model`` on ``split`` by the PanNuke protocol and writes the report into ``out_dir``.

    Writes ``report.md`` (the per-tissue table, per-class PQ, mask AP), ``tissues.csv``, ``metrics.json``,
    ``predictions.npz`` (true and predicted instance and class maps) and the first ``max_overlays``
    overlay pictures. Returns the :func:`maskrcnn.evaluation.pannuke_metrics` dict plus ``aji``, ``map50`` and
    ``coco`` (:func:`maskrcnn.evaluation.coco_mask_ap`). ``references``: published per-tissue bPQ set
    beside ours (:func:`maskrcnn.evaluation.read_references`).
    """
    predict = make_predict_fn(
        model, (input_pipeline.PANNUKE_SIZE,) * 2, config.data.scale, config.model.mask_threshold
    )
    tissues, images, true_inst, true_cls, pred_inst, pred_cls, ap_inputs = [], [], [], [], [], [], []
    total = len(input_pipeline.open_split(config.data, split))
    bar = tqdm(total=total, desc=f"evaluate {split}", disable=not progress, dynamic_ncols=True)
    for batch in input_pipeline.make_eval_iterator(config, split):
        out = predict(batch["image"])
        for i in np.nonzero(batch["example_valid"])[0]:
            labels = out["labels"][i]
            detection_classes = np.where(out["valid"][i], out["classes"][i], 0)
            tissues.append(pannuke.PANNUKE_TISSUES[int(batch["tissue"][i])])
            images.append(resize_back(batch["image"][i]))
            true_inst.append(batch["instances"][i])
            true_cls.append(batch["class_map"][i])
            pred_inst.append(labels)
            pred_cls.append(np.concatenate([[0], detection_classes]).astype(np.uint8)[labels])
            ids = np.unique(labels)[1:]
            ap_inputs.append(
                (
                    evaluation.instances_from_label_map(batch["instances"][i]),
                    labels[None] == ids[:, None, None],
                    out["scores"][i][ids - 1],
                )
            )
            bar.update(1)
    bar.close()
    true_masks = pannuke.pannuke_masks(np.stack(true_inst), np.stack(true_cls))
    pred_masks = pannuke.pannuke_masks(np.stack(pred_inst), np.stack(pred_cls))
    # Only the variant's classes take part: a neoplastic model is scored on neoplastic nuclei (binary PQ).
    classes = pannuke.variant_of(config.data.variant).scored_classes
    metrics = evaluation.pannuke_metrics(true_masks, pred_masks, tissues, classes=classes)
    metrics["aji"] = mean_aji(true_inst, pred_inst)
    metrics["map50"] = evaluation.mean_average_precision(ap_inputs, 0.5)
    metrics["coco"] = evaluation.coco_mask_ap(ap_inputs)
    title = f"{config.name} on {config.data.variant} {split} ({len(tissues)} images)"
    extra = {
        "AJI (binary, mean over images with nuclei)": metrics["aji"],
        "mask mAP@0.5 (mean of per-image AP, the seed paper's figure)": metrics["map50"],
        "COCO mask AP@[.5:.95]": metrics["coco"]["ap"],
        "COCO mask AP50": metrics["coco"]["ap50"],
    }
    evaluation.write_report(metrics, out_dir, title=title, extra=extra, references=references)
    np.savez_compressed(
        os.path.join(out_dir, "predictions.npz"),
        true_instances=np.stack(true_inst),
        true_classes=np.stack(true_cls),
        pred_instances=np.stack(pred_inst),
        pred_classes=np.stack(pred_cls),
        tissues=np.array(tissues),
    )
    evaluation.save_overlays(
        images, true_inst, pred_inst, os.path.join(out_dir, "overlays"), limit=max_overlays
    )
    return metrics


def mean_aji(true_instances, pred_instances) -> float:
    """Binary AJI (all nuclei of the variant, any class), averaged over the images whose truth has some."""
    values = [evaluation.aji(t, p) for t, p in zip(true_instances, pred_instances, strict=True) if np.any(t)]
    return float(np.mean(values)) if values else float("nan")


def resize_back(image: np.ndarray) -> np.ndarray:
    """The model's S x S input image at PanNuke's 256 x 256 (nearest), for overlay pictures."""
    size = image.shape[0]
    if size == input_pipeline.PANNUKE_SIZE:
        return image
    src = ((np.arange(input_pipeline.PANNUKE_SIZE) + 0.5) * size / input_pipeline.PANNUKE_SIZE).astype(int)
    return image[np.ix_(src, src)]
