"""Images for calibration and evaluation, from the training package's input pipeline.

TF Model Garden rule: calibrate (and evaluate) with the same input pipeline the
model was trained with. :func:`dataset_arrays` opens the dataset exactly like
``mvit3 train`` does (the task's ``open_dataset``, :mod:`training.tasks`: a TFDS
name, an image folder or ``demo``) and applies the recipe's evaluation transform
(the task's ``build_inputs(training=False)``: resize, center crop, [0, 1] scaling,
channel order) at the export's input size.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

DEMO_DATASETS = ("demo", "digits")


def recipe_name(model: Optional[str], task: str, dataset: str, recipe: Optional[str]) -> str:
    """The recipe whose transforms apply: ``recipe``, else the default recipe of
    ``model`` on ``dataset``, else the task's demo recipe for the demo data."""
    from training import recipes
    from training.tasks import get_task

    if recipe is not None:
        return recipe
    if model is not None:
        return recipes.default_recipe(model, get_task(task).name, dataset)
    if dataset in DEMO_DATASETS:
        return get_task(task).eval_recipe
    raise ValueError(
        "pass --recipe (or --model-name, for a .keras file that does not record its variant) "
        "so the evaluation transform of the training recipe can be applied to the images"
    )


def recipe_values(model: Optional[str], task: str, dataset: str, recipe: Optional[str]):
    """The typed configuration (:class:`training.config.TrainingConfig`) of
    :func:`recipe_name`'s recipe."""
    from training import recipes

    return recipes.get_recipe(recipe_name(model, task, dataset, recipe)).config()


def pipeline_arrays(task, source, values, *, image_size, split, limit=None, batch_size=64):
    """``(images, labels)`` of ``split`` through ``task``'s evaluation pipeline."""
    ds = task.build_inputs(
        source,
        values,
        training=False,
        image_size=image_size,
        batch_size=batch_size,
        split=split,
        limit=limit,
    )
    images, labels = [], []
    for x, y in ds:
        images.append(np.asarray(x, dtype=np.float32))
        labels.append(task.labels(y))
    if not images:
        raise ValueError(f"dataset {source.description!r} split {split!r} yielded no examples")
    return np.concatenate(images), np.concatenate(labels)


def dataset_arrays(
    dataset: str,
    *,
    image_size: int,
    split: Optional[str] = None,
    limit: Optional[int] = None,
    task: str = "classification",
    model: Optional[str] = None,
    recipe: Optional[str] = None,
    data_dir: Optional[str] = None,
    batch_size: int = 64,
):
    """``(images float32 [N, S, S, 3], labels)`` preprocessed like training evaluation.

    ``split``: ``"train"`` (calibration), ``"validation"`` or a dataset split
    name; default: the dataset's validation split. Classification labels are
    class indices; segmentation labels are ``[N, S, S]`` masks.
    """
    from training.tasks import get_task

    task = get_task(task)
    source = task.open_dataset(dataset, data_dir=data_dir)
    values = recipe_values(model, task.name, dataset, recipe)
    if split in (None, "validation", "val"):
        split = source.val_split
    elif split == "train":
        split = source.train_split
    return pipeline_arrays(
        task, source, values, image_size=image_size, split=split, limit=limit, batch_size=batch_size
    )
