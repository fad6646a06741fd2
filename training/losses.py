"""Losses of the recipes.

* classification: ``keras.losses.CategoricalCrossentropy(from_logits=True,
  label_smoothing=0.1)`` on one-hot or mixup/cutmix-mixed labels (ml-cvnets
  ``label_smoothing`` / ``cross_entropy`` with ``label_smoothing: 0.1``).
* segmentation: :class:`mvit3_keras.segmentation.SegmentationCrossEntropy` (the
  official reduction: mean over the non-ignored pixels of the batch, logits resized
  to the label size with bilinear align_corners=True); the aux head's term (weight
  ``loss.segmentation.cross_entropy.aux_weight`` = 0.4) is added by
  :class:`mvit3_keras.segmentation.Segmenter` during training.
"""

from __future__ import annotations

import keras

from training.config import training_config


def classification_loss(values):
    """Cross-entropy on logits with the recipe's label smoothing."""
    smoothing = training_config(values).loss.classification.smoothing
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)


def segmentation_loss(ignore_index: int):
    from mvit3_keras.segmentation import SegmentationCrossEntropy

    return SegmentationCrossEntropy(ignore_index=int(ignore_index))
