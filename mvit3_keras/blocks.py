"""Functional building blocks, named after the official ``state_dict`` modules.

Every weight-bearing Keras layer is named exactly like the PyTorch module that
owns the weights (``layer_3.1.local_rep.conv_3x3.block.conv``), so checkpoint
conversion is a generic name + layer-type rule (``mvit3_keras.convert``).
"""

from __future__ import annotations

import keras

from mvit3_keras import specs as S
from mvit3_keras.layers import (
    BatchNorm,
    Fold,
    LinearSelfAttention,
    MultiHeadSelfAttention,
    ResizeLike,
    ResizeToEven,
    Unfold,
)

BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d default (Keras default is 1e-3)
BN_MOMENTUM = 0.9  # torch momentum 0.1
LN_EPSILON = 1e-5  # torch.nn.LayerNorm / GroupNorm default


def conv_layer(
    x,
    filters: int,
    kernel_size: int,
    name: str,
    *,
    strides: int = 1,
    dilation: int = 1,
    depthwise: bool = False,
    use_norm: bool = True,
    activation: str | None = "swish",
    use_bias: bool = False,
):
    """``cvnets.layers.ConvLayer``: conv -> optional BN -> optional activation.

    PyTorch pads ``(k - 1) // 2 * dilation`` on every side. For stride 1 that is
    Keras ``"same"``; for strided convs Keras pads asymmetrically, so an explicit
    ``ZeroPadding2D`` + ``"valid"`` is used (docs/semantics.md, section 1).
    """
    pad = (kernel_size - 1) // 2 * dilation
    padding = "same"
    if strides > 1 and pad > 0:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}.block.pad")(x)
        padding = "valid"
    common = dict(
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        use_bias=use_bias,
        name=f"{name}.block.conv",
    )
    if depthwise:
        x = keras.layers.DepthwiseConv2D(**common)(x)
    else:
        x = keras.layers.Conv2D(filters, **common)(x)
    if use_norm:
        x = BatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}.block.norm")(x)
    if activation:
        x = keras.layers.Activation(activation, name=f"{name}.block.act")(x)
    return x


def inverted_residual(
    x, out_channels: int, stride: int, expand_ratio: float, name: str, *, dilation: int = 1
):
    """``cvnets.modules.InvertedResidual`` (MobileNetV2 block, docs/semantics.md section 1)."""
    in_channels = x.shape[-1]
    hidden = S.make_divisible(int(round(in_channels * expand_ratio)), 8)
    y = x
    if expand_ratio != 1:
        y = conv_layer(y, hidden, 1, f"{name}.block.exp_1x1")
    y = conv_layer(
        y, hidden, 3, f"{name}.block.conv_3x3", strides=stride, dilation=dilation, depthwise=True
    )
    y = conv_layer(y, out_channels, 1, f"{name}.block.red_1x1", activation=None)
    if stride == 1 and in_channels == out_channels:
        y = keras.layers.Add(name=f"{name}.add")([x, y])
    return y


def _is_even_static(x) -> bool:
    h, w = x.shape[1], x.shape[2]
    return h is not None and w is not None and h % 2 == 0 and w % 2 == 0


def _dropout(x, rate, name):
    if rate:
        x = keras.layers.Dropout(rate, name=name)(x)
    return x


def transformer_encoder(x, stage: S.MobileViTStageSpec, name: str, dropout: float):
    """``cvnets.modules.TransformerEncoder`` (pre-norm; v1 family) on ``[B, P, N, d]``."""
    d = stage.attn_dim
    y = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}.pre_norm_mha.0")(x)
    y = keras.layers.Dense(3 * d, name=f"{name}.pre_norm_mha.1.qkv_proj")(y)
    y = MultiHeadSelfAttention(stage.num_heads, name=f"{name}.pre_norm_mha.1.attn")(y)
    y = keras.layers.Dense(d, name=f"{name}.pre_norm_mha.1.out_proj")(y)
    y = _dropout(y, dropout, f"{name}.pre_norm_mha.2")
    x = keras.layers.Add(name=f"{name}.pre_norm_mha.add")([x, y])

    y = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}.pre_norm_ffn.0")(x)
    y = keras.layers.Dense(stage.ffn_dim, name=f"{name}.pre_norm_ffn.1")(y)
    y = keras.layers.Activation("swish", name=f"{name}.pre_norm_ffn.2")(y)
    y = keras.layers.Dense(d, name=f"{name}.pre_norm_ffn.4")(y)
    y = _dropout(y, dropout, f"{name}.pre_norm_ffn.5")
    return keras.layers.Add(name=f"{name}.pre_norm_ffn.add")([x, y])


def linear_attn_ffn(x, stage: S.MobileViTStageSpec, name: str):
    """``cvnets.modules.LinearAttnFFN`` (v2 family) on ``[B, P, N, d]``.

    The official 1x1 convs act on the ``[B, d, P, N]`` map; here they are 1x1
    ``Conv2D`` on the channels-last ``[B, P, N, d]`` map (same weights).
    LayerNorm2D is ``GroupNorm(1)`` over the whole ``(P, N, d)`` map.
    """
    d = stage.attn_dim
    y = keras.layers.GroupNormalization(
        groups=1, epsilon=LN_EPSILON, name=f"{name}.pre_norm_attn.0"
    )(x)
    y = keras.layers.Conv2D(1 + 2 * d, 1, name=f"{name}.pre_norm_attn.1.qkv_proj.block.conv")(y)
    y = LinearSelfAttention(name=f"{name}.pre_norm_attn.1.attn")(y)
    y = keras.layers.Conv2D(d, 1, name=f"{name}.pre_norm_attn.1.out_proj.block.conv")(y)
    x = keras.layers.Add(name=f"{name}.pre_norm_attn.add")([x, y])

    y = keras.layers.GroupNormalization(
        groups=1, epsilon=LN_EPSILON, name=f"{name}.pre_norm_ffn.0"
    )(x)
    y = keras.layers.Conv2D(stage.ffn_dim, 1, name=f"{name}.pre_norm_ffn.1.block.conv")(y)
    y = keras.layers.Activation("swish", name=f"{name}.pre_norm_ffn.1.block.act")(y)
    y = keras.layers.Conv2D(d, 1, name=f"{name}.pre_norm_ffn.3.block.conv")(y)
    return keras.layers.Add(name=f"{name}.pre_norm_ffn.add")([x, y])


def mobilevit_block_v1_family(
    x, stage: S.MobileViTStageSpec, block: str, name: str, dropout: float
):
    """MobileViTv3 block (docs/semantics.md, section 2) or MobileViTv1 block (section 10).

    Odd feature maps: only the transformer path is resized (bilinear,
    align_corners=False) to the next even size and back; the block keeps its
    input size.
    """
    c, d = x.shape[-1], stage.attn_dim
    v3 = block == S.BLOCK_MOBILEVITV3
    local = conv_layer(x, c, 3, f"{name}.local_rep.conv_3x3", depthwise=v3)
    local = conv_layer(local, d, 1, f"{name}.local_rep.conv_1x1", use_norm=False, activation=None)

    g = local
    if not _is_even_static(local):
        g = ResizeToEven(align_corners=False, name=f"{name}.resize_in")(local)
    unfolded_ref = g
    g = Unfold(name=f"{name}.unfold")(g)
    for i in range(stage.num_attn_blocks):
        g = transformer_encoder(g, stage, f"{name}.global_rep.{i}", dropout)
    g = keras.layers.LayerNormalization(
        epsilon=LN_EPSILON, name=f"{name}.global_rep.{stage.num_attn_blocks}"
    )(g)
    g = Fold(name=f"{name}.fold")([g, unfolded_ref])
    if unfolded_ref is not local:
        g = ResizeLike(align_corners=False, name=f"{name}.resize_out")([g, local])
    g = conv_layer(g, c, 1, f"{name}.conv_proj")

    if v3:
        fused = keras.layers.Concatenate(name=f"{name}.fusion_in")([local, g])
        out = conv_layer(fused, c, 1, f"{name}.fusion")
        return keras.layers.Add(name=f"{name}.add")([out, x])
    fused = keras.layers.Concatenate(name=f"{name}.fusion_in")([x, g])
    return conv_layer(fused, c, 3, f"{name}.fusion")


def mobilevit_block_v2_family(x, stage: S.MobileViTStageSpec, block: str, name: str, dilation: int):
    """MobileViTv3-v2 block (docs/semantics.md, section 3) or MobileViTv2 block (section 11).

    Odd feature maps: the block input is resized (bilinear, align_corners=True)
    to the next even size and the output stays at that size.
    """
    c, d = x.shape[-1], stage.attn_dim
    if not _is_even_static(x):
        x = ResizeToEven(align_corners=True, name=f"{name}.resize_in")(x)
    local = conv_layer(x, c, 3, f"{name}.local_rep.0", dilation=dilation, depthwise=True)
    local = conv_layer(local, d, 1, f"{name}.local_rep.1", use_norm=False, activation=None)

    g = Unfold(name=f"{name}.unfold")(local)
    for i in range(stage.num_attn_blocks):
        g = linear_attn_ffn(g, stage, f"{name}.global_rep.{i}")
    g = keras.layers.GroupNormalization(
        groups=1, epsilon=LN_EPSILON, name=f"{name}.global_rep.{stage.num_attn_blocks}"
    )(g)
    g = Fold(name=f"{name}.fold")([g, local])

    if block == S.BLOCK_MOBILEVITV3:
        fused = keras.layers.Concatenate(name=f"{name}.conv_proj_in")([g, local])
        out = conv_layer(fused, c, 1, f"{name}.conv_proj", activation=None)
        return keras.layers.Add(name=f"{name}.add")([out, x])
    return conv_layer(g, c, 1, f"{name}.conv_proj", activation=None)
