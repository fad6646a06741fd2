"""Custom Keras layers (all registered under the ``mvit3_keras`` package)."""

from mvit3_keras.layers.attention import LinearSelfAttention, MultiHeadSelfAttention
from mvit3_keras.layers.attention_inference import (
    LinearSelfAttentionSplit,
    MultiHeadSelfAttentionSplit,
    SplitPointwiseConv,
)
from mvit3_keras.layers.batch_norm import BatchNorm
from mvit3_keras.layers.patches import Fold, Unfold
from mvit3_keras.layers.resize import ResizeLike, ResizeToEven, bilinear_resize

__all__ = [
    "BatchNorm",
    "Fold",
    "LinearSelfAttention",
    "LinearSelfAttentionSplit",
    "MultiHeadSelfAttentionSplit",
    "MultiHeadSelfAttention",
    "ResizeLike",
    "ResizeToEven",
    "SplitPointwiseConv",
    "Unfold",
    "bilinear_resize",
]
