"""Variant specifications: every model of the zoo is data, not code.

The numbers reproduce the official configurations:

* v1 family (MobileViTv1 and MobileViTv3-S/XS/XXS and their L2 versions):
  ``cvnets/models/classification/config/mobilevit.py`` of apple/ml-cvnets
  @d38a116 with the MobileViTv3 overlay (``MobileViTv3-v1/`` of
  micronDLA/MobileViTv3; MobileViTv3 paper, Table 1).
* v2 family (MobileViTv2 and MobileViTv3-0.5 ... 2.0): ``config/mobilevit_v2.py``
  of ml-cvnets @84d992f with the overlay (``MobileViTv3-v2/``); all widths are
  one function of the width multiplier (MobileViTv2 paper, section 4).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# Block kinds. The two families differ in their token mixer; within a family the
# MobileViTv3 block and its baseline differ in how local, global and input
# features are fused (MobileViTv3 paper, section 3; docs/semantics.md sections 2, 3, 10, 11).
V1_FAMILY = "v1"  # unfold -> pre-norm transformer (MHA) -> LayerNorm -> fold
V2_FAMILY = "v2"  # unfold -> linear (separable) attention -> GroupNorm(1) -> fold

BLOCK_MOBILEVIT = "mobilevit"  # MobileViTv1: full 3x3 local conv, cat(x, g), 3x3 fusion
BLOCK_MOBILEVITV2 = "mobilevitv2"  # MobileViTv2: conv_proj(g), no residual
BLOCK_MOBILEVITV3 = "mobilevitv3"  # MobileViTv3: cat(local, g) / cat(g, local) + residual


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """``cvnets.utils.math_utils.make_divisible`` (the MobileNetV2 rounding rule)."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclasses.dataclass(frozen=True)
class MV2StageSpec:
    """A stage of MobileNetV2 inverted residual blocks (``layer_1``, ``layer_2``)."""

    out_channels: int
    num_blocks: int
    stride: int
    expand_ratio: float


@dataclasses.dataclass(frozen=True)
class MobileViTStageSpec:
    """``layer_3/4/5``: one strided MV2 block followed by one MobileViT block."""

    out_channels: int
    attn_dim: int
    ffn_dim: int
    num_attn_blocks: int
    mv_expand_ratio: float
    num_heads: int = 4  # v1 family only (every official v1 yaml: number_heads 4)
    stride: int = 2


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registered variant."""

    name: str
    family: str  # V1_FAMILY | V2_FAMILY
    block: str  # BLOCK_MOBILEVIT | BLOCK_MOBILEVITV2 | BLOCK_MOBILEVITV3
    stem_channels: int
    layer_1: MV2StageSpec
    layer_2: MV2StageSpec
    layer_3: MobileViTStageSpec
    layer_4: MobileViTStageSpec
    layer_5: MobileViTStageSpec
    exp_channels: Optional[int]  # conv_1x1_exp width (v1 family); None = Identity (v2)
    classifier_dropout: float
    transformer_dropout: float  # v1 family: dropout after MHA / FFN (train only)
    input_channel_order: str  # "bgr" (v1 tree, OpenCV) or "rgb" (v2 tree, PIL)
    cvnets_name: str  # stem of reference/keys/cls_<cvnets_name>.json
    display_name: str
    imagenet_top1: Optional[float] = None  # published ImageNet-1k top-1 (%)
    top1_source: str = ""
    eval_resize_interpolation: str = "bilinear"  # 288 resize then 256 center crop

    @property
    def stages(self):
        return (self.layer_1, self.layer_2, self.layer_3, self.layer_4, self.layer_5)

    @property
    def classifier_in_channels(self) -> int:
        return self.exp_channels or self.layer_5.out_channels

    @property
    def is_baseline(self) -> bool:
        return self.block != BLOCK_MOBILEVITV3

    def feature_channels(self) -> dict:
        """Channels of the multi-scale features ``P1``..``P5`` (stride 2**n)."""
        return {
            "P1": self.layer_1.out_channels,
            "P2": self.layer_2.out_channels,
            "P3": self.layer_3.out_channels,
            "P4": self.layer_4.out_channels,
            "P5": self.layer_5.out_channels,
        }


# ---------------------------------------------------------------------------
# v1 family: a table per mode (``config/mobilevit.py``, MobileViTv3-v1 overlay)
# ---------------------------------------------------------------------------
# mode: (layer_1, layer_2, (C, d, ffn) x 3, expand ratio)
_V1_WIDTHS = {
    # MobileViTv3 (widened C of layer_3..5, same d / ffn as MobileViTv1)
    "xx_small_v3": (16, 24, ((64, 64, 128), (80, 80, 160), (128, 96, 192)), 2),
    "x_small_v3": (32, 48, ((96, 96, 192), (160, 120, 240), (160, 144, 288)), 4),
    "small_v3": (32, 64, ((128, 144, 288), (256, 192, 384), (320, 240, 480)), 4),
    # MobileViTv1 baselines
    "xx_small": (16, 24, ((48, 64, 128), (64, 80, 160), (80, 96, 192)), 2),
    "x_small": (32, 48, ((64, 96, 192), (80, 120, 240), (96, 144, 288)), 4),
    "small": (32, 64, ((96, 144, 288), (128, 192, 384), (160, 240, 480)), 4),
}


# What every variant of a family shares: the v1 tree trains on OpenCV (BGR) images
# and evaluates with bilinear resizing, the v2 tree on PIL (RGB) images, bicubic.
_FAMILY_TRAITS = {
    V1_FAMILY: dict(
        stem_channels=16,
        classifier_dropout=0.1,
        input_channel_order="bgr",
        eval_resize_interpolation="bilinear",
    ),
    V2_FAMILY: dict(
        exp_channels=None,
        classifier_dropout=0.0,
        transformer_dropout=0.0,
        input_channel_order="rgb",
        eval_resize_interpolation="bicubic",
    ),
}


@dataclasses.dataclass(frozen=True)
class Published:
    """How a variant is published: names and ImageNet-1k top-1 (%) with its source."""

    display_name: str
    cvnets_name: str  # stem of reference/keys/cls_<cvnets_name>.json
    imagenet_top1: Optional[float] = None
    top1_source: str = ""


def v1_family_spec(
    name: str,
    mode: str,
    block: str,
    *,
    layer_4_blocks: int = 4,
    transformer_dropout: float,
    published: Published,
) -> ModelSpec:
    """A v1-family variant (``config/mobilevit.py`` ``mode``: ``x_small_v3`` ...)."""
    l1, l2, vit, expand = _V1_WIDTHS[mode]
    blocks = (2, layer_4_blocks, 3)
    vit_stages = [
        MobileViTStageSpec(
            out_channels=c, attn_dim=d, ffn_dim=f, num_attn_blocks=n, mv_expand_ratio=expand
        )
        for (c, d, f), n in zip(vit, blocks)
    ]
    c5 = vit[-1][0]
    return ModelSpec(
        name=name,
        family=V1_FAMILY,
        block=block,
        layer_1=MV2StageSpec(l1, 1, 1, expand),
        layer_2=MV2StageSpec(l2, 3, 2, expand),
        layer_3=vit_stages[0],
        layer_4=vit_stages[1],
        layer_5=vit_stages[2],
        exp_channels=min(4 * c5, 960),
        transformer_dropout=transformer_dropout,
        **_FAMILY_TRAITS[V1_FAMILY],
        **dataclasses.asdict(published),
    )


def v2_family_spec(
    name: str,
    width: float,
    block: str,
    *,
    published: Published,
) -> ModelSpec:
    """MobileViTv2 / MobileViTv3-v2 widths as a function of the multiplier
    (``config/mobilevit_v2.py``)."""
    stem = make_divisible(min(64.0, max(16.0, 32 * width)), 8)
    l1 = make_divisible(64 * width, 16)
    l2, l3, l4, l5 = (make_divisible(c * width, 8) for c in (128, 256, 384, 512))
    d3, d4, d5 = (make_divisible(c * width, 8) for c in (128, 192, 256))

    def ffn(d):
        return int((2 * d) // 16 * 16)

    vit = [
        MobileViTStageSpec(
            out_channels=c, attn_dim=d, ffn_dim=ffn(d), num_attn_blocks=n, mv_expand_ratio=2
        )
        for c, d, n in ((l3, d3, 2), (l4, d4, 4), (l5, d5, 3))
    ]
    return ModelSpec(
        name=name,
        family=V2_FAMILY,
        block=block,
        stem_channels=stem,
        layer_1=MV2StageSpec(l1, 1, 1, 2),
        layer_2=MV2StageSpec(l2, 2, 2, 2),
        layer_3=vit[0],
        layer_4=vit[1],
        layer_5=vit[2],
        **_FAMILY_TRAITS[V2_FAMILY],
        **dataclasses.asdict(published),
    )
