"""What every dataset source gives the training loop.

A source yields un-augmented examples, one at a time:

* classification: ``{"image": uint8 [H, W, 3], "label": int64}``
* segmentation: ``{"image": uint8 [H, W, 3], "mask": int32 [H, W]}``, with the
  source's ``ignore_index`` on unlabeled pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Optional


@dataclasses.dataclass
class DatasetSource:
    name: str
    task: str  # "classification" | "segmentation"
    num_classes: int
    train_split: str
    val_split: str
    # load(split, *, shuffle_files, seed) -> tf.data.Dataset of examples (see module docstring)
    load: Callable
    # num_examples(split) -> int or None when unknown
    num_examples: Callable
    class_names: Optional[list] = None
    ignore_index: int = 255  # segmentation only
    description: str = ""


class DatasetError(ValueError):
    """A dataset cannot be opened; the message names the problem and the fix."""
