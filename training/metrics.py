"""Metrics: top-1 / top-5 accuracy and streaming mean IoU with an ignore index.

* top-1 / top-5: ``keras.metrics.CategoricalAccuracy`` /
  ``TopKCategoricalAccuracy`` on one-hot (or mixup/cutmix-soft) labels.
* mIoU: ``keras.metrics.MeanIoU`` (a confusion matrix accumulated over the whole
  split, so the result is the dataset mIoU, not a mean of per-batch IoUs) with
  ``ignore_class``; :class:`SegmentationMeanIoU` first resizes the logits to the
  mask's size when they differ (bilinear, ``align_corners=True`` as the official
  loss does) and takes the arg-max. Classes absent from both prediction and
  ground truth are left out of the mean (ml-cvnets / mmseg convention).
"""

from __future__ import annotations

import keras
import numpy as np


def classification_metrics():
    return [
        keras.metrics.CategoricalAccuracy(name="top1"),
        keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"),
    ]


@keras.saving.register_keras_serializable(package="mvit3_training")
class SegmentationMeanIoU(keras.metrics.MeanIoU):
    """Streaming mIoU over ``num_classes`` from logits; ``ignore_class`` pixels skipped."""

    def __init__(self, num_classes, ignore_class=255, name="miou", dtype=None, **kwargs):
        kwargs.pop("sparse_y_true", None)
        kwargs.pop("sparse_y_pred", None)
        super().__init__(
            num_classes=num_classes,
            name=name,
            ignore_class=ignore_class,
            dtype=dtype,
            sparse_y_true=True,
            sparse_y_pred=True,
            **kwargs,
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        from mvit3_keras.segmentation import resize_logits_to_labels

        if len(y_true.shape) == 4:
            y_true = y_true[..., 0]
        y_pred = resize_logits_to_labels(y_pred, y_true)
        y_pred = keras.ops.argmax(y_pred, axis=-1)
        return super().update_state(y_true, y_pred, sample_weight)

    def result(self):
        cm = keras.ops.cast(self.total_cm, "float32")
        tp = keras.ops.diagonal(cm)
        union = keras.ops.sum(cm, axis=0) + keras.ops.sum(cm, axis=1) - tp
        present = keras.ops.cast(union > 0, "float32")
        iou = tp / keras.ops.maximum(union, 1.0)
        return keras.ops.sum(iou * present) / keras.ops.maximum(keras.ops.sum(present), 1.0)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class from a confusion matrix (NaN where the class never occurs)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)
