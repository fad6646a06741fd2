"""Pyramid pooling module of PSPNet (``cvnets/modules/pspnet_module.py::PSP``, v2 tree;
docs/semantics.md section 5).

``reduction = (C // len(pool_sizes)) // 16 * 16``; branch ``psp_branches.i``
= ``AdaptiveAvgPool2d(s)`` (PyTorch bins) -> ``.1`` 1x1 conv (C -> reduction)
+BN+ReLU -> bilinear **align_corners=True** back to H x W. Concatenate
``[x, b_1, b_2, ...]`` -> ``fusion.0`` 3x3 conv + BN + ReLU -> ``fusion.1``
Dropout2d.
"""

from __future__ import annotations

import keras

from mvit3_keras.blocks import conv_layer
from mvit3_keras.layers import ResizeLike
from mvit3_keras.segmentation.aspp import ACTIVATION
from mvit3_keras.segmentation.layers import AdaptiveAveragePooling2D


def psp_reduction_channels(in_channels: int, num_pools: int) -> int:
    return (in_channels // num_pools) // 16 * 16


def pyramid_pooling(x, *, channels: int, pool_sizes, name: str, dropout: float = 0.1):
    """The PSP block on ``x`` (``seg_head.psp_layer``)."""
    reduction = psp_reduction_channels(x.shape[-1], len(pool_sizes))
    if reduction < 1:
        raise ValueError(
            f"PSPNet needs at least 16 * {len(pool_sizes)} input channels, got {x.shape[-1]}"
        )
    parts = [x]
    for i, size in enumerate(pool_sizes):
        branch = f"{name}.psp_branches.{i}"
        y = AdaptiveAveragePooling2D(int(size), name=f"{branch}.0")(x)
        y = conv_layer(y, reduction, 1, f"{branch}.1", activation=ACTIVATION)
        parts.append(ResizeLike(align_corners=True, name=f"{branch}.resize")([y, x]))
    y = keras.layers.Concatenate(name=f"{name}.concat")(parts)
    y = conv_layer(y, channels, 3, f"{name}.fusion.0", activation=ACTIVATION)
    if dropout:
        y = keras.layers.SpatialDropout2D(dropout, name=f"{name}.fusion.1")(y)
    return y
