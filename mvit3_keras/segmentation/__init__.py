"""Semantic segmentation: DeepLabv3 / PSPNet heads identical to the official code."""

from mvit3_keras.segmentation.layers import AdaptiveAveragePooling2D, ArgmaxMask, ScaleResize
from mvit3_keras.segmentation.losses import SegmentationCrossEntropy, resize_logits_to_labels
from mvit3_keras.segmentation.presets import HEADS, PRESETS, SegmentationConfig, resolve_config
from mvit3_keras.segmentation.segmenter import Segmenter, create_segmenter

__all__ = [
    "AdaptiveAveragePooling2D",
    "ArgmaxMask",
    "HEADS",
    "PRESETS",
    "ScaleResize",
    "SegmentationConfig",
    "SegmentationCrossEntropy",
    "Segmenter",
    "create_segmenter",
    "resize_logits_to_labels",
    "resolve_config",
]
