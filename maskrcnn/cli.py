"""Command line: ``maskrcnn train | ...`` (see ``maskrcnn <command> --help``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def _config_from_args(args):
    from maskrcnn.config import apply_overrides, load_config

    config = load_config(args.config)
    overrides = list(args.set or [])
    if getattr(args, "data_dir", None):
        overrides.append(f"data.data_dir={args.data_dir!r}")
    config = apply_overrides(config, overrides)
    if getattr(args, "epochs", None):
        stages = tuple(dataclasses.replace(s, epochs=args.epochs) for s in config.train.stages)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, stages=stages))
    return config


def _add_config_args(p):
    p.add_argument(
        "--config", default="fast", help="preset name (paper, fast, tiny) or path to a config .py file"
    )
    p.add_argument("--data-dir", help="tensorflow-datasets data_dir holding the built pannuke dataset")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field, e.g. model.rpn_nms_threshold=0.8",
    )


def cmd_train(args):
    from maskrcnn.train.loop import train

    if args.distributed:
        import jax

        jax.distributed.initialize()  # reads the coordinator and process ids from the cluster environment

    config = _config_from_args(args)
    names = [s.name for s in config.train.stages]
    if args.stage:
        unknown = [s for s in args.stage if s not in names]
        if unknown:
            raise SystemExit(f"--stage {unknown}: config {config.name!r} has stages {names}")
        stages = tuple(names.index(s) for s in args.stage)
    else:
        stages = None
    workdir = args.workdir or f"runs/{config.name}"
    train(config, workdir, resume=args.resume, stages=stages, validate=not args.no_validation)
    print(f"trained weights and config in {workdir}/")


def cmd_evaluate(args):
    from maskrcnn.config import apply_overrides
    from maskrcnn.inference import evaluate
    from maskrcnn.train.loop import load_trained

    config, model = load_trained(args.workdir)
    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir!r}")
    config = apply_overrides(config, overrides)
    out_dir = args.out or os.path.join(args.workdir, f"eval-{args.split}")
    evaluate(config, model, args.split, out_dir, max_overlays=args.overlays)
    print(open(os.path.join(out_dir, "report.md")).read())
    print(f"report, per-tissue CSV, predictions and overlays in {out_dir}/")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="maskrcnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (the paper's two stages by default)")
    _add_config_args(p)
    p.add_argument("--workdir", help="where checkpoints, logs and weights go (default runs/<config>)")
    p.add_argument("--stage", action="append", help="run only this stage (heads, all, ...); repeatable")
    p.add_argument("--epochs", type=int, help="epochs of every stage (overrides the config)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --workdir")
    p.add_argument("--no-validation", action="store_true", help="skip the per-epoch validation loss")
    p.add_argument(
        "--distributed", action="store_true", help="multi-host job: jax.distributed.initialize() first"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="bPQ/mPQ per tissue and mask AP of a trained model on a split")
    p.add_argument("--workdir", required=True, help="the training run (config.json, model.weights.h5)")
    p.add_argument("--split", default="paper_test", help="split to evaluate (paper_test, fold3, ...)")
    p.add_argument("--data-dir", help="tensorflow-datasets data_dir holding the built pannuke dataset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--out", help="report folder (default <workdir>/eval-<split>)")
    p.add_argument("--overlays", type=int, default=16, help="overlay pictures to write")
    p.set_defaults(func=cmd_evaluate)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
