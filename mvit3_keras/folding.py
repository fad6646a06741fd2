"""Weight folding rules shared by the inference and export formulations.

* BatchNorm after a convolution (inference statistics) -> the convolution's kernel
  and bias (:func:`batch_norm_fold_plan`, :func:`folded_conv_weights`);
* the affine ``gamma * y + beta`` of a LayerNorm / GroupNorm(1) feeding one pointwise
  linear layer -> that layer's weights (:func:`affine_fold_plan`,
  :func:`folded_linear_weights`): ``W' = diag(gamma) W``, ``b' = b + beta W``.

Folds are computed in float64 and cast once to float32.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from mvit3_keras.compat import call_count, consumer_count, sole_consumer, sole_parent
from mvit3_keras.graph_clone import iter_layers


def input_rank(layer) -> Optional[int]:
    try:
        return len(layer.input.shape)
    except (AttributeError, ValueError):
        return None


def is_foldable_norm(layer) -> bool:
    if isinstance(layer, keras.layers.LayerNormalization):
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        rank = input_rank(layer)
        return rank is not None and [a % rank for a in axis] == [rank - 1]
    return isinstance(layer, keras.layers.GroupNormalization) and layer.groups == 1


def is_pointwise_linear(layer) -> bool:
    if type(layer) is keras.layers.Dense:
        return True
    return (
        type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and layer.groups == 1
    )


def affine_fold_plan(model) -> dict:
    """``{norm_name: linear_layer, linear_name: norm_layer}`` for LayerNorm /
    GroupNorm(1) layers whose output feeds exactly one Dense / 1x1 Conv2D: the
    per-channel affine ``gamma * y + beta`` moves into that layer's weights
    (``W' = diag(gamma) W``, ``b' = b + beta W``), two elementwise ops fewer
    per norm in the exported graph and one rounding step fewer in int8."""
    plan = {}
    for layer in iter_layers(model):
        if not is_foldable_norm(layer) or not (layer.scale or layer.center):
            continue
        consumer = sole_consumer(layer)
        if consumer is not None and is_pointwise_linear(consumer) and call_count(consumer) == 1:
            plan[layer.name] = consumer
            plan[consumer.name] = layer
    return plan


def folded_linear_weights(norm, linear):
    """Kernel (the linear layer's own shape) and bias of ``linear(affine(y))``."""
    kernel = linear.kernel.numpy()
    cin = kernel.shape[-2]
    gamma = norm.gamma.numpy() if norm.scale else np.ones(cin, np.float32)
    beta = norm.beta.numpy() if norm.center else np.zeros(cin, np.float32)
    flat = kernel.reshape(cin, -1)
    bias = linear.bias.numpy() if linear.use_bias else np.zeros(flat.shape[1], np.float32)
    new_bias = (bias + beta.astype(np.float64) @ flat.astype(np.float64)).astype(np.float32)
    new_kernel = (flat * gamma[:, None]).reshape(kernel.shape).astype(np.float32)
    return new_kernel, new_bias


def folded_pointwise(layer, norm, as_conv: bool):
    """``(new_layer, weight_fn)``: the Dense / 1x1 ``layer`` with ``norm``'s affine folded
    in (:func:`folded_linear_weights`), as a 1x1 ``Conv2D`` when ``as_conv`` else a Dense."""
    units = layer.filters if type(layer) is keras.layers.Conv2D else layer.units
    common = dict(use_bias=True, activation=layer.activation, name=layer.name)
    if as_conv:
        new = keras.layers.Conv2D(units, 1, dtype=layer.dtype_policy, **common)
    else:
        new = keras.layers.Dense(units, dtype=layer.dtype_policy, **common)

    def fold(old, new_layer):
        kernel, bias = folded_linear_weights(norm, old)
        if as_conv:
            kernel = kernel.reshape(1, 1, *kernel.shape[-2:])
        new_layer.set_weights([kernel, bias])

    return new, fold


_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def batch_norm_fold_plan(model: keras.Model) -> dict:
    """``{conv_name: bn_layer}`` for each BatchNormalization whose only input is a
    Conv2D / DepthwiseConv2D (without activation) that feeds nothing else."""
    plan = {}
    for layer in iter_layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        axis = layer.axis if isinstance(layer.axis, int) else None
        conv = sole_parent(layer) if axis in (-1, 3) else None
        if (
            type(conv) in _CONVS
            and conv.data_format == "channels_last"
            and is_exclusive_linear(conv)
        ):
            plan[conv.name] = layer
    return plan


def is_exclusive_linear(layer) -> bool:
    """``layer`` has no activation, is called once and feeds exactly one layer: its
    weights can absorb what follows it."""
    activation = getattr(layer, "activation", None)
    linear = activation is None or keras.activations.serialize(activation) in ("linear", None)
    return linear and call_count(layer) == 1 and consumer_count(layer) == 1


def folded_conv_weights(conv, bn) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of ``bn(conv(x))`` (inference statistics), in float64 then cast."""
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # [kh, kw, C, multiplier]
        out_channels = kernel.shape[2] * kernel.shape[3]
    else:  # [kh, kw, C_in / groups, C_out]
        out_channels = kernel.shape[3]
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones(out_channels)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros(out_channels)
    scale = gamma / np.sqrt(var + bn.epsilon)
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(out_channels)
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        new_kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        new_kernel = kernel * scale
    new_bias = (bias - mean) * scale + beta
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)
