"""``mvit3`` sub-commands contributed by the ``training`` package:
``train``, ``evaluate``, ``recipes``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from mvit3_keras import cli_args
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
    cli_args.add_subject(
        p,
        "model",
        metavar="MODEL",
        help="variant name (mvit3 list)",
        command="train",
        missing="name the variant to train (`mvit3 list`), e.g. "
        "`mvit3 train mobilevitv3_xxs --dataset demo`",
        alias="--model",
    )
    cli_args.add_dataset(p, use="training data", required=True)
    cli_args.add_task(p, choices=task_names(), default_text="classification")
    _add_recipe_values(p)
    cli_args.add_output(p, metavar="DIR", use="run folder (default runs/MODEL_DATASET)")
    p.add_argument("--strategy", default="auto", choices=("auto", "mirrored", "multiworker", "tpu"))
    p.add_argument(
        "--init",
        default=None,
        metavar="CHECKPOINT",
        help="start from weights: official .pt/.pth/.npz, .keras or .weights.h5",
    )
    _add_overrides(p, "override a recipe value, e.g. --set optim.weight_decay=0.01 (repeatable)")
    cli_args.add_data_dirs(p)
    _add_verbose(
        p,
        "Keras' own progress bar and every framework warning/log (default: one line "
        "per epoch and a summary)",
    )
    p.set_defaults(handler=_cmd_train)


def _add_recipe_values(p) -> None:
    """``train``'s recipe and the recipe values it sets directly."""
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
    cli_args.add_image_size(
        p,
        use="training crop",
        square="training crops are square",
        default_text="the recipe's sampler.crop_size",
    )
    cli_args.add_batch_size(
        p,
        default=None,
        use="per-replica batch; global = x replicas",
        default_text="the recipe's dataset.train_batch_size0",
    )
    cli_args.add_count(p, "--epochs", help="scheduler.max_epochs (default: the recipe's)")


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a run folder or a .keras model on a split")
    p.add_argument(
        "target", metavar="RUN_OR_MODEL", help="training output folder or a .keras model"
    )
    cli_args.add_dataset(
        p, use="evaluation data", default_text="the run's; required for a .keras model"
    )
    cli_args.add_split(p, default=None, default_text="the dataset's validation split")
    p.add_argument(
        "--weights",
        default="ema",
        choices=("ema", "raw", "best"),
        help="run folders: EMA (final), raw (last backup) or the best checkpoint",
    )
    cli_args.add_task(
        p, choices=task_names(), default_text="the run's; classification for a .keras model"
    )
    cli_args.add_image_size(
        p,
        use="evaluation size",
        square="evaluation sizes are square",
        default_text="the run's crop, or the .keras model's input size",
    )
    cli_args.add_batch_size(p, default=32, use="evaluation batch")
    cli_args.add_data_dirs(p)
    cli_args.add_json(p, what="the metrics")
    _add_verbose(p, "every framework warning/log")
    p.set_defaults(handler=_cmd_evaluate)


def _add_recipes(subparsers) -> None:
    p = subparsers.add_parser("recipes", help="list the official recipes or print one")
    p.add_argument("name", nargs="?", metavar="RECIPE", help="recipe to print with every value")
    _add_overrides(
        p, "print RECIPE with a value overridden, e.g. --set optim.weight_decay=0.01 (repeatable)"
    )
    cli_args.add_json(p, what="the recipe (or the list)")
    p.set_defaults(handler=_cmd_recipes)


def _add_overrides(p, help_text: str) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def _add_verbose(p, help_text: str) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # keeps `mvit3 --verbose COMMAND` (the global flag)
        help=help_text,
    )


def _square_side(image_size):
    """``--image-size`` of a square-only command (checked while parsing): the side or None."""
    return None if image_size is None else image_size[0]


def _cmd_train(args) -> int:
    from training.loop import TrainConfig, train

    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    config.task = args.task or "classification"
    config.image_size = _square_side(args.image_size)
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
    from training.loop import evaluate
    from training.report import format_table

    options = ("dataset", "split", "weights", "task", "batch_size", "data_dir", "manual_dir")
    result = evaluate(
        args.target,
        image_size=_square_side(args.image_size),
        **{name: getattr(args, name) for name in options},
    )
    print(format_table(list(result.items()), f"evaluation of {args.target}"))
    cli_args.emit_json(args.json, result)
    return 0


def _cmd_recipes(args) -> int:
    from training import recipes

    if args.name:
        recipe = recipes.get_recipe(args.name)
        overrides = recipes.parse_overrides(args.overrides, recipe.to_dict())
        print(recipe.format(overrides))
        cli_args.emit_json(args.json, recipes.merge(recipe.to_dict(), overrides))
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
    cols = ["name", "task", "dataset", "optimizer", "epochs", "batch/device"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols) + "  source")
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols) + "  " + r["source"])
    print("\n`mvit3 recipes NAME` prints every value; override with --set key=value")
    cli_args.emit_json(args.json, rows)
    return 0
