"""Train steps of trained runs, timed in turn in one process: what a run's weights do to its step.

    python experiments/time_trained.py runs/ablation3/preset-5632 runs/ablation3/lr2x-5632 [--rounds 5]

A learning rate does not change the program of a step, but the weights it trains do change its work: the
proposals' NMS (maskrcnn/ops/nms.py) loops until it has kept its quota, so a model whose proposals overlap
more visits more of them. Each run's step starts from its own trained weights (a fresh optimizer state) on
the same real training batch, every run is compiled first, and the steps are timed in turn over rounds
(harness.rounds), so the ratios share the machine's state. Writes experiments/results/step_trained.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import harness  # noqa: E402
import learning  # noqa: E402


def stepper(workdir: str):
    """A function timing one train step of the run in ``workdir`` from its trained weights."""
    from maskrcnn.train.workdir import load_trained

    return learning.train_stepper(*load_trained(workdir))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="trained run folders (the first is the reference)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(harness.RESULTS, "step_trained.md"))
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    fns = {run: stepper(run) for run in args.runs}
    times = harness.rounds(fns, args.rounds)
    first = times[args.runs[0]]
    lines = ["| run | step (s), median | range | vs the first, median | range |", "|---|---:|---:|---:|---:|"]
    for run in args.runs:
        ratios = [t / f for t, f in zip(times[run], first, strict=True)]
        lines.append(
            f"| `{run}` | {harness.median(times[run]):.3f} | {harness.spread(times[run])} | "
            f"{harness.median(ratios):.2f}x | {harness.spread(ratios)} |"
        )
    table = "\n".join(lines)
    harness.write(
        args.out,
        f"""# Train steps of trained runs, timed in turn

{harness.header("python experiments/time_trained.py " + shlex.join(given))}

Each run's train step from its own trained weights (a fresh optimizer state), on the same real training
batch, compiled first, then timed once a round for {args.rounds} rounds in turn (the order reversed every
other round); ratios per round to the first run.

{table}
""",
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
