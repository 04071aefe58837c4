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
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench_model import in_child  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "xla_flags.md")
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
    """``FIGURES`` of ``bench_model.whole_program`` on `fast`, measured in this process."""
    from experiments.bench_model import whole_program
    from maskrcnn.config import load_config

    figures = whole_program(load_config("fast"), repeats=3)
    return {k: figures[k] for k in FIGURES}


# Written from the 2026-12-03 run; rewrite it when the figures change.
NOTES = """
## Reading the table

Within one option the two passes differ by up to 1.1 s per image in the train step and 1.1 s at
inference (the default row: 5.18 then 4.12 s), more than any option differs from the default, so none of
these options is a measured gain on this CPU and the project sets no XLA_FLAGS. The first pass's
compile times include the machine warming up (the default's 55.8 s fell to 45.1 s on its second pass).
"""


def main() -> None:
    import jax

    runs: dict[str, list[dict]] = {name: [] for name, _ in OPTIONS}
    for name, flags in [*OPTIONS, *reversed(OPTIONS)]:
        runs[name].append(in_child([__file__, "--one"], env={**os.environ, "XLA_FLAGS": flags}))
        print(name, runs[name][-1], flush=True)

    def both(name, key, digits):
        return " / ".join(f"{r[key]:.{digits}f}" for r in runs[name])

    lines = [
        "# XLA CPU options on the `fast` preset",
        "",
        f"Made by `python experiments/bench_xla_flags.py`, {time.strftime('%Y-%m-%d')}. "
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), jax {jax.__version__}. `fast`, "
        "synthetic nuclei, batch 4, the 'all' stage; medians of 3 jitted calls after the compile. Each "
        "cell: the first pass over the rows / the second, in reverse order.",
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
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines) + "\n" + NOTES)
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["--one"]:
        print(json.dumps(fast_figures()))
    else:
        main()
