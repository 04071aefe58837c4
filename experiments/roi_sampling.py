"""Which nuclei the box head learns from in a training step: the positives the ROI sampler draws.

    python experiments/roi_sampling.py --workdir runs/ablation/preset-5632 \
        --split "runs/ablation/folds/Fold 1" --out experiments/results/roi_sampling.md

A tile of `learning` offers 42 positive slots (a third of 128 sampled ROIs) to up to 172 nuclei. For a
trained run and a split (a training fold: what the sampler meets), the share of the nuclei that get at
least one positive ROI in a draw, with the positives drawn uniformly over the candidates (Matterport,
torchvision) and evenly over the nuclei (`model.roi_positive_sampling="per_nucleus"`), overall and by
nucleus size (:func:`maskrcnn.diagnostics.positive_coverage`).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import harness

RULES = ("uniform", "per_nucleus")


def page(result: dict, command: str, record: dict) -> str:
    bands = list(result["nuclei_by_size"])
    lines = [
        "# Which nuclei a training step's sampled positives cover",
        "",
        harness.header(command, record),
        "",
        f"The run's training-time proposals on {result['images']} tiles of `{result['split']}` "
        f"({result['nuclei']:,} nuclei; the network in inference mode, the tiles un-augmented), the ground "
        "truth added as candidates as in training, then the run's ROI sampler with each rule of drawing "
        f"the positives (at most {result['positive_slots']} a tile): the share of the nuclei with at least "
        "one positive ROI in a draw, the mean over the draws (`maskrcnn.diagnostics.positive_coverage`). "
        "Sizes: the square root of the nucleus's box area in input pixels (its nuclei in brackets).",
        "",
        "| positives drawn | nuclei covered a step | "
        + " | ".join(f"{b} ({result['nuclei_by_size'][b]:,})" for b in bands)
        + " |",
        "|---|---:|" + "---:|" * len(bands),
    ]
    for rule in RULES:
        r = result[rule]
        cells = " | ".join(f"{r['by_size'][b]:.1%}" for b in bands)
        lines.append(f"| {rule} | {r['covered']:.1%} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="a trained run (make train, make bench-learning)")
    parser.add_argument("--split", required=True, help="a split of the run's data or a PanNuke-format folder")
    parser.add_argument("--draws", type=int, default=16, help="draws of the sampler a tile")
    parser.add_argument("--out", default=None, help="the results page to write")
    args = parser.parse_args(argv)

    from maskrcnn.diagnostics import positive_coverage
    from maskrcnn.train.workdir import load_trained

    config, model = load_trained(args.workdir)
    result = positive_coverage(config, model, args.split, rules=RULES, draws=args.draws)
    command = "python experiments/roi_sampling.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = page(result, command, harness.where())
    if args.out:
        harness.write(args.out, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
