"""LayerNorm / GroupNorm(1) written with explicit statistics ops (the export formulation).

``keras.layers.LayerNormalization`` and ``GroupNormalization(groups=1)`` (the v2
family's ``LayerNorm2D``, ``cvnets/layers/normalization/layer_norm.py``) lower to
``tf.nn.moments``: ``MEAN`` + ``SQUARED_DIFFERENCE`` + a float ``NEG`` (GroupNorm
also a rank-5 reshape and a float ``SQUARE``). In int8, ``SQUARED_DIFFERENCE``'s
``Prepare`` calls ``QuantizeMultiplierSmallerThanOneExp`` on
``(2 * max_input_scale)^2 / (2^14 * output_scale)``, a ``TFLITE_CHECK``: when the
squared deviations are small compared with the input's quantization range the
interpreter aborts the process in ``allocate_tensors``. :class:`NormalizationExport`
computes the same function as ``MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL`` (then the
affine ``MUL, ADD``): plain int8 kernels without that check, everything rank 4.

Every intermediate goes through ``self.quantize_point(name, tensor, training)``
(identity here); the quantized twin :class:`mvit3_keras.layers.QuantNormalization`
overrides only that (and how the constants gamma / beta are read).
"""

from __future__ import annotations

import keras
from keras import ops


def stepwise_mean(x, axes):
    """Mean over ``axes`` taken one axis at a time (equal-size groups: the same value).

    XNNPACK's int8 MEAN (ai-edge-litert 2.3.0) is off by 3-12x when one MEAN reduces
    more than 8192 elements (TFLite's builtin kernel is right); MobileViTv2's
    GroupNorm over a whole unfolded map reduces up to 65536 at 256x256. One axis
    per MEAN keeps each reduction small (below ~1400 px of input).
    """
    axes = [a % len(x.shape) for a in (axes if isinstance(axes, (list, tuple)) else [axes])]
    for axis in sorted(axes, reverse=True):
        x = ops.mean(x, axis=axis, keepdims=True)
    return x


@keras.saving.register_keras_serializable(package="mvit3_keras")
class NormalizationExport(keras.layers.Layer):
    """``(x - mean) * rsqrt(var + eps) * gamma + beta`` over ``axes``.

    ``axes=(-1,)``: ``keras.layers.LayerNormalization(axis=-1)``; ``axes=(1, 2, 3)``:
    ``keras.layers.GroupNormalization(groups=1)``. Variance is the biased
    (population) variance, as in both Keras layers and in PyTorch.
    ``stepwise_statistics``: each MEAN reduces one axis (:func:`stepwise_mean`),
    else one MEAN over all ``axes``. Quantization points: ``mean``, ``centered``,
    ``squared``, ``variance``, ``variance_eps``, ``rsqrt``, ``normalized``,
    ``scaled``, ``output``.
    """

    def __init__(
        self,
        axes=(-1,),
        epsilon: float = 1e-5,
        center: bool = True,
        scale: bool = True,
        stepwise_statistics: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axes = tuple(int(a) for a in axes)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.stepwise_statistics = bool(stepwise_statistics)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known")
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        self.built = True

    def quantize_point(self, name: str, x, training=None):
        """Identity; a quantized twin fake-quantizes tensor ``name`` here."""
        return x

    def affine_constant(self, weight, training=None):
        """How gamma / beta enter the graph (as they are; quantized in the twin)."""
        return weight

    def reduce_mean(self, x):
        if self.stepwise_statistics:
            return stepwise_mean(x, self.axes)
        return ops.mean(x, axis=self.axes, keepdims=True)

    def normalize(self, x, training=None):
        """``(x - mean) * rsqrt(var + eps)`` (before the affine part)."""

        def point(name, t):
            return self.quantize_point(name, t, training)

        mean = point("mean", self.reduce_mean(x))
        centered = point("centered", x - mean)
        squared = point("squared", centered * centered)
        var = point("variance", self.reduce_mean(squared))
        var = point("variance_eps", var + self.epsilon)
        return point("normalized", centered * point("rsqrt", ops.rsqrt(var)))

    def call(self, x, training=None):
        y = self.normalize(x, training)
        if self.scale:
            y = self.quantize_point("scaled", y * self.affine_constant(self.gamma, training))
        if self.center:
            y = self.quantize_point("output", y + self.affine_constant(self.beta, training))
        return y

    def get_config(self):
        config = super().get_config()
        config.update(
            axes=list(self.axes),
            epsilon=self.epsilon,
            center=self.center,
            scale=self.scale,
            stepwise_statistics=self.stepwise_statistics,
        )
        return config
