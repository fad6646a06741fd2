"""Dataset sources for training: TFDS by name, local folders and the bundled demo data."""

from training.datasets.base import DatasetError, DatasetSource
from training.datasets.classification import open_classification
from training.datasets.segmentation import open_segmentation


def _open_classification(name: str, *, image_size=None, **kwargs) -> DatasetSource:
    return open_classification(name, **kwargs)  # images are resized by the pipeline


OPENERS = {"classification": _open_classification, "segmentation": open_segmentation}
"""The dataset opener of each task."""


def open_dataset(name: str, task: str = "classification", **kwargs) -> DatasetSource:
    """The :class:`DatasetSource` of ``--dataset name`` for ``task``."""
    opener = OPENERS.get(task)
    if opener is None:
        raise ValueError(f"task must be one of {', '.join(OPENERS)}, got {task!r}")
    return opener(name, **kwargs)


__all__ = [
    "DatasetError",
    "DatasetSource",
    "open_classification",
    "open_dataset",
    "open_segmentation",
]
