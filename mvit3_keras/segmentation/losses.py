"""Segmentation loss of the official code (``loss_fn/segmentation_loss_fns/cross_entropy.py``).

``F.cross_entropy(pred, target, ignore_index, label_smoothing)`` averaged
over the non-ignored pixels of the whole batch; predictions whose spatial
size differs from the labels' (the low-resolution aux logits, or the
``low_res x output_stride`` logits of inputs not divisible by the stride)
are first resized to the label size with bilinear **align_corners=True**, as
the official loss does. With an aux head the total is
``loss(main) + aux_weight * loss(aux)`` (``aux_weight`` 0.4 in every
official yaml); :class:`~mvit3_keras.segmentation.Segmenter` adds the aux
term in training.
"""

from __future__ import annotations

import keras
from keras import ops

from mvit3_keras.layers import bilinear_resize


def resize_logits_to_labels(logits, labels):
    """Bilinear (align_corners=True) resize of ``logits`` to the labels' H x W."""
    lh, lw = labels.shape[1], labels.shape[2]
    if lh is not None and lw is not None and (lh, lw) == tuple(logits.shape[1:3]):
        return logits
    if lh is None or lw is None:
        lh, lw = ops.shape(labels)[1], ops.shape(labels)[2]
    return ops.cast(bilinear_resize(logits, (lh, lw), True), logits.dtype)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Pixel-wise cross-entropy with an ignore label (official reduction).

    Args:
        ignore_index: label excluded from the loss (PASCAL VOC 255, ADE20K -1).
        label_smoothing: as ``torch.nn.functional.cross_entropy``.

    ``y_true``: int labels ``[B, H, W]`` (or ``[B, H, W, 1]``); ``y_pred``:
    logits ``[B, h, w, classes]`` (resized to ``H x W`` when different).
    Returns the mean over all non-ignored pixels of the batch (a scalar).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
        name="segmentation_cross_entropy",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        if len(y_true.shape) == 4:
            y_true = y_true[..., 0]
        labels = ops.cast(y_true, "int32")
        logits = resize_logits_to_labels(ops.cast(y_pred, "float32"), labels)
        valid = ops.not_equal(labels, self.ignore_index)
        num_classes = logits.shape[-1]
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        log_probs = ops.log_softmax(logits, axis=-1)
        nll = -ops.sum(ops.one_hot(safe, num_classes, dtype=log_probs.dtype) * log_probs, axis=-1)
        if self.label_smoothing:
            smooth = -ops.mean(log_probs, axis=-1)
            nll = (1.0 - self.label_smoothing) * nll + self.label_smoothing * smooth
        valid = ops.cast(valid, nll.dtype)
        return ops.sum(nll * valid) / ops.maximum(ops.sum(valid), 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)
        return config
