"""Backbones and classifiers: ``create_model`` / ``create_backbone``.

Stage layout of both families (``cvnets/models/classification/mobilevit.py`` and
``mobilevit_v2.py`` of ml-cvnets; docs/semantics.md section 1): ``conv_1`` (3x3,
stride 2) -> ``layer_1`` (MV2, stride 1) -> ``layer_2`` (MV2, first stride 2) ->
``layer_3/4/5`` = strided MV2 + MobileViT block -> ``conv_1x1_exp`` (v1 family)
-> classifier. Output stride 16 / 8 for dense tasks follows each family's
dilation rule (the encoders' ``dilate_l4`` / ``dilate_l5``; docs/semantics.md
section 4).

Every model is a :class:`~mvit3_keras.recorded_model.MobileViTModel` that records
its variant, task and builder arguments (:func:`mvit3_keras.model_record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import keras

from mvit3_keras import blocks
from mvit3_keras import specs as S
from mvit3_keras.recorded_model import (
    TASK_BACKBONE,
    TASK_CLASSIFICATION,
    MobileViTModel,
    ModelRecord,
)
from mvit3_keras.registry import get_spec

FEATURE_KEYS = ("P1", "P2", "P3", "P4", "P5")


def validate_input_shape(input_shape) -> tuple:
    """``input_shape`` as ``(H, W, C)`` ints (``None`` sides: any size), or a clear error."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), got {input_shape!r}; "
            "the batch dimension is implicit (channels-last images)"
        )
    h, w, c = shape
    if c is None or int(c) < 1:
        raise ValueError(f"input_shape {input_shape!r}: the channel count must be a positive int")
    for side in (h, w):
        if side is not None and int(side) < 32:
            raise ValueError(
                f"input_shape {input_shape!r} is too small: MobileViT downsamples by 32 "
                "(five stride-2 stages), so height and width must be at least 32 pixels "
                "(256x256 is the official ImageNet size), or None for any size"
            )
    return tuple(None if s is None else int(s) for s in shape)


def backbone_features(
    inputs, spec: S.ModelSpec, *, output_stride: int = 32, prefix: str = ""
) -> dict:
    """Build the backbone on ``inputs`` and return ``{"P1": ..., "P5": ...}`` (stride 2**n).

    ``prefix`` is prepended to every layer name (``"encoder."`` in dense-task
    models, matching the official segmentation / detection ``state_dict``).
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    dilate = {"layer_4": output_stride == 8, "layer_5": output_stride in (8, 16)}

    x = blocks.conv_layer(inputs, spec.stem_channels, 3, f"{prefix}conv_1", strides=2)
    features = {}
    dilation = 1  # ``self.dilation`` of the official encoder
    for idx, stage in enumerate(spec.stages, start=1):
        lname = f"{prefix}layer_{idx}"
        if isinstance(stage, S.MV2StageSpec):
            for b in range(stage.num_blocks):
                stride = stage.stride if b == 0 else 1
                x = blocks.inverted_residual(
                    x, stage.out_channels, stride, stage.expand_ratio, f"{lname}.{b}"
                )
        else:
            stride, mv2_dilation = stage.stride, 1
            if dilate.get(f"layer_{idx}"):
                stride, mv2_dilation = 1, dilation
                dilation *= 2
            x = blocks.inverted_residual(
                x,
                stage.out_channels,
                stride,
                stage.mv_expand_ratio,
                f"{lname}.0",
                dilation=mv2_dilation,
            )
            if spec.family == S.V1_FAMILY:
                # The v1 ``_make_mit_layer`` never passes a dilation to the block.
                x = blocks.mobilevit_block_v1_family(
                    x, stage, spec.block, f"{lname}.1", spec.transformer_dropout
                )
            else:
                x = blocks.mobilevit_block_v2_family(x, stage, spec.block, f"{lname}.1", dilation)
        features[FEATURE_KEYS[idx - 1]] = x
    return features


def create_backbone(
    name,
    *,
    input_shape: Sequence[Optional[int]] = (256, 256, 3),
    output_stride: int = 32,
    prefix: str = "",
    model_name: Optional[str] = None,
) -> keras.Model:
    """Functional feature extractor returning the dict ``{"P1": ..., "P5": ...}``."""
    spec = get_spec(name)
    inputs = keras.Input(validate_input_shape(input_shape), name="image")
    features = backbone_features(inputs, spec, output_stride=output_stride, prefix=prefix)
    record = ModelRecord(
        variant=spec.name,
        task=TASK_BACKBONE,
        input_shape=inputs.shape[1:],
        options=dict(output_stride=output_stride, prefix=prefix),
    )
    return MobileViTModel(
        inputs, features, name=model_name or f"{spec.name}_backbone", model_record=record
    )


def classifier_head(x, spec: S.ModelSpec, num_classes: int, dropout: float, activation):
    """Global average pooling -> dropout -> linear layer, named like the official
    ``classifier`` (``cvnets/models/classification/mobilevit.py``: ``global_pool`` /
    ``dropout`` / ``fc``; ``mobilevit_v2.py``: ``0`` / ``1``)."""
    if spec.family == S.V1_FAMILY:
        pool_name, fc_name = "classifier.global_pool", "classifier.fc"
    else:
        pool_name, fc_name = "classifier.0", "classifier.1"
    x = keras.layers.GlobalAveragePooling2D(name=pool_name)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="classifier.dropout")(x)
    return keras.layers.Dense(num_classes, activation=activation, name=fc_name, dtype=None)(x)


def create_model(
    name,
    *,
    num_classes: int = 1000,
    input_shape: Sequence[Optional[int]] = (256, 256, 3),
    include_top: bool = True,
    pooling: Optional[str] = None,
    classifier_dropout: Optional[float] = None,
    classifier_activation: Optional[str] = None,
    model_name: Optional[str] = None,
) -> keras.Model:
    """Build a registered variant as a functional ``keras.Model``.

    Args:
        name: a name from :func:`mvit3_keras.list_models` (e.g. ``"mobilevitv3_xxs"``).
        num_classes: classifier width (``include_top=True``).
        input_shape: ``(H, W, C)``; ``None`` sides give a model for any size.
            Images are expected in [0, 1] with no mean/std normalisation, as in
            the official code.
        include_top: with the classifier (logits); otherwise the last feature
            map (after ``conv_1x1_exp`` in the v1 family).
        pooling: with ``include_top=False``: ``None`` (feature map) or ``"avg"``.
        classifier_dropout: overrides the official value (v1 0.1, v2 none).
        classifier_activation: e.g. ``"softmax"``; default: raw logits.
    """
    spec = get_spec(name)
    if include_top and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if pooling not in (None, "avg"):
        raise ValueError(f"pooling must be None or 'avg', got {pooling!r}")
    inputs = keras.Input(validate_input_shape(input_shape), name="image")
    x = backbone_features(inputs, spec)["P5"]
    if spec.exp_channels:
        x = blocks.conv_layer(x, spec.exp_channels, 1, "conv_1x1_exp")
    if include_top:
        rate = spec.classifier_dropout if classifier_dropout is None else classifier_dropout
        x = classifier_head(x, spec, num_classes, rate, classifier_activation)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    options = dict(include_top=include_top, pooling=pooling)
    if classifier_dropout is not None:
        options["classifier_dropout"] = float(classifier_dropout)
    if classifier_activation is not None:
        options["classifier_activation"] = keras.activations.serialize(
            keras.activations.get(classifier_activation)
        )
    record = ModelRecord(
        variant=spec.name,
        task=TASK_CLASSIFICATION,
        input_shape=inputs.shape[1:],
        num_classes=num_classes if include_top else None,
        options=options,
    )
    return MobileViTModel(inputs, x, name=model_name or spec.name, model_record=record)
