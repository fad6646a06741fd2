"""``mvit3`` sub-commands contributed by the ``training`` package:
``train``, ``evaluate``, ``recipes``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from training.tasks import SegmentationTask, task_names


def register(subparsers) -> None:
    """Add this package's sub-commands to the ``mvit3`` parser."""
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_recipes(subparsers)


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on a TFDS dataset, an image folder or the bundled demo data",
        description="Train with an official recipe (resumable: run the same command again "
        "after an interruption).",
    )
    p.add_argument("--model", required=True, help="variant name (mvit3 list)")
    p.add_argument(
        "--dataset",
        required=True,
        help="TFDS name (imagenet2012, scene_parse150, ...), voc2012, a folder, or demo",
    )
    p.add_argument("--task", default="classification", choices=task_names())
    p.add_argument(
        "--head",
        default=None,
        choices=SegmentationTask.HEADS,
        help="segmentation head (default: the recipe's)",
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="recipe name (mvit3 recipes); default: the official recipe of the model",
    )
    p.add_argument("--image-size", type=int, default=None, help="training crop (default: recipe)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="per-replica batch (recipe dataset.train_batch_size0); global = x replicas",
    )
    p.add_argument("--epochs", type=int, default=None, help="scheduler.max_epochs")
    p.add_argument("--output", default=None, help="output folder (default runs/MODEL_DATASET)")
    p.add_argument("--strategy", default="auto", choices=("auto", "mirrored", "multiworker", "tpu"))
    p.add_argument(
        "--init",
        default=None,
        metavar="CHECKPOINT",
        help="start from weights: official .pt/.pth/.npz, .keras or .weights.h5",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.weight_decay=0.01 (repeatable)",
    )
    _add_data_dirs(p)
    p.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # keeps `mvit3 --verbose train` (the global flag)
        help="Keras' own progress bar and every framework warning/log (default: one line "
        "per epoch and a summary)",
    )
    p.set_defaults(handler=_cmd_train)


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a run folder or a .keras model on a split")
    p.add_argument("target", help="training output folder or a .keras model")
    p.add_argument("--dataset", default=None, help="default: the run's dataset")
    p.add_argument("--split", default=None, help="TFDS split (default: the validation split)")
    p.add_argument(
        "--weights",
        default="ema",
        choices=("ema", "raw", "best"),
        help="run folders: EMA (final), raw (last backup) or the best checkpoint",
    )
    p.add_argument("--task", default=None, choices=task_names())
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    _add_data_dirs(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="every framework warning/log",
    )
    p.set_defaults(handler=_cmd_evaluate)


def _add_recipes(subparsers) -> None:
    p = subparsers.add_parser("recipes", help="list the official recipes or print one")
    p.add_argument("name", nargs="?", help="recipe to print with every value")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_recipes)


def _add_data_dirs(p) -> None:
    p.add_argument("--data-dir", default=None, help="TFDS data_dir")
    p.add_argument(
        "--manual-dir", default=None, help="TFDS manual_dir (imagenet2012 tars, VOCdevkit)"
    )


def _cmd_train(args) -> int:
    from training.loop import TrainConfig, train

    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    config.overrides = list(config.overrides)
    try:
        train(config)
    except KeyboardInterrupt:  # every file is written atomically: nothing is half-written
        print(
            "\nmvit3 train: interrupted; the finished epochs are saved: run the same command "
            "again to resume",
            file=sys.stderr,
        )
        return 130
    return 0


def _cmd_evaluate(args) -> int:
    import logging

    from training.loop import evaluate

    logger = logging.getLogger("mvit3")
    was_disabled, logger.disabled = logger.disabled, logger.disabled or bool(args.json)
    try:  # with --json stdout is the JSON document: no progress lines on it
        options = ("dataset", "split", "weights", "task", "image_size", "batch_size")
        options += ("data_dir", "manual_dir")
        result = evaluate(args.target, **{name: getattr(args, name) for name in options})
    finally:
        logger.disabled = was_disabled
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from training.report import format_table

        print(format_table(list(result.items()), f"evaluation of {args.target}"))
    return 0


def _cmd_recipes(args) -> int:
    from training import recipes

    if args.name:
        recipe = recipes.get_recipe(args.name)
        overrides = recipes.parse_overrides(args.overrides, recipe.to_dict())
        if args.json:
            print(json.dumps(recipes.merge(recipe.to_dict(), overrides), indent=2))
        else:
            print(recipe.format(overrides))
        return 0
    rows = []
    for name in recipes.list_recipes():
        r = recipes.get_recipe(name)
        v = r.values
        rows.append(
            {
                "name": name,
                "task": r.task,
                "dataset": r.dataset,
                "optimizer": v["optim"]["name"],
                "epochs": v["scheduler"]["max_epochs"],
                "batch/device": v["dataset"]["train_batch_size0"],
                "source": r.source,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "task", "dataset", "optimizer", "epochs", "batch/device"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols) + "  source")
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols) + "  " + r["source"])
    print("\n`mvit3 recipes NAME` prints every value; override with --set key=value")
    return 0
