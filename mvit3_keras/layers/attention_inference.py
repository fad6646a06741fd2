"""Inference formulation of the attention blocks (used by ``optimize_for_inference``).

The official ``qkv_proj`` is one pointwise projection whose output is sliced into
q, k and v. At inference the attention core takes the projection's input and its
:class:`SplitPointwiseConv` computes the three slices as three 1x1 convolutions (same weights, split by output channel), so
no strided slice copies the projection output, the v1-family ``head_dim ** -0.5``
query scale lives in the q weights, and the MobileViTv2 ``relu(v)`` is fused into the
v convolution. :class:`MultiHeadSelfAttentionSplit` / :class:`LinearSelfAttentionSplit`
then run the same computation as :class:`~mvit3_keras.layers.MultiHeadSelfAttention` /
:class:`~mvit3_keras.layers.LinearSelfAttention` after their slicing.
"""

from __future__ import annotations

import keras

from mvit3_keras.layers.attention import LinearSelfAttention, MultiHeadSelfAttention


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


class _SplitProjectionCore:
    """Shared part of the split cores: ``self.qkv`` (a :class:`SplitPointwiseConv` of
    ``SPLITS(d)`` / ``ACTIVATIONS``) on the projection input, then ``_attend``."""

    SPLITS = staticmethod(lambda d: (d, d, d))
    ACTIVATIONS = (None, None, None)

    def build(self, input_shape):
        splits = self.SPLITS(self.attn_dim)
        super().build((*input_shape[:-1], sum(splits)))
        self.qkv = SplitPointwiseConv(
            splits, self.ACTIVATIONS, name="qkv_proj", dtype=self.dtype_policy
        )
        self.qkv.build(input_shape)

    def call(self, x, training=None):
        return self._attend(*self.qkv(x), training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.attn_dim)

    def get_config(self):
        config = super().get_config()
        config["dim"] = self.attn_dim
        return config


@keras.saving.register_keras_serializable(package="mvit3_keras")
class MultiHeadSelfAttentionSplit(_SplitProjectionCore, MultiHeadSelfAttention):
    """``qkv_proj`` + :class:`MultiHeadSelfAttention` on the projection's input: q, k, v
    from three 1x1 convs (``self.qkv``; q scale folded into the q weights)."""

    def __init__(self, num_heads: int = 4, dim: int = 64, attention_dropout: float = 0.0, **kw):
        super().__init__(num_heads, attention_dropout, **kw)
        self.attn_dim = int(dim)


@keras.saving.register_keras_serializable(package="mvit3_keras")
class LinearSelfAttentionSplit(_SplitProjectionCore, LinearSelfAttention):
    """``qkv_proj`` + :class:`LinearSelfAttention` on the projection's input: q, k and
    ``relu(v)`` from three 1x1 convs (``self.qkv``; the ReLU fused into the v conv)."""

    SPLITS = staticmethod(lambda d: (1, d, d))
    ACTIVATIONS = (None, None, "relu")

    def __init__(self, dim: int = 64, attention_dropout: float = 0.0, **kwargs):
        super().__init__(attention_dropout, **kwargs)
        self.attn_dim = int(dim)
