"""Model transformations for export: clone a functional model with some layers swapped.

:func:`prepare_for_export` returns a model that computes the same function
(float outputs equal up to float32 rounding, tested) with the layers in the
formulations of :mod:`quantization.export_layers`, at a static input shape
(batch 1 by default). It is what :func:`quantization.export_tflite` converts and
what :func:`quantization.quantize_model` instruments.

``target="edgetpu"`` additionally replaces ``Dense`` layers that act on rank-4
token maps (the v1-family transformer projections and FFN) by the equivalent
1x1 ``Conv2D`` (the Edge TPU maps ``FULLY_CONNECTED`` only with a
one-dimensional output), and uses the Edge TPU flavours of fold and softmax.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from mvit3_keras.folding import (
    _input_rank,
    _is_foldable_norm,
    _is_pointwise_linear,
    affine_fold_plan,
    folded_pointwise,
)
from mvit3_keras.graph_clone import clone_with
from mvit3_keras.inference import dense_as_conv
from mvit3_keras.layers import Fold, LinearSelfAttention, Unfold
from quantization.export_layers import (
    FoldExport,
    LinearSelfAttentionExport,
    NormalizationExport,
    UnfoldExport,
    _check_target,
)


def _norm_weights(old, new):
    values = {}
    if getattr(old, "scale", False):
        values["gamma"] = old.gamma.numpy()
    if getattr(old, "center", False):
        values["beta"] = old.beta.numpy()
    for name, value in values.items():
        getattr(new, name).assign(value)


def export_replacement(layer, target: str, plan: Optional[dict] = None):
    """``(new_layer, weight_fn)`` for a layer with an export formulation, else None."""
    plan = plan or {}
    if layer.name in plan and _is_foldable_norm(layer):
        axes = (-1,) if isinstance(layer, keras.layers.LayerNormalization) else (1, 2, 3)
        new = NormalizationExport(
            axes, layer.epsilon, False, False, name=layer.name, dtype=layer.dtype_policy
        )
        return new, None
    if layer.name in plan and _is_pointwise_linear(layer):
        norm = plan[layer.name]
        as_conv = type(layer) is keras.layers.Conv2D or (
            target == "edgetpu" and _input_rank(layer) == 4
        )
        return folded_pointwise(layer, norm, as_conv)
    if isinstance(layer, keras.layers.LayerNormalization):
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        rank = _input_rank(layer)
        if rank is not None and [a % rank for a in axis] != [rank - 1]:
            return None  # only last-axis LayerNorm is used by these models
        new = NormalizationExport(
            (-1,),
            layer.epsilon,
            layer.center,
            layer.scale,
            name=layer.name,
            dtype=layer.dtype_policy,
        )
        return new, _norm_weights
    if isinstance(layer, keras.layers.GroupNormalization) and layer.groups == 1:
        if _input_rank(layer) not in (None, 4):
            return None
        new = NormalizationExport(
            (1, 2, 3),
            layer.epsilon,
            layer.center,
            layer.scale,
            name=layer.name,
            dtype=layer.dtype_policy,
        )
        return new, _norm_weights
    if isinstance(layer, Unfold):
        return UnfoldExport(target, name=layer.name), None
    if isinstance(layer, Fold):
        return FoldExport(target, name=layer.name), None
    if isinstance(layer, LinearSelfAttention):
        new = LinearSelfAttentionExport(
            target, attention_dropout=layer.attention_dropout, name=layer.name
        )
        return new, None
    if target == "edgetpu" and type(layer) is keras.layers.Dense and _input_rank(layer) == 4:
        return dense_as_conv(layer)
    return None


def prepare_for_export(
    model: keras.Model,
    target: str = "generic",
    *,
    input_shape=None,
    batch_size: Optional[int] = 1,
    fold_norm_affine: bool = True,
) -> keras.Model:
    """The model in its export formulation at a static input shape.

    Args:
        model: a functional model (``mvit3_keras.create_model`` and friends).
        target: ``"generic"`` (CPU / GPU / NNAPI) or ``"edgetpu"``.
        input_shape: ``(H, W, C)``; default: the model's own (must be static).
        batch_size: static batch (1 for on-device inference); ``None`` keeps it dynamic.
        fold_norm_affine: move the norms' gamma / beta into the following 1x1
            linear layer (:func:`affine_fold_plan`).
    """
    _check_target(target)
    shape = tuple(model.inputs[0].shape[1:]) if input_shape is None else tuple(input_shape)
    if any(s is None for s in shape):
        raise ValueError(
            f"the model input {tuple(model.inputs[0].shape[1:])} has dynamic sides; pass "
            "input_shape=(H, W, 3) to export at a fixed size"
        )
    plan = affine_fold_plan(model) if fold_norm_affine else {}
    return clone_with(
        model,
        lambda layer: export_replacement(layer, target, plan),
        input_shape=shape,
        batch_size=batch_size,
    )


def max_abs_output_difference(a: keras.Model, b: keras.Model, images: np.ndarray) -> float:
    """``max |a(x) - b(x)|`` over all outputs, one image at a time (batch-1 models)."""
    worst = 0.0
    for i in range(len(images)):
        ya = keras.tree.flatten(a(images[i : i + 1], training=False))
        yb = keras.tree.flatten(b(images[i : i + 1], training=False))
        for u, v in zip(ya, yb):
            worst = max(worst, float(np.max(np.abs(np.asarray(u) - np.asarray(v)))))
    return worst
