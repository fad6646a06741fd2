"""Token mixers of the two MobileViT families, as weight-free cores.

The projections around them (``qkv_proj`` / ``out_proj``) are ordinary Keras
``Dense`` / ``Conv2D`` layers in the functional graph, named after the
official modules, so checkpoint conversion, quantization and TFLite export see
standard layers.
"""

from __future__ import annotations

import keras
from keras import ops

from mvit3_keras.layers.patches import _dim


def softmax(x, axis: int):
    """``ops.softmax`` that writes a softmax over a static size-1 axis as ones.

    A 2x2 feature map has one patch, so the official attention softmaxes over one
    token: the result is exactly 1 for finite scores (and its gradient 0). Writing it
    as ones keeps that semantics without a pointless softmax (and Keras' warning).
    """
    if x.shape[axis] == 1:
        return ops.ones_like(x)
    return ops.softmax(x, axis=axis)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Scaled dot-product attention of ``cvnets.layers.MultiHeadAttention``.

    Input: the output of ``qkv_proj``, ``[B, P, N, 3 * d]`` with rows
    ``[0:d]`` = q, ``[d:2d]`` = k, ``[2d:3d]`` = v and head j at
    ``j*d/h:(j+1)*d/h`` within each (NOTES.md section 2). Attention runs over
    the N patches of each of the P sequences; ``q`` is scaled by
    ``head_dim ** -0.5``. Output: concatenated heads ``[B, P, N, d]``.
    """

    def __init__(self, num_heads: int = 4, attention_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.attention_dropout = float(attention_dropout)

    def build(self, input_shape):
        three_d = input_shape[-1]
        if three_d % 3 or (three_d // 3) % self.num_heads:
            raise ValueError(
                f"qkv width {three_d} is not 3 * num_heads * head_dim (num_heads={self.num_heads})"
            )
        self.dim = three_d // 3
        self.head_dim = self.dim // self.num_heads
        self.dropout = keras.layers.Dropout(self.attention_dropout, name="attn_dropout")
        self.built = True

    def call(self, qkv, training=None):
        d, hd = self.dim, self.head_dim
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        q = q * ops.cast(hd**-0.5, q.dtype)
        return self._attend(q, k, v, training)

    def _attend(self, q, k, v, training):
        """Attention of the scaled ``q`` and ``k``, ``v`` (each ``[B, P, N, d]``)."""
        p, n = _dim(q, 1), _dim(q, 2)
        d, h, hd = self.dim, self.num_heads, self.head_dim

        def heads(t):  # [B, P, N, d] -> [B*P, h, N, hd]
            return ops.transpose(ops.reshape(t, (-1, n, h, hd)), (0, 2, 1, 3))

        q, k, v = heads(q), heads(k), heads(v)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # [B*P, h, N, N]
        weights = softmax(scores, axis=-1)
        weights = self.dropout(weights, training=training)
        out = ops.matmul(weights, v)  # [B*P, h, N, hd]
        out = ops.transpose(out, (0, 2, 1, 3))  # [B*P, N, h, hd]
        return ops.reshape(out, (-1, p, n, d))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 3)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, attention_dropout=self.attention_dropout)
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class LinearSelfAttention(keras.layers.Layer):
    """Separable self-attention of MobileViTv2 (``cvnets.layers.LinearSelfAttention``).

    Input: the output of ``qkv_proj``, ``[B, P, N, 1 + 2d]``, split as
    ``[1, d, d]``. ``s = softmax(q)`` over the N patches (separately for each
    of the P pixel positions), ``ctx = sum_N(k * s)``, output
    ``relu(v) * ctx`` (``[B, P, N, d]``, before ``out_proj``).
    """

    def __init__(self, attention_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.attention_dropout = float(attention_dropout)

    def build(self, input_shape):
        width = input_shape[-1]
        if (width - 1) % 2:
            raise ValueError(f"qkv width {width} is not 1 + 2 * d")
        self.dim = (width - 1) // 2
        self.dropout = keras.layers.Dropout(self.attention_dropout, name="attn_dropout")
        self.built = True

    def call(self, qkv, training=None):
        d = self.dim
        q, k, v = qkv[..., :1], qkv[..., 1 : 1 + d], qkv[..., 1 + d :]
        return self._attend(q, k, ops.relu(v), training)

    def _attend(self, q, k, v_relu, training):
        scores = softmax(q, axis=2)
        scores = self.dropout(scores, training=training)
        context = ops.sum(k * scores, axis=2, keepdims=True)  # [B, P, 1, d]
        return v_relu * context

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], (input_shape[-1] - 1) // 2)

    def get_config(self):
        config = super().get_config()
        config["attention_dropout"] = self.attention_dropout
        return config
