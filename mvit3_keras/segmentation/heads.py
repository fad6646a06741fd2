"""Classifier, upsampling and auxiliary head of the official segmentation heads.

v1 tree (``DeeplabV3`` of ml-cvnets d38a116): ``seg_head.classifier`` =
``Sequential(classifier_dropout = Dropout2d(0.1), classifier = 1x1 conv with
bias, up_<os> = UpSample(scale_factor=os, bilinear, align_corners=False))``.

v2 tree (``BaseSegHead`` of 84d992f): ``seg_head.classifier`` = 1x1 conv with
bias (no dropout), then ``upsample_seg_out`` = UpSample(scale_factor=os,
bilinear, **align_corners=True**).

Aux head (``use_aux_head``; computed only in training mode by the official
code): on the layer_4 features, 3x3 conv (-> ``max(C4 // 4, 128)``; v1 tree
``max(C4 // 4, 256)``) + BN + ReLU -> Dropout2d(0.1) -> 1x1 conv with bias.
Keys: v2 ``seg_head.aux_head.{0,2}``, v1 ``seg_head.aux_head.{aux_projection,
aux_classifier}``.
"""

from __future__ import annotations

import keras

from mvit3_keras.blocks import conv_layer
from mvit3_keras.segmentation.aspp import ACTIVATION


def classifier(x, num_classes: int, *, head_style: str, dropout: float = 0.1):
    """Low-resolution logits (the output of ``seg_head.classifier``'s conv)."""
    if head_style == "v1":
        if dropout:
            x = keras.layers.SpatialDropout2D(
                dropout, name="seg_head.classifier.classifier_dropout"
            )(x)
        name = "seg_head.classifier.classifier"
    else:
        name = "seg_head.classifier"
    return conv_layer(x, num_classes, 1, name, use_norm=False, activation=None, use_bias=True)


def aux_head(x, num_classes: int, *, head_style: str, dropout: float = 0.1):
    """Auxiliary logits on the layer_4 features (low resolution)."""
    c4 = x.shape[-1]
    if head_style == "v1":
        inner, names = max(c4 // 4, 256), ("aux_projection", "dropout", "aux_classifier")
    else:
        inner, names = max(c4 // 4, 128), ("0", "1", "2")
    prefix = "seg_head.aux_head."
    y = conv_layer(x, inner, 3, prefix + names[0], activation=ACTIVATION)
    if dropout:
        y = keras.layers.SpatialDropout2D(dropout, name=prefix + names[1])(y)
    return conv_layer(
        y, num_classes, 1, prefix + names[2], use_norm=False, activation=None, use_bias=True
    )


def upsample_name(head_style: str, output_stride: int) -> str:
    if head_style == "v1":
        return f"seg_head.classifier.up_{output_stride}"
    return "seg_head.upsample_seg_out"
