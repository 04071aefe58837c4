"""The model's two programs as the benchmarks run them: the train step and inference, on a synthetic batch.

:func:`setup` builds them (random weights seeded, so every run makes the same detections), and
:func:`compiled_programs` compiles them ahead of time and returns one-call timers; ``bench_model.py``,
``bench_peer.py``, ``bench_census.py`` and ``bench_roi_window.py`` use them.
"""

from __future__ import annotations

import dataclasses
import time

import harness


def setup(config, infer_batch: int | None = None) -> dict:
    """The jitted train step ("all" stage: every layer trains) and inference (detections, masks pasted,
    label maps) of ``config``, not yet compiled, with the model, a synthetic batch, the step's starting
    state and key, and the inference inputs (the first ``infer_batch`` images, default the batch)."""
    import jax
    import keras

    from maskrcnn import input_pipeline  # first: importing maskrcnn selects Keras' JAX backend
    from maskrcnn.config import StageConfig
    from maskrcnn.model import build_model, detections_to_label_maps
    from maskrcnn.train.step import prepare_stage

    config = dataclasses.replace(config, data=dataclasses.replace(config.data, builder="synthetic"))
    if config.train.mixed_precision:  # as training does: bf16 activations, float32 variables
        keras.config.set_dtype_policy("mixed_bfloat16")
    size = config.data.image_size
    batch = next(input_pipeline.make_train_iterator(config, epoch=0))
    batch = {k: batch[k] for k in input_pipeline.MODEL_INPUTS}
    keras.utils.set_random_seed(0)  # the same random weights in every run, so the same detections
    model = build_model(config.model, size, mini_masks=config.data.mini_mask_size is not None)
    stage = prepare_stage(model, config.train, StageConfig("all", "all", 1, 1e-3), 1)

    def infer(variables, images):
        trainable, non_trainable = variables
        detections = model.stateless_call(trainable, non_trainable, images)[0]
        return detections_to_label_maps(detections, (size, size)), detections["valid"].sum(axis=1)

    variables = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )
    return {
        "config": config,
        "model": model,
        "batch": batch,
        "key": jax.random.PRNGKey(0),
        "state": stage.state,
        "step": stage.step,
        "infer": jax.jit(infer),
        "infer_args": (variables, batch["image"][: infer_batch or config.train.batch_size]),
    }


def compile_phases(fn, *args) -> tuple[object, dict]:
    """``fn`` traced, lowered and compiled for ``args`` (no call runs), and the seconds of each phase:
    ``trace`` (Python: the model's code runs once on abstract values), ``lower`` (to StableHLO) and
    ``compile`` (XLA's passes and code generation), with ``total`` and the lowered program's ``ops``."""
    start = time.perf_counter()
    traced = fn.trace(*args)
    after_trace = time.perf_counter()
    lowered = traced.lower()
    after_lower = time.perf_counter()
    program = lowered.compile()
    end = time.perf_counter()
    ops = sum(1 for line in lowered.as_text(dialect="hlo").splitlines() if " = " in line)
    return program, {
        "trace": after_trace - start,
        "lower": after_lower - after_trace,
        "compile": end - after_lower,
        "total": end - start,
        "ops": ops,
    }


def _compile(fn, *args):
    program, phases = compile_phases(fn, *args)
    return program, phases["total"]


def compiled_programs(config, infer_batch: int | None = None) -> dict:
    """:func:`setup`'s programs compiled ahead of time: ``train()`` and ``infer()`` each run one call and
    return its seconds. Beside them: the compile times (trace, lowering and XLA's compile; no call counted
    in them), the model, the batch, the step's key, the device and the detections per image."""
    import numpy as np

    p = setup(config, infer_batch)
    step, phases = compile_phases(p["step"], p["state"], p["batch"], p["key"])
    compile_train = phases["total"]
    last = {}
    (last["state"], last["metrics"]), _ = harness.timed(step, p["state"], p["batch"], p["key"])  # untimed

    def train() -> float:
        (last["state"], last["metrics"]), seconds = harness.timed(step, last["state"], p["batch"], p["key"])
        return seconds

    infer, compile_infer = _compile(p["infer"], *p["infer_args"])
    _, found = harness.timed(infer, *p["infer_args"])[0]
    return {
        **p,
        "train": train,
        "infer": lambda: harness.timed(infer, *p["infer_args"])[1],
        "train_batch": config.train.batch_size,
        "infer_batch": len(p["infer_args"][1]),
        "device": harness.device(),
        "compile_train_s": compile_train,
        "compile_train_phases": phases,
        "compile_infer_s": compile_infer,
        "detections_per_image": float(np.mean(found)),
        "loss_finite": lambda: bool(np.isfinite(float(last["metrics"]["loss"]))),
    }


def whole_program(config, repeats: int, infer_batch: int | None = None) -> dict:
    """Compile and median times of :func:`compiled_programs`' train step and inference, ``repeats`` calls
    each (all the train steps first). Returns the figures with the model and batch that made them."""
    p = compiled_programs(config, infer_batch)
    train_times = [p["train"]() for _ in range(repeats)]
    infer_times = [p["infer"]() for _ in range(repeats)]
    return {
        **{
            k: p[k]
            for k in (
                "model",
                "batch",
                "key",
                "device",
                "compile_train_s",
                "compile_train_phases",
                "compile_infer_s",
            )
        },
        "train_step_per_image_s": harness.median(train_times) / p["train_batch"],
        "infer_per_image_s": harness.median(infer_times) / p["infer_batch"],
        "detections_per_image": p["detections_per_image"],
        "loss_finite": p["loss_finite"](),
    }
