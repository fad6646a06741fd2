"""Fake quantization (moved to :mod:`mvit3_keras.layers.fake_quant`, so a saved QAT
model loads after ``import mvit3_keras``); re-exported here for existing imports."""

from __future__ import annotations

from mvit3_keras.layers.fake_quant import (
    UNIT_INTERVAL_RANGE,
    ActivationQuantizer,
    fake_quant,
    quantize_constant,
    quantize_weights_per_channel,
    snap_range_numpy,
)

__all__ = [
    "UNIT_INTERVAL_RANGE",
    "ActivationQuantizer",
    "fake_quant",
    "quantize_constant",
    "quantize_weights_per_channel",
    "snap_range_numpy",
]
