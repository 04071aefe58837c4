"""Compile time, train-step time, inference time and peak memory of the model, and where the time goes.

    make bench-model                      # fast and paper presets, writes experiments/results/model.md
    python experiments/bench_model.py tiny fast
    python experiments/bench_model.py fast --set train.batch_size=16 --set train.mixed_precision=True  # GPU

Each preset runs in its own process (so peak memory is its own): a train step of the "all" stage (every
layer trains) and inference (detections, masks pasted at full size, instance label maps) on a batch of
synthetic nuclei at the preset's image size and batch size (``programs.py``). Times are medians of jitted
calls after the compile; per-image figures divide by the batch size. Compile is timed ahead of time (trace,
lowering, XLA's compile; no call counted): cold in a first process with an empty persistent compilation
cache, warm in a second loading from it, as a second ``maskrcnn`` run does. Then every stage is jitted
alone (``stages.py``) so that a change can say which row it moved.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile

import harness

RESULTS = os.path.join(harness.RESULTS, "model.md")
REPEATS = {"tiny": 5, "learning": 5, "demo": 5, "fast": 3, "paper": 2}


def measure(preset: str, overrides: list[str]) -> dict:
    """Whole-program figures and the stage tables of ``preset``, in this process."""
    import jax.numpy as jnp
    from programs import whole_program
    from stages import inference_stages, train_stages

    from maskrcnn.config import apply_overrides, load_config

    config = apply_overrides(load_config(preset), overrides)
    repeats = REPEATS.get(preset, 3)
    whole = whole_program(config, repeats)
    model, batch, key = whole.pop("model"), whole.pop("batch"), whole.pop("key")
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


def warm_compile(preset: str, overrides: list[str]) -> dict:
    """Compile times of ``preset``'s programs in a process whose persistent compilation cache already
    holds them."""
    from programs import compiled_programs

    from maskrcnn.config import apply_overrides, load_config

    p = compiled_programs(apply_overrides(load_config(preset), overrides))
    return {"warm_compile_train_s": p["compile_train_s"], "warm_compile_infer_s": p["compile_infer_s"]}


def stage_tables(rows) -> list[str]:
    """The per-stage tables of each preset, per image, beside the whole program, with each stage's share."""
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
            "| train-step stage | forward (ms per image) | forward + backward (ms per image) | share |",
            "|---|---:|---:|---:|",
        ]
        steps = [
            (name, forward, both if both is not None else forward)
            for name, forward, both in r["train_stages"]
        ]
        fwd, bwd = sum(s[1] for s in steps), sum(s[2] for s in steps)
        for name, forward, both in steps:
            lines.append(f"| {name} | {1000 * forward / b:.1f} | {1000 * both / b:.1f} | {both / bwd:.0%} |")
        lines += [
            f"| **sum of the stages** | **{1000 * fwd / b:.1f}** | **{1000 * bwd / b:.1f}** | |",
            f"| whole train step (with the optimizer), one jit | "
            f"| {1000 * r['train_step_per_image_s']:.1f} | |",
        ]
    return lines


def main(presets, overrides) -> None:
    rows = []
    sets = [a for o in overrides for a in ("--set", o)]
    for preset in presets:
        print(f"measuring {preset} ...", flush=True)
        cache = tempfile.mkdtemp(prefix="bench-model-cache-")
        try:  # the first process fills an empty compilation cache, the second loads from it
            rows.append(harness.in_child([__file__, "--one", preset, "--cache", cache, *sets]))
            rows[-1].update(harness.in_child([__file__, "--warm-compile", preset, "--cache", cache, *sets]))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    command = f"python experiments/bench_model.py {' '.join(presets + sets)}"
    lines = [
        "# Model speed and memory",
        "",
        harness.header(command),
        "",
        "Train step: the 'all' stage (every layer trains), one jitted step; inference: detections, masks "
        "pasted at full size and instance label maps. Medians after the compile. Compile: tracing, lowering "
        "and XLA's compile, no call counted; cold: the first process, with an empty persistent compilation "
        "cache; warm: a second process loading from it (`maskrcnn/compile_cache.py`).",
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
            f"| {r['train_step_per_image_s']:.3f} "
            f"| {r['compile_infer_s']:.1f} / {r['warm_compile_infer_s']:.1f} "
            f"| {r['infer_per_image_s']:.4f} | {r['peak_rss_gib']:.1f} |"
        )
    lines += [
        "",
        "Where the cold compile of the train step goes: tracing (Python runs the model's code once on "
        "abstract values), lowering to StableHLO, and XLA's compile (its passes and code generation); the "
        "size of the lowered program in HLO instructions.",
        "",
        "| preset | trace (s) | lower (s) | XLA compile (s) | HLO instructions |",
        "|---|---:|---:|---:|---:|",
        *(
            "| {preset} | {trace:.1f} | {lower:.1f} | {compile:.1f} | {ops:,} |".format(
                preset=r["preset"], **r["compile_train_phases"]
            )
            for r in rows
        ),
    ]
    harness.write(RESULTS, "\n".join(lines + stage_tables(rows)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("presets", nargs="*", default=["fast", "paper"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process measuring one preset
    p.add_argument("--warm-compile", help=argparse.SUPPRESS)  # the child compiling one from the cache
    p.add_argument("--cache", help=argparse.SUPPRESS)  # the children's compilation cache
    args = p.parse_args()
    if args.cache:
        from maskrcnn import compile_cache

        compile_cache.enable({compile_cache.ENV: args.cache})
    if args.one:
        print(json.dumps(measure(args.one, args.set)))
    elif args.warm_compile:
        print(json.dumps(warm_compile(args.warm_compile, args.set)))
    else:
        main(args.presets, args.set)
        sys.exit(0)
