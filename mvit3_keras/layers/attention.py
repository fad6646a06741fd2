"""Token mixers of the two MobileViT families: one layer each, formulations as switches.

The projections around them (``qkv_proj`` / ``out_proj``) are ordinary Keras
``Dense`` / ``Conv2D`` layers in the functional graph, named after the official
modules, so checkpoint conversion, quantization and TFLite export see standard
layers. Each core has the switches its formulations need:

* ``dim`` (inference formulation, set by ``mvit3_keras.optimize_for_inference``):
  the core takes ``qkv_proj``'s *input* and owns the projection as three 1x1
  convolutions (:class:`SplitPointwiseConv`, same weights split by output
  channel), so no strided slice copies the projection output, the v1-family
  ``head_dim ** -0.5`` query scale lives in the q weights and the MobileViTv2
  ``relu(v)`` is fused into the v convolution;
* ``target`` (:class:`LinearSelfAttention` only, export formulation): the softmax
  over the N patches as a last-axis softmax (``"generic"``) or one 1-D softmax per
  patch position (``"edgetpu"``: "Softmax supports only 1-D input tensors").

Every intermediate that an int8 graph quantizes goes through
``self.quantize_point(name, tensor, training)`` (identity here); the quantized
twins in :mod:`mvit3_keras.layers.quantized` override only that.
"""

from __future__ import annotations

import keras
from keras import ops

from mvit3_keras.layers.patches import axis_size, check_target


def softmax(x, axis: int):
    """``ops.softmax`` that writes a softmax over a static size-1 axis as ones.

    A 2x2 feature map has one patch, so the official attention softmaxes over one
    token: the result is exactly 1 for finite scores (and its gradient 0). Writing it
    as ones keeps that semantics without a pointless softmax (and Keras' warning).
    """
    if x.shape[axis] == 1:
        return ops.ones_like(x)
    return ops.softmax(x, axis=axis)


def patch_softmax(q, target: str):
    """Softmax of ``q`` ``[B, P, N, 1]`` over the N patches (axis 2), export formulation:
    one last-axis softmax over ``[B, P, N]`` (generic) or one 1-D softmax per patch
    position (Edge TPU). Same values as ``softmax(q, axis=2)``."""
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
class SplitPointwiseConv(keras.layers.Layer):
    """1x1 convolutions of one input, one per output slice; returns a list."""

    def __init__(self, splits=(1, 1), activations=None, **kwargs):
        super().__init__(**kwargs)
        self.splits = tuple(int(n) for n in splits)
        activations = activations or (None,) * len(self.splits)
        if len(activations) != len(self.splits):
            raise ValueError(f"{len(activations)} activations for {len(self.splits)} splits")
        self.activations = tuple(activations)

    def build(self, input_shape):
        self.convs = []
        for i, (units, act) in enumerate(zip(self.splits, self.activations)):
            conv = keras.layers.Conv2D(
                units, 1, activation=act, name=f"conv_{i}", dtype=self.dtype_policy
            )
            conv.build(input_shape)
            self.convs.append(conv)
        self.built = True

    def call(self, x):
        return [conv(x) for conv in self.convs]

    def compute_output_shape(self, input_shape):
        return [(*input_shape[:-1], units) for units in self.splits]

    def set_split_weights(self, kernel, bias):
        """``kernel [C_in, sum(splits)]`` and ``bias [sum(splits)]``, split by column."""
        start = 0
        for conv, units in zip(self.convs, self.splits):
            stop = start + units
            conv.set_weights([kernel[None, None, :, start:stop], bias[start:stop]])
            start = stop

    def get_config(self):
        config = super().get_config()
        config.update(splits=list(self.splits), activations=list(self.activations))
        return config


class AttentionCore(keras.layers.Layer):
    """What both cores share: attention dropout, the optional split projection
    (``dim``) and the quantization points.

    Subclasses define ``qkv_splits(dim)``, ``QKV_ACTIVATIONS``, ``split_qkv(qkv)`` and
    ``attend(q, k, v, training)``.
    """

    QKV_ACTIVATIONS = (None, None, None)

    def __init__(self, attention_dropout: float = 0.0, dim=None, **kwargs):
        super().__init__(**kwargs)
        self.attention_dropout = float(attention_dropout)
        self.projection_dim = None if dim is None else int(dim)

    def quantize_point(self, name: str, x, training=None):
        """Identity; a quantized twin fake-quantizes tensor ``name`` here."""
        return x

    def build(self, input_shape):
        if self.projection_dim is not None:
            splits = self.qkv_splits(self.projection_dim)
            self.qkv = SplitPointwiseConv(
                splits, self.QKV_ACTIVATIONS, name="qkv_proj", dtype=self.dtype_policy
            )
            self.qkv.build(input_shape)
            input_shape = (*input_shape[:-1], sum(splits))
        self.build_core(input_shape)
        self.dropout = keras.layers.Dropout(
            self.attention_dropout, name="attn_dropout", dtype=self.dtype_policy
        )
        self.built = True

    def call(self, inputs, training=None):
        if self.projection_dim is not None:
            q, k, v = self.qkv(inputs)
        else:
            q, k, v = self.split_qkv(inputs)
        return self.attend(q, k, v, training)

    def compute_output_shape(self, input_shape):
        if self.projection_dim is not None:
            return (*input_shape[:-1], self.projection_dim)
        return (*input_shape[:-1], self.output_width(input_shape[-1]))

    def get_config(self):
        config = super().get_config()
        config.update(attention_dropout=self.attention_dropout, dim=self.projection_dim)
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class MultiHeadSelfAttention(AttentionCore):
    """Scaled dot-product attention of ``cvnets/layers/multi_head_attention.py``.

    Input: the output of ``qkv_proj``, ``[B, P, N, 3 * d]`` with ``[0:d]`` = q,
    ``[d:2d]`` = k, ``[2d:3d]`` = v and head j at ``j*d/h:(j+1)*d/h`` within each
    (``MultiHeadAttention.forward_default``); with ``dim=d`` the projection's input
    ``[B, P, N, C]`` (q scale folded into the q weights). Attention runs over the N
    patches of each of the P sequences; ``q`` is scaled by ``head_dim ** -0.5``.
    Output: concatenated heads ``[B, P, N, d]``. Quantization points: ``query``
    (scaled q), ``scores``, ``softmax``, ``output`` (weights @ v).
    """

    def __init__(self, num_heads: int = 4, attention_dropout: float = 0.0, dim=None, **kwargs):
        super().__init__(attention_dropout, dim, **kwargs)
        self.num_heads = int(num_heads)

    @staticmethod
    def qkv_splits(dim):
        return (dim, dim, dim)

    @staticmethod
    def output_width(qkv_width):
        return qkv_width // 3

    def build_core(self, qkv_shape):
        three_d = qkv_shape[-1]
        if three_d % 3 or (three_d // 3) % self.num_heads:
            raise ValueError(
                f"qkv width {three_d} is not 3 * num_heads * head_dim (num_heads={self.num_heads})"
            )
        self.dim = three_d // 3
        self.head_dim = self.dim // self.num_heads

    def split_qkv(self, qkv):
        d = self.dim
        q = qkv[..., :d]
        return q * ops.cast(self.head_dim**-0.5, q.dtype), qkv[..., d : 2 * d], qkv[..., 2 * d :]

    def attend(self, q, k, v, training=None):
        """Attention of the scaled ``q`` and ``k``, ``v`` (each ``[B, P, N, d]``)."""
        p, n = axis_size(q, 1), axis_size(q, 2)
        d, h, hd = self.dim, self.num_heads, self.head_dim

        def heads(t):  # [B, P, N, d] -> [B*P, h, N, hd]
            return ops.transpose(ops.reshape(t, (-1, n, h, hd)), (0, 2, 1, 3))

        q = self.quantize_point("query", q, training)
        q, k, v = heads(q), heads(k), heads(v)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # [B*P, h, N, N]
        scores = self.quantize_point("scores", scores, training)
        weights = self.quantize_point("softmax", softmax(scores, axis=-1), training)
        weights = self.dropout(weights, training=training)
        out = self.quantize_point("output", ops.matmul(weights, v), training)  # [B*P, h, N, hd]
        out = ops.transpose(out, (0, 2, 1, 3))  # [B*P, N, h, hd]
        return ops.reshape(out, (-1, p, n, d))

    def get_config(self):
        config = super().get_config()
        config["num_heads"] = self.num_heads
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class LinearSelfAttention(AttentionCore):
    """Separable self-attention of MobileViTv2 (``cvnets/layers/linear_attention.py``,
    ``LinearSelfAttention._forward_self_attn``; MobileViTv2 paper, section 3.2).

    Input: the output of ``qkv_proj``, ``[B, P, N, 1 + 2d]``, split as ``[1, d, d]``
    (with ``dim=d``: the projection's input; ``relu`` fused into the v conv).
    ``s = softmax(q)`` over the N patches (separately for each of the P pixel
    positions), ``ctx = sum_N(k * s)``, output ``relu(v) * ctx`` (``[B, P, N, d]``,
    before ``out_proj``), no ``BATCH_MATMUL``. ``target``: the export formulation of
    the softmax (:func:`patch_softmax`, static P and N). Quantization points:
    ``softmax``, ``weighted_keys``, ``context``, ``relu_values``, ``output``.
    """

    QKV_ACTIVATIONS = (None, None, "relu")

    def __init__(self, attention_dropout: float = 0.0, dim=None, target=None, **kwargs):
        super().__init__(attention_dropout, dim, **kwargs)
        self.target = check_target(target, allow_none=True)

    @staticmethod
    def qkv_splits(dim):
        return (1, dim, dim)

    @staticmethod
    def output_width(qkv_width):
        return (qkv_width - 1) // 2

    def build_core(self, qkv_shape):
        width = qkv_shape[-1]
        if (width - 1) % 2:
            raise ValueError(f"qkv width {width} is not 1 + 2 * d")
        self.dim = (width - 1) // 2
        if self.target is not None and (qkv_shape[1] is None or qkv_shape[2] is None):
            raise ValueError(
                f"{self.name}: the export formulation (target={self.target!r}) needs static "
                "P and N; build the model with a fixed input_shape"
            )

    def split_qkv(self, qkv):
        d = self.dim
        return qkv[..., :1], qkv[..., 1 : 1 + d], ops.relu(qkv[..., 1 + d :])

    def attend(self, q, k, v_relu, training=None):
        if self.target is None:
            scores = softmax(q, axis=2)
        else:
            scores = patch_softmax(q, self.target)
        scores = self.quantize_point("softmax", scores, training)
        scores = self.dropout(scores, training=training)
        weighted = self.quantize_point("weighted_keys", k * scores, training)
        context = ops.sum(weighted, axis=2, keepdims=True)  # [B, P, 1, d]
        context = self.quantize_point("context", context, training)
        v_relu = self.quantize_point("relu_values", v_relu, training)
        return self.quantize_point("output", v_relu * context, training)

    def get_config(self):
        config = super().get_config()
        config["target"] = self.target
        return config
