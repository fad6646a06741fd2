"""Dataset sources for training: TFDS by name, local folders and the bundled demo data."""

from training.datasets.base import DatasetError, DatasetSource
from training.datasets.classification import open_classification
from training.datasets.segmentation import open_segmentation


def open_dataset(name: str, task: str = "classification", **kwargs) -> DatasetSource:
    if task == "classification":
        kwargs.pop("image_size", None)
        return open_classification(name, **kwargs)
    if task == "segmentation":
        return open_segmentation(name, **kwargs)
    raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")


__all__ = [
    "DatasetError",
    "DatasetSource",
    "open_classification",
    "open_dataset",
    "open_segmentation",
]
