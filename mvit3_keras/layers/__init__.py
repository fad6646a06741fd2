"""Custom Keras layers (all registered under the ``mvit3_keras`` package).

One class per concept, its formulations as switches: the attention cores
(``dim``: inference split projection; ``target``: export softmax), :class:`Unfold`
/ :class:`Fold` (``target``: export data movement), :class:`NormalizationExport`
(LayerNorm / GroupNorm(1) with explicit statistics ops), and the quantized twins
of :mod:`mvit3_keras.layers.quantized` (importing this package registers them, so
every saved model of this project loads after ``import mvit3_keras``).
"""

from mvit3_keras.layers.attention import (
    AttentionCore,
    LinearSelfAttention,
    MultiHeadSelfAttention,
    SplitPointwiseConv,
    patch_softmax,
    softmax,
)
from mvit3_keras.layers.batch_norm import BatchNorm
from mvit3_keras.layers.fake_quant import ActivationQuantizer, SharedRangeQuantizer
from mvit3_keras.layers.legacy import LEGACY_CLASSES
from mvit3_keras.layers.normalization import NormalizationExport, stepwise_mean
from mvit3_keras.layers.patches import EXPORT_TARGETS, Fold, Unfold, check_target
from mvit3_keras.layers.quantized import (
    QAT_LAYER_CLASSES,
    QUANT_CONV_TWINS,
    QuantActivation,
    QuantConv,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantizeWrapper,
    QuantLinearSelfAttention,
    QuantMultiHeadSelfAttention,
    QuantNormalization,
)
from mvit3_keras.layers.resize import ResizeLike, ResizeToEven, bilinear_resize

__all__ = [
    "EXPORT_TARGETS",
    "LEGACY_CLASSES",
    "QAT_LAYER_CLASSES",
    "QUANT_CONV_TWINS",
    "ActivationQuantizer",
    "AttentionCore",
    "BatchNorm",
    "Fold",
    "LinearSelfAttention",
    "MultiHeadSelfAttention",
    "NormalizationExport",
    "QuantActivation",
    "QuantConv",
    "QuantConv2D",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantLinearSelfAttention",
    "QuantMultiHeadSelfAttention",
    "QuantNormalization",
    "QuantizeWrapper",
    "ResizeLike",
    "ResizeToEven",
    "SharedRangeQuantizer",
    "SplitPointwiseConv",
    "Unfold",
    "bilinear_resize",
    "check_target",
    "patch_softmax",
    "softmax",
    "stepwise_mean",
]
