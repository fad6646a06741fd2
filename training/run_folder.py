"""The output folder of a training run: its record, the conflict check, and evaluation.

Folder: ``run.json`` (the resolved configuration), ``backup/`` (resume state, see
:class:`training.callbacks.AtomicBackupAndRestore`), ``history.csv``, ``logs/``
(TensorBoard), ``best.keras`` (+ ``.json``), ``final.keras``, ``summary.json``,
``training_curves.png``. A folder holding a *different* run is refused (nothing is
overwritten); the same command resumes.

:func:`evaluate` evaluates a run folder (EMA, raw or best weights) or a ``.keras``
model with the task's evaluation pipeline (:mod:`training.tasks`), as ml-cvnets'
``main_eval.py`` evaluates ``checkpoint_ema.pt`` / ``checkpoint.pt``.
"""

from __future__ import annotations

import json
import os

from training import callbacks as cb
from training import recipes
from training.config import config_dict, training_config
from training.tasks import get_task

RUN_FILE = "run.json"
LABELS_FILE = "labels.txt"  # the class names of the dataset, one per line
SUMMARY_FILE = "summary.json"
# recipe keys that may change between a run and its resumption
RESUME_FREE_KEYS = ("runtime.verbose", "runtime.tensorboard")
RECORD_KEYS = ("model", "task", "dataset", "recipe", "image_size", "num_classes", "replicas")


class RunConflictError(ValueError):
    """The output folder holds a different run."""


def run_record(config, recipe, values, image_size, replicas, source) -> dict:
    """What ``run.json`` records (compared on resumption by :func:`check_run_folder`)."""
    return {
        "model": config.model,
        "task": config.task,
        "dataset": config.dataset,
        "recipe": recipe.name,
        "image_size": image_size,
        "init": config.init,
        "num_classes": source.num_classes,
        "replicas": replicas,
        "values": config_dict(training_config(values)),
    }


def _comparable_values(values: dict) -> dict:
    """A recorded run's values with today's defaults filled in (older records hold
    only the keys their recipe had); unreadable ones are compared as they are."""
    try:
        return config_dict(training_config(values))
    except ValueError:
        return values


def check_run_folder(output: str, record: dict) -> None:
    """Raise :class:`RunConflictError` when ``output`` holds a run other than ``record``."""
    path = os.path.join(output, RUN_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as err:
        raise RunConflictError(
            f"{path} is unreadable ({err}); it describes the run in {output!r}. Use a new "
            "--output, or move the folder away to start over (nothing was changed)."
        ) from None
    diffs = []
    for key in RECORD_KEYS:
        if old.get(key) != record.get(key):
            diffs.append(f"{key}: {old.get(key)!r} -> {record.get(key)!r}")
    flat_old = recipes.flatten(_comparable_values(old.get("values", {})))
    flat_new = recipes.flatten(record["values"])
    for key in sorted(set(flat_old) | set(flat_new)):
        if key in RESUME_FREE_KEYS:
            continue
        if flat_old.get(key) != flat_new.get(key):
            diffs.append(f"{key}: {flat_old.get(key)!r} -> {flat_new.get(key)!r}")
    if diffs:
        raise RunConflictError(
            f"the output folder {output!r} holds a different run ({'; '.join(diffs[:8])}). "
            "Nothing was changed. To resume it, repeat its original command; to start a new "
            "run, pass a new --output."
        )


def read_run_record(target: str) -> dict:
    run_path = os.path.join(target, RUN_FILE)
    if not os.path.exists(run_path):
        raise FileNotFoundError(f"{target!r} is not a training output folder (no {RUN_FILE})")
    with open(run_path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
def evaluate(
    target: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    weights: str = "ema",
    task: str | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    data_dir=None,
    manual_dir=None,
    limit: int | None = None,
) -> dict:
    """Evaluate a run folder (``weights``: ``ema`` = ``final.keras``, or the EMA weights of
    the last backup while the run is unfinished | ``raw`` = the last backup | ``best`` =
    ``best.keras``, raw or EMA as recorded in ``best.keras.json``) or a ``.keras`` model.
    Progress goes to the ``"mvit3"`` logger (:mod:`mvit3_keras.progress`; the CLI shows
    it)."""
    opened = dict(data_dir=data_dir, manual_dir=manual_dir)
    if os.path.isdir(target):
        model, values, task_, source, image_size = load_run_model(
            target, weights, dataset, image_size, opened
        )
    else:
        model, values, task_, source, image_size = _load_model_file(
            target, dataset, task, image_size, opened
        )
    result = task_.evaluate(
        model,
        source,
        values,
        image_size=image_size,
        batch_size=int(batch_size or 32),
        split=split,
        limit=limit,
        progress=f"evaluating {weights} weights",
    )
    return {"split": split or source.val_split, "weights": weights, **result}


def _load_model_file(target, dataset, task, image_size, opened):
    import keras

    if not os.path.exists(target):
        raise FileNotFoundError(f"{target!r}: no such model file or run folder")
    if not dataset:
        raise ValueError("evaluating a model file needs --dataset NAME")
    task = get_task(task or "classification")
    model = keras.models.load_model(target, compile=False)
    values = task.eval_values()
    shape = model.input_shape
    image_size = image_size or (shape[1] if shape[1] else 256)
    source = task.open_dataset(dataset, image_size=image_size, **opened)
    return task.compile(model, values, source), values, task, source, image_size


def load_run_model(target, weights, dataset, image_size, opened):
    """The compiled model of a run folder with the ``weights`` asked for:
    ``(model, values, task, source, image_size)``."""
    import keras

    if weights not in ("ema", "raw", "best"):
        raise ValueError(f"--weights must be ema, raw or best, got {weights!r}")
    run = read_run_record(target)
    values, task = training_config(run["values"]), get_task(run["task"])
    image_size = image_size or run["image_size"]
    dataset = dataset or run["dataset"]
    source = task.open_dataset(dataset, image_size=image_size, **opened)
    saved = os.path.join(target, "best.keras" if weights == "best" else "final.keras")
    if weights == "best" or (weights == "ema" and os.path.exists(saved)):
        if not os.path.exists(saved):
            raise FileNotFoundError(f"{saved} does not exist yet (no epoch finished?)")
        model = keras.models.load_model(saved, compile=False)
        return task.compile(model, values, source), values, task, source, image_size
    backup = os.path.join(target, "backup")
    state = cb.read_backup_state(backup)
    if state is None:
        raise FileNotFoundError(f"no backup in {backup!r}: the run has not finished an epoch")
    from training import optimizers

    model = task.model_builder(run["model"], values, source, dataset)((None, None, 3))
    optimizer = optimizers.make_optimizer(
        values, 1, lr_multiplier_rules=task.lr_multiplier_rules(values)
    )
    task.compile(model, values, source, optimizer=optimizer)
    model.load_weights(os.path.join(backup, state["weights"]))
    if weights == "ema":
        if not cb.uses_ema(model):
            raise ValueError("this run has no EMA weights (ema.enable false): use --weights raw")
        model.set_weights(cb.weights_values(model, "ema"))
    return model, values, task, source, image_size
