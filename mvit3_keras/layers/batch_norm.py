"""BatchNorm with PyTorch training semantics and TensorFlow's fused kernel.

``keras.layers.BatchNormalization`` trains with separate moment / normalize ops
(several full passes over the map, each kept for the backward pass) and updates
the moving variance with the biased batch variance. ``torch.nn.BatchNorm2d``,
which the official models train with, updates ``running_var`` with the unbiased
(Bessel-corrected) batch variance. :class:`BatchNorm` keeps Keras' layer (same
weights, config, inference path and checkpoint mapping) and, when training on the
TensorFlow backend, runs ``FusedBatchNormV3`` (oneDNN on x86): one kernel forward
and one backward, and its batch variance output is the unbiased one, as PyTorch
uses for ``running_var``. Other backends, masks, renorm and synchronized BN use the
Keras path (biased update).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mvit3_keras")
class BatchNorm(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused TensorFlow training kernel."""

    def _can_fuse(self, inputs, mask) -> bool:
        axis = self.axis if isinstance(self.axis, int) else None
        rank = len(inputs.shape)
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and rank == 4
            and axis is not None
            and axis % rank == rank - 1
        )

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._can_fuse(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else tf.ones((channels,))
        beta = ops.cast(self.beta, "float32") if self.center else tf.zeros((channels,))
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return ops.cast(y, self.compute_dtype)
