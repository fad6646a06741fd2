"""Export formulations: layers that compute exactly what the model layers compute,
written with the TFLite ops that quantize to int8 safely and map to the Edge TPU.

Why each one exists (measured with TF 2.21 / ai-edge-litert 2.3.0):

* :class:`NormalizationExport` replaces ``LayerNormalization`` and
  ``GroupNormalization(groups=1)``. The stock layers lower to ``tf.nn.moments``,
  i.e. ``MEAN`` + ``SQUARED_DIFFERENCE`` + a float ``NEG`` (GroupNorm also a
  rank-5 reshape and a float ``SQUARE``). In int8, ``SQUARED_DIFFERENCE``'s
  ``Prepare`` calls ``QuantizeMultiplierSmallerThanOneExp`` on
  ``(2 * max_input_scale)^2 / (2^14 * output_scale)``, which is a ``TFLITE_CHECK``:
  when the squared deviations are small compared with the input's quantization
  range (the input shares a range with a wider tensor, e.g. through a
  concatenation) the interpreter ABORTS the process in ``allocate_tensors``.
  Written as ``MEAN``, ``SUB``, ``MUL``, ``MEAN``, ``ADD``, ``RSQRT``, ``MUL``
  every op is a plain int8 kernel without that check, everything stays rank 4,
  and there are no float islands.
* :class:`UnfoldExport` / :class:`FoldExport` replace ``Unfold`` / ``Fold``
  (``mvit3_keras.layers.patches``) with ``SPACE_TO_DEPTH`` / ``DEPTH_TO_SPACE``
  (generic target) or with slices + concatenations (Edge TPU: no
  ``DEPTH_TO_SPACE`` on the Edge TPU, and the rank-4 ``[2, N, 2, C]``
  intermediate of the reshape formulation has four non-unit dimensions,
  which the Edge TPU does not allow). Pure data movement: bit-identical.
* :class:`LinearSelfAttentionExport` is the v2-family separable attention with
  the softmax over the N patches written as a last-axis softmax (generic) or
  as one 1-D softmax per patch position (Edge TPU: "Softmax supports only 1-D
  input tensors").

All layers are registered Keras layers with a complete ``get_config`` so an
exported-formulation or QAT model saves and loads as ``.keras``.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from mvit3_keras.layers.attention import softmax

TARGETS = ("generic", "edgetpu")


def _check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return target


@keras.saving.register_keras_serializable(package="mvit3_keras")
class NormalizationExport(keras.layers.Layer):
    """``(x - mean) * rsqrt(var + eps) * gamma + beta`` over ``axes``.

    ``axes=(-1,)``: ``keras.layers.LayerNormalization(axis=-1)``;
    ``axes=(1, 2, 3)``: ``keras.layers.GroupNormalization(groups=1)`` (the v2
    family's LayerNorm2D, NOTES.md section 3). Variance is the biased
    (population) variance, as in both Keras layers and in PyTorch.
    """

    def __init__(
        self, axes=(-1,), epsilon: float = 1e-5, center: bool = True, scale: bool = True, **kwargs
    ):
        super().__init__(**kwargs)
        self.axes = tuple(int(a) for a in axes)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known")
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        self.built = True

    def normalize(self, x):
        """``(x - mean) * rsqrt(var + eps)`` (before the affine part)."""
        mean = stepwise_mean(x, self.axes)
        centered = x - mean
        var = stepwise_mean(centered * centered, self.axes)
        return centered * ops.rsqrt(var + self.epsilon)

    def call(self, x):
        y = self.normalize(x)
        if self.scale:
            y = y * self.gamma
        if self.center:
            y = y + self.beta
        return y

    def get_config(self):
        config = super().get_config()
        config.update(
            axes=list(self.axes), epsilon=self.epsilon, center=self.center, scale=self.scale
        )
        return config


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


def _static_hw(x, reference=None):
    ref = x if reference is None else reference
    h, w = ref.shape[1], ref.shape[2]
    if h is None or w is None:
        raise ValueError(
            "the export formulation needs a static spatial size; export with a fixed "
            "input_shape (export_tflite(..., input_shape=(H, W, 3)))"
        )
    return int(h), int(w)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class UnfoldExport(keras.layers.Layer):
    """``[B, H, W, C]`` -> ``[B, 4, N, C]``, same order as ``Unfold``.

    ``SPACE_TO_DEPTH(2)`` puts pixel ``(py, px)`` of every 2x2 patch at channel
    block ``py * 2 + px``: ``[B, H/2, W/2, 4C]`` -> reshape ``[B, N, 4, C]`` ->
    transpose ``[B, 4, N, C]`` (the official ``p = py * 2 + px`` sequences of
    row-major patches). Supported as is by TFLite int8, XNNPACK and the Edge
    TPU (``SpaceToDepth``; ``Transpose`` with a leading 1).
    """

    def __init__(self, target: str = "generic", **kwargs):
        super().__init__(**kwargs)
        self.target = _check_target(target)

    def call(self, x):
        h, w = _static_hw(x)
        c = x.shape[-1]
        n = (h // 2) * (w // 2)
        y = tf.nn.space_to_depth(x, 2)
        y = ops.reshape(y, (-1, n, 4, c))
        return ops.transpose(y, (0, 2, 1, 3))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, 4, (h // 2) * (w // 2), c)

    def get_config(self):
        config = super().get_config()
        config["target"] = self.target
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class FoldExport(keras.layers.Layer):
    """Inverse of :class:`UnfoldExport`; ``call([patches, reference])``.

    generic: transpose ``[B, N, 4, C]`` -> reshape ``[B, H/2, W/2, 4C]`` ->
    ``DEPTH_TO_SPACE(2)``. edgetpu: the four ``[B, H/2, W/2, C]`` sub-images are
    interleaved by concatenation + reshape (``px`` along the channels, then
    ``py`` along the width), ops the Edge TPU maps.
    """

    def __init__(self, target: str = "generic", **kwargs):
        super().__init__(**kwargs)
        self.target = _check_target(target)

    def call(self, inputs):
        x, reference = inputs
        h, w = _static_hw(x, reference)
        c = x.shape[-1]
        nh, nw = h // 2, w // 2
        if self.target == "generic":
            y = ops.transpose(x, (0, 2, 1, 3))  # [B, N, 4, C]
            y = ops.reshape(y, (-1, nh, nw, 4 * c))
            return tf.nn.depth_to_space(y, 2)
        maps = [ops.reshape(x[:, p : p + 1], (-1, nh, nw, c)) for p in range(4)]
        rows = []
        for py in range(2):
            pair = ops.concatenate([maps[2 * py], maps[2 * py + 1]], axis=-1)  # [.., nw, 2C]
            rows.append(ops.reshape(pair, (-1, nh, 2 * nw, c)))  # col = ix * 2 + px
        y = ops.concatenate(rows, axis=2)  # [B, nh, (py, 2nw), C]
        return ops.reshape(y, (-1, h, w, c))  # row = iy * 2 + py

    def compute_output_shape(self, input_shapes):
        patches, reference = input_shapes
        return (patches[0], reference[1], reference[2], patches[3])

    def get_config(self):
        config = super().get_config()
        config["target"] = self.target
        return config


def patch_softmax(q, target: str):
    """Softmax of ``q`` ``[B, P, N, 1]`` over the N patches (axis 2)."""
    p, n = q.shape[1], q.shape[2]
    if target == "generic":
        s = softmax(ops.reshape(q, (-1, p, n)), axis=-1)
        return ops.reshape(s, (-1, p, n, 1))
    parts = [
        ops.reshape(softmax(ops.reshape(q[:, i : i + 1], (-1, n)), axis=-1), (-1, 1, n, 1))
        for i in range(p)
    ]
    return ops.concatenate(parts, axis=1)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class LinearSelfAttentionExport(keras.layers.Layer):
    """``mvit3_keras.layers.LinearSelfAttention`` with an export-friendly softmax.

    ``s = softmax_N(q)``, ``ctx = sum_N(k * s)``, ``out = relu(v) * ctx``
    (MobileViTv2 paper, section 3.2) with no ``BATCH_MATMUL``.
    """

    def __init__(self, target: str = "generic", attention_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.target = _check_target(target)
        self.attention_dropout = float(attention_dropout)

    def build(self, input_shape):
        width = input_shape[-1]
        if (width - 1) % 2:
            raise ValueError(f"qkv width {width} is not 1 + 2 * d")
        self.dim = (width - 1) // 2
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError(f"{self.name}: the export formulation needs static P and N")
        self.dropout = keras.layers.Dropout(self.attention_dropout, name="attn_dropout")
        self.built = True

    def call(self, qkv, training=None):
        d = self.dim
        q, k, v = qkv[..., :1], qkv[..., 1 : 1 + d], qkv[..., 1 + d :]
        scores = self.dropout(patch_softmax(q, self.target), training=training)
        context = ops.sum(k * scores, axis=2, keepdims=True)
        return ops.relu(v) * context

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], (input_shape[-1] - 1) // 2)

    def get_config(self):
        config = super().get_config()
        config.update(target=self.target, attention_dropout=self.attention_dropout)
        return config
