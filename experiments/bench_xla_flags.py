"""XLA's CPU options against the whole `fast` train step and inference, each in its own process.

    python experiments/bench_xla_flags.py     # writes experiments/results/xla_flags.md

Each row runs ``bench_model.whole_program`` on the `fast` preset (synthetic nuclei, batch 4) with
``XLA_FLAGS`` set to the row's options (set before JAX starts, as a user would in the shell), in the order
of the table and then once more in reverse order, so that a drift of the machine during the run shows as
a difference between a row's two figures rather than as a difference between rows.
"""

from __future__ import annotations

import json
import os
import sys

import harness

RESULTS = os.path.join(harness.RESULTS, "xla_flags.md")
OPTIONS = [  # (name, XLA_FLAGS)
    ("default", ""),
    ("oneDNN custom calls", "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"),
    (
        "XNNPACK graph fusion",
        "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_graph_fusion_mode="
        "XNN_GRAPH_FUSION_MODE_GREEDY",
    ),
    ("fast-compile preset", "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE"),
]
FIGURES = ("compile_train_s", "train_step_per_image_s", "compile_infer_s", "infer_per_image_s")


def fast_figures() -> dict:
    """``FIGURES`` of ``programs.whole_program`` on `fast`, measured in this process."""
    from programs import whole_program

    from maskrcnn.config import load_config

    figures = whole_program(load_config("fast"), repeats=3)
    return {k: figures[k] for k in FIGURES}


def main() -> None:
    runs: dict[str, list[dict]] = {name: [] for name, _ in OPTIONS}
    for name, flags in [*OPTIONS, *reversed(OPTIONS)]:
        runs[name].append(harness.in_child([__file__, "--one"], env={**os.environ, "XLA_FLAGS": flags}))
        print(name, runs[name][-1], flush=True)

    def both(name, key, digits):
        return " / ".join(f"{r[key]:.{digits}f}" for r in runs[name])

    lines = [
        "# XLA CPU options on the `fast` preset",
        "",
        harness.header("python experiments/bench_xla_flags.py"),
        "",
        "`fast`, synthetic nuclei, batch 4, the 'all' stage; medians of 3 jitted calls after the compile. "
        "Each cell: the first pass over the rows / the second, in reverse order: a difference between a "
        "row's two figures is the machine's drift, the scale against which rows differ.",
        "",
        "| options | XLA_FLAGS | compile train step (s) | train step per image (s) | compile inference (s) "
        "| inference per image (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, flags in OPTIONS:
        lines.append(
            f"| {name} | `{flags or '(none)'}` | {both(name, 'compile_train_s', 1)} "
            f"| {both(name, 'train_step_per_image_s', 2)} | {both(name, 'compile_infer_s', 1)} "
            f"| {both(name, 'infer_per_image_s', 2)} |"
        )
    harness.write(RESULTS, "\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["--one"]:
        print(json.dumps(fast_figures()))
    else:
        main()
