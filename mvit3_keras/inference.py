"""Inference formulation of a model: BatchNorm folded into the preceding convolution.

Every ``cvnets`` ``ConvLayer`` is conv -> BatchNorm -> activation. At inference the
BatchNorm is a per-channel affine map with frozen statistics,
``y = gamma * (x - mean) / sqrt(var + eps) + beta``, so it can be folded into the
convolution's kernel and bias (``W' = W * s``, ``b' = (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``), exactly as the TFLite converter and PyTorch's
``torch.fx`` / ``fuse_modules`` do. The folded graph has no BatchNorm passes over
the feature maps and TensorFlow's Grappler remapper then fuses conv + bias +
activation (SiLU / ReLU) into one kernel. The function is unchanged up to float32
rounding (tests: every registry variant, and the official parity references at
their own tolerances).

The result is for inference only: the BatchNorm layers (and their statistics) are
gone, so train the original model and fold afterwards.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from mvit3_keras.folding import (
    _is_pointwise_linear,
    affine_fold_plan,
    batch_norm_fold_plan,
    folded_conv_weights,
    folded_linear_weights,
    folded_pointwise,
)
from mvit3_keras.graph_clone import clone_with, iter_layers
from mvit3_keras.layers.attention import LinearSelfAttention, MultiHeadSelfAttention
from mvit3_keras.layers.attention_inference import (
    LinearSelfAttentionSplit,
    MultiHeadSelfAttentionSplit,
)


@keras.saving.register_keras_serializable(package="mvit3_keras")
def silu_inference(x):
    """``x * sigmoid(x)`` written out (``tf.nn.silu`` wraps it in a custom gradient whose
    ``IdentityN`` hides the pattern from Grappler's conv + bias + activation fusion).
    Same values; no custom gradient (inference only)."""
    return x * keras.ops.sigmoid(x)


_SILU_NAMES = ("swish", "silu")


def _is_silu(layer) -> bool:
    return type(layer) is keras.layers.Activation and (
        keras.activations.serialize(layer.activation) in _SILU_NAMES
        or getattr(layer.activation, "__name__", "") in _SILU_NAMES
    )


def _is_token_dense(layer) -> bool:
    """A Dense on a rank-4 token map ``[B, P, N, d]`` (the v1-family transformer)."""
    if type(layer) is not keras.layers.Dense:
        return False
    try:
        return len(layer.input.shape) == 4
    except (AttributeError, ValueError):
        return False


def dense_as_conv(dense):
    """The same map as a 1x1 ``Conv2D``: Keras runs a rank-4 Dense as reshape -> MatMul ->
    reshape -> BiasAdd, which Grappler cannot fuse; a 1x1 conv is one fused
    conv + bias (+ activation) kernel."""
    conv = keras.layers.Conv2D(
        dense.units,
        1,
        use_bias=dense.use_bias,
        activation=dense.activation,
        name=dense.name,
        dtype=dense.dtype_policy,
    )

    def weights(old, new):
        kernel = old.kernel.numpy()
        values = [kernel.reshape(1, 1, *kernel.shape)]
        if old.use_bias:
            values.append(old.bias.numpy())
        new.set_weights(values)

    return conv, weights


def _with_bias(conv):
    config = conv.get_config()
    config["use_bias"] = True
    config["bias_initializer"] = "zeros"
    return conv.__class__.from_config(config)


def attention_split_plan(model: keras.Model) -> dict:
    """``{qkv_name: attention_layer}`` for attention cores fed by one pointwise
    ``qkv_proj`` (Dense / 1x1 Conv2D without activation) that feeds nothing else."""
    plan = {}
    for layer in iter_layers(model):
        if type(layer) not in (MultiHeadSelfAttention, LinearSelfAttention):
            continue
        if len(layer._inbound_nodes) != 1:  # noqa: SLF001
            continue
        parents = layer._inbound_nodes[0].parent_nodes  # noqa: SLF001
        if len(parents) != 1:
            continue
        qkv = parents[0].operation
        if (
            _is_pointwise_linear(qkv)
            and keras.activations.serialize(qkv.activation) in ("linear", None)
            and len(qkv._inbound_nodes) == 1  # noqa: SLF001
            and len(qkv._outbound_nodes) == 1  # noqa: SLF001
        ):
            plan[qkv.name] = layer
    return plan


def _linear_weights(layer, norm=None):
    """``(kernel [C_in, C_out], bias [C_out])`` of a Dense / 1x1 conv, with the affine of
    ``norm`` folded in when given."""
    if norm is not None:
        kernel, bias = folded_linear_weights(norm, layer)
    else:
        kernel = layer.kernel.numpy()
        bias = layer.bias.numpy() if layer.use_bias else None
    kernel = kernel.reshape(kernel.shape[-2], kernel.shape[-1])
    if bias is None:
        bias = np.zeros(kernel.shape[1], np.float32)
    return kernel, bias


def _split_attention(qkv, attention, norm):
    """The attention core with ``qkv_proj`` inside as three 1x1 convs (q scale /
    ``relu(v)`` folded in); ``qkv_proj`` itself is bypassed in the graph."""
    units = qkv.units if isinstance(qkv, keras.layers.Dense) else qkv.filters
    if isinstance(attention, MultiHeadSelfAttention):
        d = units // 3
        new = MultiHeadSelfAttentionSplit(
            attention.num_heads, d, attention.attention_dropout, name=attention.name
        )
        q_width, q_scale = d, (d // attention.num_heads) ** -0.5
    else:
        d = (units - 1) // 2
        new = LinearSelfAttentionSplit(d, attention.attention_dropout, name=attention.name)
        q_width, q_scale = 1, 1.0

    def weights(_old, new_layer):
        kernel, bias = _linear_weights(qkv, norm)
        kernel, bias = kernel.astype(np.float64), bias.astype(np.float64)
        kernel[:, :q_width] *= q_scale
        bias[:q_width] *= q_scale
        new_layer.qkv.set_split_weights(kernel.astype(np.float32), bias.astype(np.float32))

    return new, weights


def _without_affine(norm):
    config = norm.get_config()
    config.update(center=False, scale=False)
    return norm.__class__.from_config(config)


def optimize_for_inference(
    model: keras.Model, *, input_shape=None, batch_size: Optional[int] = None
) -> keras.Model:
    """A copy of ``model`` in its inference formulation (same function up to float32
    rounding): every conv -> BatchNorm pair folded into one conv; LayerNorm /
    GroupNorm(1) affines folded into the next pointwise layer; ``qkv_proj`` split into
    q / k / v 1x1 convs (q scale and ``relu(v)`` folded in, no slicing); rank-4 Dense
    as 1x1 convs; SiLU written out so Grappler fuses conv + bias + activation.

    Works for the classifiers, backbones, segmenters and detectors built by this
    package (any functional model). ``input_shape`` / ``batch_size`` optionally fix
    the input shape of the copy. The copy does not share weights with ``model``.
    """
    plan = batch_norm_fold_plan(model)
    folded = {bn.name for bn in plan.values()}
    affine = affine_fold_plan(model)  # {norm: linear, linear: norm}
    split = attention_split_plan(model)  # {qkv: attention}
    split_cores = {attention.name: qkv_name for qkv_name, attention in split.items()}
    bypassed = folded | set(split)
    model_layers = {layer.name: layer for layer in iter_layers(model)}

    def replace(layer):
        if layer.name in plan:
            bn = plan[layer.name]

            def fold(old, new, bn=bn):
                new.set_weights(list(folded_conv_weights(old, bn)))

            return _with_bias(layer), fold
        if layer.name in folded:
            return keras.layers.Identity(name=layer.name), None
        if layer.name in split:
            return keras.layers.Identity(name=layer.name), None
        if layer.name in split_cores:
            qkv = model_layers[split_cores[layer.name]]
            return _split_attention(qkv, layer, affine.get(qkv.name))
        norm = affine.get(layer.name) if _is_pointwise_linear(layer) else None
        if norm is not None:
            as_conv = _is_token_dense(layer) or type(layer) is keras.layers.Conv2D
            return folded_pointwise(layer, norm, as_conv)
        if layer.name in affine:  # a norm whose affine moved into the next layer
            return _without_affine(layer), None
        if _is_token_dense(layer):
            return dense_as_conv(layer)
        if _is_silu(layer):
            return keras.layers.Activation(silu_inference, name=layer.name), None
        return None

    def call_function(layer, *args, **kwargs):
        if layer.name in bypassed:
            return args[0]  # folded BatchNorm / qkv_proj inside the attention: no op
        return layer(*args, **kwargs)

    return clone_with(
        model,
        replace,
        input_shape=input_shape,
        batch_size=batch_size,
        call_function=call_function,
    )
