"""Command line: ``maskrcnn train | evaluate | diagnose | predict | anchors | demo``.

``maskrcnn <command> --help`` says what each takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def _config_from_args(args, extra=()):
    from maskrcnn.config import apply_overrides, load_config

    config = load_config(args.config)
    overrides = [*extra, *(args.set or [])]
    if getattr(args, "data_dir", None):
        overrides.append(f"data.data_dir={args.data_dir!r}")
    if getattr(args, "init", None):
        overrides.append(f"train.init={None if args.init == 'none' else args.init!r}")
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
        help="override a config field, e.g. model.rpn_nms_threshold=0.8, train.stages[0].learning_rate=1e-2",
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
    train(
        config,
        workdir,
        resume=args.resume,
        overwrite=args.overwrite,
        stages=stages,
        validate=not args.no_validation,
    )
    print(f"trained weights and config in {workdir}/")


def cmd_evaluate(args):
    from maskrcnn import evaluation
    from maskrcnn.inference import evaluate

    config, model = _trained_with_overrides(args)
    out_dir = args.out or os.path.join(args.workdir, f"eval-{_split_name(args.split)}")
    references = evaluation.read_references(args.references) if args.references else None
    evaluate(config, model, args.split, out_dir, max_overlays=args.overlays, references=references)
    print(open(os.path.join(out_dir, "report.md")).read())
    print(f"report, per-tissue CSV, predictions and overlays in {out_dir}/")


def _trained_with_overrides(args):
    """The run in ``args.workdir`` with ``--set`` / ``--data-dir`` applied (inference fields only)."""
    from maskrcnn.train.workdir import load_trained

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir!r}")
    return load_trained(args.workdir, overrides)


def _split_name(split: str) -> str:
    return os.path.basename(os.path.normpath(split)).replace(" ", "_")


def cmd_diagnose(args):
    import json

    from maskrcnn.diagnostics import diagnose, format_waterfall

    config, model = _trained_with_overrides(args)
    out_dir = args.out or os.path.join(args.workdir, f"diagnose-{_split_name(args.split)}")
    result = diagnose(config, model, args.split)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "diagnose.json"), "w") as f:
        json.dump(result, f, indent=1)
    table = format_waterfall(result)
    with open(os.path.join(out_dir, "diagnose.md"), "w") as f:
        f.write(f"# Where the nuclei of {args.split} are lost ({args.workdir})\n\n{table}\n")
    print(table)
    print(f"diagnose.json and diagnose.md in {out_dir}/")


def cmd_predict(args):
    from maskrcnn.predict import predict_files
    from maskrcnn.slides import SlideOptions

    slides = SlideOptions(
        mpp=args.mpp,
        tissue_mask=not args.no_tissue_mask,
        labels=args.labels,
        batch=args.batch,
        read_threads=args.read_threads,
    )
    failed = predict_files(
        args.workdir,
        args.inputs,
        args.out,
        scale=args.scale,
        overlap=args.overlap,
        label_format=args.format,
        slides=slides,
        resume=args.resume,
        workers=args.workers,
        scheduler=args.scheduler,
        overrides=tuple(args.set or ()),
    )
    print(f"outputs in {args.out}/")
    if failed:
        print(f"{len(failed)} file(s) failed (see above): " + ", ".join(failed))
        return 1
    return 0


def cmd_anchors(args):
    from maskrcnn.diagnostics import anchor_coverage, format_coverage

    config = _config_from_args(args)
    m = config.model
    label = (
        f"{config.name}: scales {m.anchor_scales} x octaves {tuple(round(o, 3) for o in m.anchor_octaves)}, "
        f"{m.rpn_assignment}"
        + (
            f" {m.rpn_positive_iou}/{m.rpn_negative_iou}"
            if m.rpn_assignment == "iou"
            else f" k={m.atss_topk} {m.atss_candidates}"
        )
        + f", {config.data.image_size} px"
    )
    print(format_coverage([(label, anchor_coverage(config, args.split, max_images=args.max_images))]))


def cmd_demo(args):
    """The whole job on a generated sample: data -> tfds build -> train -> evaluate -> report."""
    import shutil
    import time

    import tensorflow_datasets as tfds

    from maskrcnn.datasets.pannuke import Builder
    from maskrcnn.inference import evaluate
    from maskrcnn.synthetic import write_folds
    from maskrcnn.train.loop import train

    start = time.time()
    root = os.path.abspath(args.dir)
    manual, data_dir, workdir = (
        os.path.join(root, d) for d in ("pannuke_synthetic", "tensorflow_datasets", "model")
    )
    print(
        f"1/4 Generating a SYNTHETIC PanNuke-format sample ({3 * args.images_per_fold} H&E-like patches "
        f"in three folds; not real tissue) in {manual}"
    )
    shutil.rmtree(root, ignore_errors=True)
    write_folds(manual, args.images_per_fold, seed=args.seed)
    print(f"2/4 Building it with the tfds builder (maskrcnn/datasets/pannuke) into {data_dir}")
    Builder(config="neoplastic", data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual)
    )
    config = _config_from_args(args, ["data.builder='pannuke'", f"data.data_dir={data_dir!r}"])
    print(f"3/4 Training the {config.name!r} config on the CPU (paper_train split)")
    model = train(config, workdir)
    print("4/4 Evaluating on paper_test by the PanNuke protocol")
    out_dir = os.path.join(workdir, "eval-paper_test")
    metrics = evaluate(config, model, "paper_test", out_dir)
    print()
    print(open(os.path.join(out_dir, "report.md")).read())
    print(f"Demo done in {(time.time() - start) / 60:.1f} min on synthetic data: bPQ {metrics['bpq']:.3f}.")
    print(f"Report: {out_dir}/report.md; overlays: {out_dir}/overlays/; model: {workdir}/")
    print(
        "Next, on real PanNuke with a GPU: download the three folds (see "
        "maskrcnn/datasets/pannuke/README.md), then\n"
        "  make install JAX_EXTRA=cuda12\n  make data MANUAL_DIR=~/pannuke\n  make train CONFIG=fast\n"
        "  make evaluate CONFIG=fast"
    )


# Errors of the user's input (a bad path, config value or file): the message is printed, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="maskrcnn", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of every error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", parents=[common], help="train a model (the paper's two stages by default)")
    _add_config_args(p)
    p.add_argument("--workdir", help="where checkpoints, logs and weights go (default runs/<config>)")
    p.add_argument("--stage", action="append", help="run only this stage (heads, all, ...); repeatable")
    p.add_argument("--epochs", type=int, help="epochs of every stage (overrides the config)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --workdir")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the run already in --workdir and start again"
    )
    p.add_argument(
        "--init",
        help="initial weights (sets train.init): 'imagenet' (keras.applications' ResNet), an .h5 file "
        "(Matterport's mask_rcnn_coco.h5, or keras.applications' ResNet weights), or 'none' (random)",
    )
    p.add_argument("--no-validation", action="store_true", help="skip the per-epoch validation loss")
    p.add_argument(
        "--distributed", action="store_true", help="multi-host job: jax.distributed.initialize() first"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", parents=[common], help="bPQ/mPQ per tissue and mask AP of a trained model on a split"
    )
    p.add_argument("--workdir", required=True, help="the training run (config.json, model.weights.h5)")
    p.add_argument(
        "--split",
        default="paper_test",
        help="a split of the built dataset (paper_test, fold3, fold1+fold2, ...) or the folder of an "
        "unzipped PanNuke-format fold, read directly",
    )
    p.add_argument("--data-dir", help="tensorflow-datasets data_dir holding the built pannuke dataset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--out", help="report folder (default <workdir>/eval-<split>)")
    p.add_argument("--overlays", type=int, default=16, help="overlay pictures to write")
    p.add_argument(
        "--references",
        help="CSV of published per-tissue bPQ to set beside ours: a 'tissue' column, then one per source",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "diagnose",
        parents=[common],
        help="where each nucleus of a split is lost: no proposal, low score, suppressed, mask miss, or "
        "matched; and what each unmatched prediction is",
    )
    p.add_argument("--workdir", required=True, help="the training run (config.json, model.weights.h5)")
    p.add_argument(
        "--split", required=True, help="a split of the built dataset or a PanNuke-format fold folder"
    )
    p.add_argument("--data-dir", help="tensorflow-datasets data_dir holding the built pannuke dataset")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override an inference field of the config"
    )
    p.add_argument("--out", help="output folder (default <workdir>/diagnose-<split>)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="segment nuclei in images of any size (PNG, JPEG, TIFF) and whole-slide images (.svs, "
        "pyramidal .tif, .ndpi, .mrxs, ...: QuPath GeoJSON and a CSV per slide)",
    )
    p.add_argument("inputs", nargs="+", help="image or slide files, or folders of them")
    p.add_argument("--workdir", required=True, help="the training run (config.json, model.weights.h5)")
    p.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="resize factor to PanNuke's 40x (0.25 um/px); 2 for 20x images",
    )
    p.add_argument("--overlap", type=int, default=64, help="pixels shared by neighbouring 256 px tiles")
    p.add_argument("--format", choices=("tif", "png", "npy"), default="tif", help="label map file format")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override an inference field of the run's config, e.g. model.test_time_flips=True",
    )
    g = p.add_argument_group("whole-slide images")
    g.add_argument(
        "--mpp",
        type=float,
        help="microns per pixel of the slides' level 0, for slides whose metadata lack it (overrides it)",
    )
    g.add_argument(
        "--no-tissue-mask", action="store_true", help="send every tile to the model, background included"
    )
    g.add_argument(
        "--labels", action="store_true", help="also write the level-0 instance label map (<name>_labels.zarr)"
    )
    g.add_argument("--resume", action="store_true", help="skip slides whose outputs are already complete")
    g.add_argument("--batch", type=int, default=8, help="tiles per model call (default 8)")
    g.add_argument("--read-threads", type=int, default=4, help="threads reading tiles (default 4)")
    g.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the slides on a local Dask cluster of N workers, one per GPU (pip install "
        "'maskrcnn-nuclei[cluster]')",
    )
    g.add_argument(
        "--scheduler",
        help="address of a running Dask scheduler (tcp://host:8786) whose workers run the slides",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "anchors",
        parents=[common],
        help="share of a split's nuclei with a positive RPN anchor, and positives per nucleus",
    )
    _add_config_args(p)
    p.add_argument(
        "--split", required=True, help="a split of the built dataset or a PanNuke-format fold folder"
    )
    p.add_argument("--max-images", type=int, help="look at the first N images only")
    p.set_defaults(func=cmd_anchors)

    p = sub.add_parser(
        "demo", parents=[common], help="the whole job on a generated synthetic sample, on the CPU"
    )
    _add_config_args(p)
    p.set_defaults(config="demo")
    p.add_argument("--dir", default="runs/demo", help="where the sample, dataset, model and report go")
    p.add_argument("--images-per-fold", type=int, default=40, help="size of each generated fold")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated sample")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    from maskrcnn import compile_cache

    compile_cache.enable()  # each program is compiled once per machine, not once per run
    try:
        return args.func(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"maskrcnn {args.command}: error: {error}", file=sys.stderr)
        print("(maskrcnn --debug ... shows where it came from)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
