"""Compile time, train-step time, inference time and peak memory of the model on this machine.

    make bench-model                      # fast and paper presets, writes experiments/results/model.md
    python experiments/bench_model.py tiny fast
    python experiments/bench_model.py fast --set train.batch_size=16 --set train.mixed_precision=True  # GPU

Each preset runs in its own process (so peak memory is its own): a train step of the "all" stage (every
layer trains) and inference (detections, masks pasted at full size, instance label maps) on a batch of
synthetic nuclei at the preset's image size and batch size. Times are medians of jitted calls after the
compile; per-image figures divide by the batch size.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(__file__), "results", "model.md")
REPEATS = {"tiny": 5, "fast": 3, "paper": 2}


def compiled_programs(config, infer_batch: int | None = None) -> dict:
    """The jitted train step ("all" stage) and inference (detections, masks pasted, label maps) of
    ``config`` on a synthetic batch, compiled: ``train()`` and ``infer()`` each run one call and return its
    seconds; inference takes the first ``infer_batch`` images (default: the whole batch). Beside them: the
    compile times (trace, lowering and XLA's compile, ahead of time: no call is counted in them), the
    model, the batch and the step's key."""
    import dataclasses

    import jax
    import numpy as np

    from maskrcnn import input_pipeline  # first: importing maskrcnn selects Keras' JAX backend
    from maskrcnn.config import StageConfig
    from maskrcnn.model import build_model, detections_to_label_maps
    from maskrcnn.train.step import prepare_stage

    config = dataclasses.replace(config, data=dataclasses.replace(config.data, builder="synthetic"))
    if config.train.mixed_precision:  # as training does: bf16 activations, float32 variables
        import keras

        keras.config.set_dtype_policy("mixed_bfloat16")
    size, batch_size = config.data.image_size, config.train.batch_size
    batch = next(input_pipeline.make_train_iterator(config, epoch=0))
    batch = {k: batch[k] for k in input_pipeline.MODEL_INPUTS}
    import keras

    keras.utils.set_random_seed(0)  # the same random weights in every run, so the same detections
    model = build_model(config.model, size, mini_masks=config.data.mini_mask_size is not None)
    _, _, _, state, step = prepare_stage(model, config.train, StageConfig("all", "all", 1, 1e-3), 1)

    def timed(fn, *args):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        return out, time.perf_counter() - start

    def compiled(fn, *args):
        """``fn`` traced, lowered and compiled for ``args``, and the seconds that took (no call runs)."""
        start = time.perf_counter()
        program = fn.trace(*args).lower().compile()
        return program, time.perf_counter() - start

    key = jax.random.PRNGKey(0)
    step, compile_train = compiled(step, state, batch, key)
    last = {}
    (last["state"], last["metrics"]), _ = timed(step, state, batch, key)  # a first run, not timed

    def train() -> float:
        (last["state"], last["metrics"]), seconds = timed(step, last["state"], batch, key)
        return seconds

    def infer_fn(variables, images):
        trainable, non_trainable = variables
        detections = model.stateless_call(trainable, non_trainable, images)[0]
        return detections_to_label_maps(detections, (size, size)), detections["valid"].sum(axis=1)

    variables = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )
    images = batch["image"][: infer_batch or batch_size]
    infer_fn, compile_infer = compiled(jax.jit(infer_fn), variables, images)
    _, found = timed(infer_fn, variables, images)[0]

    def infer() -> float:
        return timed(infer_fn, variables, images)[1]

    return {
        "train": train,
        "infer": infer,
        "train_batch": batch_size,
        "infer_batch": len(images),
        "model": model,
        "batch": batch,
        "key": key,
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "compile_train_s": compile_train,
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
        "model": p["model"],
        "batch": p["batch"],
        "key": p["key"],
        "device": p["device"],
        "compile_train_s": p["compile_train_s"],
        "train_step_per_image_s": statistics.median(train_times) / p["train_batch"],
        "compile_infer_s": p["compile_infer_s"],
        "infer_per_image_s": statistics.median(infer_times) / p["infer_batch"],
        "detections_per_image": p["detections_per_image"],
        "loss_finite": p["loss_finite"](),
    }


def measure(preset: str, overrides: list[str]) -> dict:
    import jax.numpy as jnp

    from maskrcnn.config import apply_overrides, load_config

    config = apply_overrides(load_config(preset), overrides)  # e.g. a batch that fills a GPU
    repeats = REPEATS[preset]
    whole = whole_program(config, repeats)
    model, batch, key = whole.pop("model"), whole.pop("batch"), whole.pop("key")
    from experiments.stages import inference_stages, train_stages

    return {
        **whole,
        "inference_stages": inference_stages(model, batch["image"], repeats),
        "train_stages": train_stages(model, {k: jnp.asarray(v) for k, v in batch.items()}, key, repeats),
        "preset": preset,
        "backbone": config.model.backbone,
        "image_size": config.data.image_size,
        "batch_size": config.train.batch_size,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


# What the figures mean against the goals (fast inference < 0.5 s per image, compile < 60 s on 2 cores).
NOTES = """
## Reading the figures

Work per 256 px image of the `fast` preset at inference, counted from the layer shapes (multiply-adds):
ResNet50 5.3 G, FPN 3.7 G, the RPN's shared 3x3 conv with 512 channels 6.4 G (4.8 G of it on P2),
the box head's 7x7x256 -> 1024 FC over 1,000 proposals 13.9 G; about 29 GMAC = 58 GFLOP before the
mask head, which adds 0.5 GMAC per detection (four 3x3 convs of 256 channels at 14x14 and the
deconvolution). Fewer proposals at inference cut the box head's share in proportion
(`--set model.post_nms_rois_inference=300`: 70% less of it), at the cost of recall.

What the stage tables said (`python experiments/bench_model.py fast`, this 2-core CPU):
- Before issue 18's rewrites (2026-12-02, commit 0fc5e59): train step 10.38 s per image, inference
  3.46 s, compile 67.4 s + 25.0 s. The box head was 45% of inference (its 7x7 FC, written as a
  convolution, ran at about 20 GFLOP/s), and in the train step the mask head's forward + backward took
  3.7 s of the 7.3 s the stages summed to: XLA's CPU gradient of the 2x2 transposed convolution.
- After the box head's FC became one matrix product and the deconvolution a product and a reshape
  (commit 3efb413; the same numbers, `experiments/results/forms.md`): train step 2.32 s per image,
  inference 1.59 s, compile 40.6 s + 11.0 s, in a later run the same day (the backbone, which did not
  change, also ran 1.4x faster in it: machine drift, so the same-run ratios of `forms.md` are the
  measure of each change). ROI pooling was then the largest inference stage (41% for the box head's,
  38% with the mask head's), which the ROIAlign rewrite of the same commit cut 3.4-3.8x (`forms.md`).
  The train step is led by the mask head's 3x3 convolutions (their
  CPU gradients cost 5x their forward) and the backbone's backward pass.
- After the ROIAlign rewrite (2026-12-03, commit e54f389, measured alone): train step 3.80 s
  per image, inference 2.27 s, compile 46.8 s + 29.3 s, on a slower day for this machine (the unchanged
  backbone's inference 95 ms against 63 ms on 2026-12-02). Against the backbone in the same run, ROI
  pooling for the box head went from 10.1x the backbone's inference time to 4.8x; the train step is
  still led by the mask head's forward + backward (1.87 s of the 3.45 s the stages sum to) and the
  backbone's backward.
- Compile, from this run on (2026-12-03, after the peer comparison below), is timed ahead of time
  (trace, lower, compile) with no call counted; the earlier figures were the first call's time, one
  execution of the program included (for the `fast` train step, 4 images at the per-image time: 15 s of
  the 46.8 s above). The first run of this kind: train step compile
  32.8 s cold and 10.0 s warm (a second process with the persistent compilation cache the `maskrcnn`
  commands use: what remains is mostly tracing and lowering), inference 7.6 s and 1.3 s, on a slow day
  (the unchanged backbone's inference 135 ms, against 95 ms the same morning): the goal of a compile
  under 30 s is met warm, and cold in `peer.md`'s run (26.1 s) but not in this one.
- Against torchvision at the same shapes, calls interleaved in one run (`make bench-peer`, `peer.md`,
  2026-12-03): inference 0.85x its time per image, train step 1.70x at the same work (both mask heads
  over 84 ROIs an image; 2.72x against torchvision's own 16 positives an image with random weights).
  The train-step gap is spread over the step, not one stage: backbone + FPN forward + backward 1.97x,
  the mask head 1.58x, the rest 1.67x, while the forward passes are on par; XLA's CPU convolution
  gradients against torch's oneDNN ones. Our cold compile of the train step was 26.1 s in that run.
  (2026-12-02's 1.10x and 3.2x ran ours and theirs one after the other, against torchvision's own
  positives.)
- ROIAlign's window form for the mask head (2026-12-03; `roi_window.md` holds the same-run comparison
  with the gather form: 0.90x at inference, 0.92x in the train step): this run, with random weights
  seeded (0) from now on, gives train step 1.79 s per image, inference 1.107 s and compile 17.9 / 5.4 s
  cold / warm, on a fast hour for this machine (the unchanged backbone's inference 49 ms, against 135
  ms in the run above). The box head's ROI pooling (26%) and the mask head with its pooling (46%) lead
  inference, with random weights whose boxes mostly miss the window. Against torchvision (`peer.md`
  and its git history, three runs that day): inference 0.85x, 0.78x and 0.80x, train step 1.70x, 1.38x
  and 1.67x at the same work; the run-to-run spread of the train-step ratio is larger than what the
  window form moved.
"""


def stage_tables(rows) -> list[str]:
    """The per-stage tables (experiments/stages.py) of each preset, per image, beside the whole program."""
    lines = []
    for r in rows:
        b = r["batch_size"]
        inference = r["inference_stages"]
        total = sum(t for _, t in inference)
        lines += [
            "",
            f"## Where the time goes: `{r['preset']}` ({r['device']}, batch {b}, per image)",
            "",
            "Each stage jitted on its own on the previous stage's outputs (`experiments/stages.py`); the "
            "whole program fuses across the borders, so its time is not the sum exactly.",
            "",
            "| inference stage | ms per image | share |",
            "|---|---:|---:|",
            *(f"| {name} | {1000 * t / b:.1f} | {t / total:.0%} |" for name, t in inference),
            f"| **sum of the stages** | **{1000 * total / b:.1f}** | |",
            f"| whole inference, one jit | {1000 * r['infer_per_image_s']:.1f} | |",
            "",
            "| train-step stage | forward (ms per image) | forward + backward (ms per image) |",
            "|---|---:|---:|",
        ]
        fwd = bwd = 0.0
        for name, forward, both in r["train_stages"]:
            fwd, bwd = fwd + forward, bwd + (both if both is not None else forward)
            shown = f"{1000 * both / b:.1f}" if both is not None else "- (no gradient)"
            lines.append(f"| {name} | {1000 * forward / b:.1f} | {shown} |")
        lines += [
            f"| **sum of the stages** | **{1000 * fwd / b:.1f}** | **{1000 * bwd / b:.1f}** |",
            f"| whole train step (with the optimizer), one jit | "
            f"| {1000 * r['train_step_per_image_s']:.1f} |",
        ]
    return lines


def warm_compile(preset: str, overrides: list[str]) -> dict:
    """Compile times of ``preset``'s programs in a process whose persistent compilation cache (the one
    ``maskrcnn`` commands use, :mod:`maskrcnn.compile_cache`) already holds them."""
    from maskrcnn.config import apply_overrides, load_config

    p = compiled_programs(apply_overrides(load_config(preset), overrides))
    return {"warm_compile_train_s": p["compile_train_s"], "warm_compile_infer_s": p["compile_infer_s"]}


def in_child(argv: list[str], env: dict | None = None) -> dict:
    """Run ``python *argv`` in a process of its own and return the JSON object its last line prints."""
    out = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(presets, overrides):
    import shutil
    import tempfile

    rows = []
    sets = [a for o in overrides for a in ("--set", o)]
    for preset in presets:
        print(f"measuring {preset} ...", flush=True)
        cache = tempfile.mkdtemp(prefix="bench-model-cache-")
        try:  # the first process fills an empty compilation cache, the second loads from it
            rows.append(in_child([__file__, "--one", preset, "--cache", cache, *sets]))
            rows[-1].update(in_child([__file__, "--warm-compile", preset, "--cache", cache, *sets]))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(rows[-1], flush=True)
    import jax

    lines = [
        "# Model speed and memory on this machine",
        "",
        f"Made by `make bench-model` (`python experiments/bench_model.py {' '.join(presets + sets)}`), "
        f"{time.strftime('%Y-%m-%d')}.",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), device {rows[0]['device']}, "
        f"jax {jax.__version__}. "
        "Train step: the 'all' stage (every layer trains), one jitted step; inference: detections, masks "
        "pasted at full size and instance label maps. Medians after the compile.",
        "",
        "Compile: tracing, lowering and XLA's compile, no call counted; cold: the first process, with an "
        "empty persistent compilation cache; warm: a second process loading from it, as a second "
        "`maskrcnn` run does (`maskrcnn/compile_cache.py`).",
        "",
        "| preset | backbone | image | batch | compile train step, cold / warm (s) "
        "| train step per image (s) | compile inference, cold / warm (s) | inference per image (s) "
        "| peak memory (GiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['backbone']} | {r['image_size']} | {r['batch_size']} "
            f"| {r['compile_train_s']:.1f} / {r['warm_compile_train_s']:.1f} "
            f"| {r['train_step_per_image_s']:.2f} "
            f"| {r['compile_infer_s']:.1f} / {r['warm_compile_infer_s']:.1f} "
            f"| {r['infer_per_image_s']:.3f} | {r['peak_rss_gib']:.1f} |"
        )
    lines += stage_tables(rows)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n" + NOTES)
    print("\n".join(lines))


def _parse(argv):
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("presets", nargs="*", default=["fast", "paper"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process measuring one preset
    p.add_argument("--warm-compile", help=argparse.SUPPRESS)  # the child compiling one from the cache
    p.add_argument("--cache", help=argparse.SUPPRESS)  # the children's compilation cache
    return p.parse_args(argv)


if __name__ == "__main__":
    args = _parse(sys.argv[1:])
    if args.cache:
        from maskrcnn import compile_cache

        compile_cache.enable({compile_cache.ENV: args.cache})
    if args.one:
        print(json.dumps(measure(args.one, args.set)))
    elif args.warm_compile:
        print(json.dumps(warm_compile(args.warm_compile, args.set)))
    else:
        main(args.presets, args.set)
