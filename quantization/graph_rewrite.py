"""Export formulation of a model: the inference passes it shares plus export passes.

:func:`prepare_for_export` returns a model that computes the same function (float
outputs equal up to float32 rounding, tested) in the export formulations of the
model's own layers (``target`` switches of ``Unfold`` / ``Fold`` /
``LinearSelfAttention``, LayerNorm / GroupNorm(1) as
:class:`mvit3_keras.layers.NormalizationExport`) at a static input shape (batch 1
by default). It is what :func:`quantization.export_tflite` converts and what
:func:`quantization.quantize_model` instruments. Its passes (plans made on the
model, applied in one clone, :func:`export_rewrites`):
:func:`mvit3_keras.inference.fold_norm_affine`, :func:`export_formulation` and,
for ``target="edgetpu"``, :func:`mvit3_keras.inference.dense_as_conv`: the Edge
TPU maps ``FULLY_CONNECTED`` only with a one-dimensional output, so the v1-family
transformer projections and FFN (Dense on rank-4 token maps) become 1x1 convs.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from mvit3_keras.folding import affine_fold_plan, input_rank
from mvit3_keras.graph_clone import iter_layers
from mvit3_keras.inference import (
    Rewrite,
    apply_rewrites,
    dense_as_conv_rewrite,
    norm_affine_rewrite,
    split_qkv_rewrite,
)
from mvit3_keras.layers import (
    Fold,
    LinearSelfAttention,
    NormalizationExport,
    Unfold,
    check_target,
)


def _norm_weights(old, new):
    values = {}
    if getattr(old, "scale", False):
        values["gamma"] = old.gamma.numpy()
    if getattr(old, "center", False):
        values["beta"] = old.beta.numpy()
    for name, value in values.items():
        getattr(new, name).assign(value)


def _export_norm_axes(layer):
    """``axes`` of the :class:`NormalizationExport` that computes ``layer``, or None."""
    rank = input_rank(layer)
    if isinstance(layer, keras.layers.LayerNormalization):
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if rank is not None and [a % rank for a in axis] != [rank - 1]:
            return None  # only last-axis LayerNorm is used by these models
        return (-1,)
    if isinstance(layer, keras.layers.GroupNormalization) and layer.groups == 1:
        return (1, 2, 3) if rank in (None, 4) else None
    return None


def export_replacement(layer, target: str, affine=None):
    """``(new_layer, weight_fn)`` for a layer with an export formulation, else None
    (a norm in ``affine`` loses its affine: it moved into the next layer)."""
    axes = _export_norm_axes(layer)
    if axes is not None:
        with_affine = layer.name not in (affine or {})
        new = NormalizationExport(
            axes,
            layer.epsilon,
            layer.center and with_affine,
            layer.scale and with_affine,
            name=layer.name,
            dtype=layer.dtype_policy,
        )
        return new, (_norm_weights if with_affine else None)
    if isinstance(layer, (Unfold, Fold, LinearSelfAttention)) and layer.target != target:
        config = dict(layer.get_config(), target=target)
        return layer.__class__.from_config(config), None
    return None


def export_formulation_rewrite(model, target: str = "generic", affine=None) -> Rewrite:
    """LayerNorm / GroupNorm(1) as :class:`NormalizationExport`; ``Unfold``, ``Fold`` and
    ``LinearSelfAttention`` with their ``target`` formulation (static shapes needed)."""
    check_target(target)
    names = [x.name for x in iter_layers(model) if export_replacement(x, target) is not None]
    return Rewrite(dict.fromkeys(names, lambda layer: export_replacement(layer, target, affine)))


def export_formulation(model: keras.Model, target: str = "generic") -> keras.Model:
    """Pass: :func:`export_formulation_rewrite` applied."""
    return apply_rewrites(model, [export_formulation_rewrite(model, target)])


def export_rewrites(
    model, target: str, fold_affine: bool = True, split_attention: bool = True
) -> list:
    """The plans of :func:`prepare_for_export`, all made on ``model`` (a later plan's
    replacement wins). Generic target with ``split_attention``: ``qkv_proj`` split into
    the attention cores as in :func:`mvit3_keras.optimize_for_inference` (three 1x1
    convs: no strided-slice copies, and MobileViTv2's ``relu(v)`` fused into the v conv,
    so XNNPACK runs it in int8)."""
    affine = affine_fold_plan(model) if fold_affine else {}
    edgetpu = target == "edgetpu"
    rewrites = [
        norm_affine_rewrite(model, affine, token_dense_as_conv=edgetpu),
        export_formulation_rewrite(model, target, affine),
    ]
    if edgetpu:
        rewrites.append(dense_as_conv_rewrite(model, exclude=affine))
    elif split_attention:
        rewrites.append(split_qkv_rewrite(model, affine, target))
    return rewrites


def prepare_for_export(
    model: keras.Model,
    target: str = "generic",
    *,
    input_shape=None,
    batch_size: Optional[int] = 1,
    fold_norm_affine: bool = True,
    split_attention: bool = True,
) -> keras.Model:
    """The model in its export formulation at a static input shape.

    Args:
        model: a functional model (``mvit3_keras.create_model`` and friends).
        target: ``"generic"`` (CPU / GPU / NNAPI) or ``"edgetpu"``.
        input_shape: ``(H, W, C)``; default: the model's own (must be static).
        batch_size: static batch (1 for on-device inference); ``None`` keeps it dynamic.
        fold_norm_affine: move the norms' gamma / beta into the following 1x1
            linear layer (:func:`mvit3_keras.inference.fold_norm_affine`).
        split_attention: ``qkv_proj`` as q / k / v convs inside the attention cores
            (not for the Edge TPU; QAT keeps the projection whole: its attention
            wrappers quantize that formulation).
    """
    check_target(target)
    shape = tuple(model.inputs[0].shape[1:]) if input_shape is None else tuple(input_shape)
    if any(s is None for s in shape):
        raise ValueError(
            f"the model input {tuple(model.inputs[0].shape[1:])} has dynamic sides; pass "
            "input_shape=(H, W, 3) to export at a fixed size"
        )
    rewrites = export_rewrites(model, target, fold_norm_affine, split_attention)
    return apply_rewrites(model, rewrites, input_shape=shape, batch_size=batch_size, copy=True)


def max_abs_output_difference(a: keras.Model, b: keras.Model, images: np.ndarray) -> float:
    """``max |a(x) - b(x)|`` over all outputs, one image at a time (batch-1 models)."""
    worst = 0.0
    for i in range(len(images)):
        ya = keras.tree.flatten(a(images[i : i + 1], training=False))
        yb = keras.tree.flatten(b(images[i : i + 1], training=False))
        for u, v in zip(ya, yb):
            worst = max(worst, float(np.max(np.abs(np.asarray(u) - np.asarray(v)))))
    return worst
