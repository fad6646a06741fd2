"""Official segmentation configurations as named presets.

The numbers are those of the official yamls (micronDLA/MobileViTv3):

* v1 family (MobileViTv3-XXS/XS/S, MobileViTv1): ``MobileViTv3-v1/config/
  segmentation/deeplabv3_mobilevitv3_*.yaml`` -- PASCAL VOC, DeepLabv3,
  output stride 16, ASPP rates 6/12/18, 256 channels, no aux head.
* v2 family (MobileViTv3-0.5 ... 2.0, MobileViTv2): ``MobileViTv3-v2/config/
  segmentation/{pascal_voc,ade20k}/{deeplabv3,pspnet}_mobilevitv3.yaml`` --
  PASCAL VOC: output stride 16, rates 6/12/18; ADE20K: output stride 8, rates
  12/24/36; 512 ASPP / PSP channels, PSP pool sizes 1/2/3/6, aux head
  (training only, loss weight 0.4).

``n_classes`` is not in the yamls (the dataset sets it): VOC 21, ADE20K 150.
The label ignored by the loss is 255 for VOC and -1 for ADE20K: the official
ADE20K dataset subtracts 1 from the stored labels, so label 0 ("other") becomes
-1 (ignored) and the 150 object classes are 0..149.

There is no official v1-family ADE20K configuration; ``preset="ade20k"`` on
a v1-family backbone uses the v1 head (256 channels, no aux head) with the
ADE20K output stride, rates and classes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from mvit3_keras import specs as S

HEADS = ("deeplabv3", "pspnet")
PRESETS = ("pascal_voc", "ade20k")


@dataclasses.dataclass(frozen=True)
class SegmentationConfig:
    """Everything :func:`create_segmenter` needs besides the backbone (validated
    on construction; rates and pool sizes are stored as tuples of ints)."""

    head: str  # "deeplabv3" | "pspnet"
    num_classes: int  # 21 (VOC) / 150 (ADE20K) by preset
    output_stride: int  # 16 (VOC) / 8 (ADE20K) by preset; 32: no dilation
    aspp_channels: int  # DeepLabv3 ASPP (cvnets/modules/aspp_block.py)
    aspp_rates: tuple
    aspp_dropout: float
    aspp_separable: bool
    psp_channels: int  # PSPNet pyramid (cvnets/modules/pspnet_module.py)
    psp_pool_sizes: tuple
    psp_dropout: float
    classifier_dropout: float  # v1 DeepLabv3 only (Dropout2d before the classifier)
    aux_head: bool  # the training-only aux head on layer_4 (v2 presets: on)
    aux_dropout: float  # 0.1
    aux_loss_weight: float  # 0.4
    ignore_index: int  # label ignored by the loss: 255 (VOC) / -1 (ADE20K)
    head_style: str  # "v1" (ml-cvnets d38a116 heads) or "v2" (84d992f heads)

    def __post_init__(self):
        for name in ("aspp_rates", "psp_pool_sizes"):
            object.__setattr__(self, name, _int_tuple(name, getattr(self, name)))
        _validate(self)

    def to_dict(self) -> dict:
        """JSON-like (lists, not tuples), as stored in a saved model's config."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


# The SegmentationConfig fields that create_segmenter takes as arguments.
OVERRIDABLE_FIELDS = (
    "num_classes",
    "output_stride",
    "aspp_channels",
    "aspp_rates",
    "aspp_dropout",
    "aspp_separable",
    "psp_channels",
    "psp_pool_sizes",
    "psp_dropout",
    "classifier_dropout",
    "aux_head",
    "aux_dropout",
    "aux_loss_weight",
)


def _preset_values(preset: str, family: str) -> dict:
    v1 = family == S.V1_FAMILY
    if preset == "pascal_voc":
        values = dict(num_classes=21, output_stride=16, aspp_rates=(6, 12, 18), ignore_index=255)
    elif preset == "ade20k":
        values = dict(num_classes=150, output_stride=8, aspp_rates=(12, 24, 36), ignore_index=-1)
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} or None")
    values.update(
        aspp_channels=256 if v1 else 512,
        aspp_dropout=0.1,
        aspp_separable=False,
        psp_channels=512,
        psp_pool_sizes=(1, 2, 3, 6),
        psp_dropout=0.1,
        classifier_dropout=0.1,
        aux_head=not v1,
        aux_dropout=0.1,
        aux_loss_weight=0.4,
    )
    return values


def resolve_config(spec: S.ModelSpec, head: str, preset: Optional[str], overrides: dict):
    """Preset values, then every explicitly given (non-``None``) override."""
    values = _preset_values(preset or "pascal_voc", spec.family)
    # DeepLabv3 follows each family's tree; PSPNet exists (for MobileViT) only in
    # the v2 tree (ml-cvnets 84d992f), so its semantics are used for every backbone.
    values["head_style"] = spec.family if head == "deeplabv3" else S.V2_FAMILY
    values["head"] = head
    unknown = set(overrides) - set(OVERRIDABLE_FIELDS)
    if unknown:
        raise TypeError(
            f"unknown segmentation option(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(OVERRIDABLE_FIELDS)}"
        )
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
    return SegmentationConfig(**values)


def _int_tuple(name: str, values) -> tuple:
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of ints, got {values!r}") from None


def _validate(c: SegmentationConfig):
    if c.head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {c.head!r}")
    if c.head_style not in (S.V1_FAMILY, S.V2_FAMILY):
        raise ValueError(
            f"head_style must be {S.V1_FAMILY!r} or {S.V2_FAMILY!r}, got {c.head_style!r}"
        )
    if not isinstance(c.num_classes, int) or c.num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {c.num_classes!r}")
    if c.output_stride not in (8, 16, 32):
        raise ValueError(
            f"output_stride must be 8, 16 or 32, got {c.output_stride!r} "
            "(16: PASCAL VOC presets, 8: ADE20K presets)"
        )
    if len(c.aspp_rates) != 3 or any(r < 1 for r in c.aspp_rates):
        raise ValueError(
            f"aspp_rates must be three positive ints (official: 6,12,18), got {c.aspp_rates!r}"
        )
    if not c.psp_pool_sizes or any(s < 1 for s in c.psp_pool_sizes):
        raise ValueError(f"psp_pool_sizes must be positive ints, got {c.psp_pool_sizes!r}")
    for name in ("aspp_dropout", "psp_dropout", "classifier_dropout", "aux_dropout"):
        rate = getattr(c, name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
