"""The quantization-aware layers (moved to :mod:`mvit3_keras.layers.quantized`, so a
saved QAT model loads after ``import mvit3_keras``); re-exported here."""

from __future__ import annotations

from mvit3_keras.layers.quantized import (
    QAT_LAYER_CLASSES,
    QuantActivation,
    QuantConv,
    QuantizeWrapper,
    QuantLinearSelfAttention,
    QuantMultiHeadSelfAttention,
    QuantNormalization,
)

__all__ = [
    "QAT_LAYER_CLASSES",
    "QuantActivation",
    "QuantConv",
    "QuantLinearSelfAttention",
    "QuantMultiHeadSelfAttention",
    "QuantNormalization",
    "QuantizeWrapper",
]
