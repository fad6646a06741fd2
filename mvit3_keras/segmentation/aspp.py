"""Atrous spatial pyramid pooling (``cvnets/modules/aspp_block.py::ASPP``;
docs/semantics.md section 5).

Branches, concatenated in this order (5 x channels): ``convs.0`` 1x1
conv+BN+ReLU; ``convs.1..3`` 3x3 conv, dilation = rate (padding = rate),
+BN+ReLU (or, with ``aspp_sep_conv``, a separable conv: ``dw_conv`` DW 3x3 +
BN, ``pw_conv`` 1x1 + BN + ReLU); ``convs.4`` = image pooling: global mean ->
1x1 conv+BN+ReLU -> bilinear (align_corners=False, i.e. broadcast) back to
H x W. Then ``project`` 1x1 conv+BN+ReLU and dropout (v1 tree:
``nn.Dropout(0.1)``; v2 tree: ``Dropout2d(aspp_dropout)``).
"""

from __future__ import annotations

import keras

from mvit3_keras.blocks import conv_layer
from mvit3_keras.layers import ResizeLike

ACTIVATION = "relu"  # model.segmentation.activation.name in every official yaml


def separable_conv(
    x,
    filters,
    kernel_size,
    name,
    *,
    strides=1,
    dilation=1,
    use_norm=True,
    activation=ACTIVATION,
    use_bias=False,
):
    """``cvnets.layers.SeparableConv``: ``dw_conv`` (DW k x k + BN, no act) -> ``pw_conv``."""
    x = conv_layer(
        x,
        x.shape[-1],
        kernel_size,
        f"{name}.dw_conv",
        strides=strides,
        dilation=dilation,
        depthwise=True,
        activation=None,
    )
    return conv_layer(
        x,
        filters,
        1,
        f"{name}.pw_conv",
        use_norm=use_norm,
        activation=activation,
        use_bias=use_bias,
    )


def aspp(
    x,
    *,
    channels: int,
    rates,
    name: str,
    dropout: float = 0.1,
    separable: bool = False,
    head_style: str = "v2",
):
    """The ASPP block on ``x`` (``seg_head.aspp.aspp_layer``)."""
    branches = [conv_layer(x, channels, 1, f"{name}.convs.0", activation=ACTIVATION)]
    for i, rate in enumerate(rates, start=1):
        if separable:
            branches.append(separable_conv(x, channels, 3, f"{name}.convs.{i}", dilation=int(rate)))
        else:
            branches.append(
                conv_layer(
                    x, channels, 3, f"{name}.convs.{i}", dilation=int(rate), activation=ACTIVATION
                )
            )
    pooled = keras.layers.GlobalAveragePooling2D(
        keepdims=True, name=f"{name}.convs.4.aspp_pool.global_pool"
    )(x)
    pooled = conv_layer(
        pooled, channels, 1, f"{name}.convs.4.aspp_pool.conv_1x1", activation=ACTIVATION
    )
    pooled = ResizeLike(align_corners=False, name=f"{name}.convs.4.resize")([pooled, x])
    branches.append(pooled)
    y = keras.layers.Concatenate(name=f"{name}.concat")(branches)
    y = conv_layer(y, channels, 1, f"{name}.project", activation=ACTIVATION)
    if dropout:
        if head_style == "v1":
            y = keras.layers.Dropout(dropout, name=f"{name}.dropout")(y)
        else:
            y = keras.layers.SpatialDropout2D(dropout, name=f"{name}.dropout_layer")(y)
    return y
