"""SSD multibox loss with hard negative mining (``loss_fn/detection_loss_fns/ssd_multibox_loss.py``).

Per image, every positive anchor (label > 0) is kept, and of the negatives
the ``neg_pos_ratio * num_positives`` (3x) with the highest background loss
``-log softmax(confidences)[..., 0]`` (``hard_negative_mining`` of the
official ``ssd_utils``). Loss = (sum of the cross-entropy over the kept
anchors + sum of the smooth-L1 (beta 1) over the positives' box locations)
/ number of positives in the batch. (The official localisation re-weighting
is off by default: ``max_monitor_iter = -1``.)
"""

from __future__ import annotations

import keras
import tensorflow as tf

NEG_POS_RATIO = 3


def hard_negative_mining(background_loss, labels, neg_pos_ratio: int = NEG_POS_RATIO):
    """Boolean mask ``[B, N]`` of the anchors that enter the classification loss."""
    labels = tf.cast(labels, tf.int32)
    pos = labels > 0
    num_neg = tf.reduce_sum(tf.cast(pos, tf.int32), axis=1, keepdims=True) * neg_pos_ratio
    loss = tf.where(pos, tf.fill(tf.shape(background_loss), -float("inf")), background_loss)
    order = tf.argsort(loss, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    return tf.logical_or(pos, rank < num_neg)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class SSDMultiBoxLoss(keras.losses.Loss):
    """The official SSD loss on the detector's raw outputs.

    ``y_true``: ``{"box_labels": [B, N] int, "box_coordinates": [B, N, 4]}``
    (encoded targets from :func:`mvit3_keras.detection.match_anchors`);
    ``y_pred``: ``{"confidences": [B, N, C], "locations": [B, N, 4]}``.
    Returns a scalar. With no positive anchor in the batch the sums are
    divided by 1 (the official code would divide by 0).
    """

    def __init__(
        self,
        neg_pos_ratio: int = NEG_POS_RATIO,
        name="ssd_multibox_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.neg_pos_ratio = int(neg_pos_ratio)

    def call(self, y_true, y_pred):
        confidences = tf.cast(y_pred["confidences"], tf.float32)
        locations = tf.cast(y_pred["locations"], tf.float32)
        labels = tf.cast(tf.round(tf.cast(y_true["box_labels"], tf.float32)), tf.int32)
        targets = tf.cast(y_true["box_coordinates"], tf.float32)

        log_probs = tf.nn.log_softmax(confidences, axis=-1)
        mask = hard_negative_mining(
            tf.stop_gradient(-log_probs[..., 0]), labels, self.neg_pos_ratio
        )
        num_classes = confidences.shape[-1] or tf.shape(confidences)[-1]
        ce = -tf.reduce_sum(tf.one_hot(labels, num_classes) * log_probs, axis=-1)
        classification = tf.reduce_sum(tf.where(mask, ce, 0.0))

        pos = labels > 0
        diff = tf.abs(locations - targets)
        smooth_l1 = tf.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5)
        localization = tf.reduce_sum(tf.where(pos[..., None], smooth_l1, 0.0))
        num_pos = tf.reduce_sum(tf.cast(pos, tf.float32))
        return (localization + classification) / tf.maximum(num_pos, 1.0)

    def get_config(self):
        config = super().get_config()
        config["neg_pos_ratio"] = self.neg_pos_ratio
        return config
