"""Images for calibration and evaluation, from the training package's input pipeline.

TF Model Garden rule: calibrate (and evaluate) with the same input pipeline the
model was trained with. :func:`dataset_arrays` opens the dataset exactly like
``mvit3 train`` does (``training.datasets.open_dataset``: a TFDS name, an image
folder or ``demo``) and applies the recipe's evaluation transform
(``training.pipeline.classification_eval`` / ``segmentation_eval``: resize,
center crop, [0, 1] scaling, channel order) at the export's input size.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def _recipe_values(model: Optional[str], task: str, dataset: str, recipe: Optional[str]):
    from training import recipes

    if recipe is None:
        if model is None:
            recipe = "demo" if dataset in ("demo", "digits") else None
        else:
            recipe = recipes.default_recipe(model, task, dataset)
    if recipe is None:
        raise ValueError(
            "pass --recipe (or --model) so the evaluation transform of the training recipe "
            "can be applied to the images"
        )
    return recipes.get_recipe(recipe).to_dict()


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
    from training import pipeline
    from training.datasets import open_dataset

    source = open_dataset(dataset, task=task, data_dir=data_dir)
    values = _recipe_values(model, task, dataset, recipe)
    if split in (None, "validation", "val"):
        split = source.val_split
    elif split == "train":
        split = source.train_split
    make = pipeline.classification_eval if task == "classification" else pipeline.segmentation_eval
    ds = make(
        source, values, image_size=image_size, batch_size=batch_size, split=split, limit=limit
    )
    images, labels = [], []
    for x, y in ds:
        images.append(np.asarray(x, dtype=np.float32))
        y = np.asarray(y)
        labels.append(np.argmax(y, axis=-1) if task == "classification" and y.ndim == 2 else y)
    if not images:
        raise ValueError(f"dataset {dataset!r} split {split!r} yielded no examples")
    return np.concatenate(images), np.concatenate(labels)
