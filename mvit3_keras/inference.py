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

from mvit3_keras.graph_clone import clone_with, iter_layers

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def batch_norm_fold_plan(model: keras.Model) -> dict:
    """``{conv_name: bn_layer}`` for each BatchNormalization whose only input is a
    Conv2D / DepthwiseConv2D (without activation) that feeds nothing else."""
    plan = {}
    for layer in iter_layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        axis = layer.axis if isinstance(layer.axis, int) else None
        if axis not in (-1, 3) or len(layer._inbound_nodes) != 1:  # noqa: SLF001
            continue
        parents = layer._inbound_nodes[0].parent_nodes  # noqa: SLF001
        if len(parents) != 1:
            continue
        conv = parents[0].operation
        if (
            type(conv) not in _CONVS
            or conv.data_format != "channels_last"
            or keras.activations.serialize(conv.activation) not in ("linear", None)
            or len(conv._inbound_nodes) != 1  # noqa: SLF001
            or len(conv._outbound_nodes) != 1  # noqa: SLF001
        ):
            continue
        plan[conv.name] = layer
    return plan


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


def optimize_for_inference(
    model: keras.Model, *, input_shape=None, batch_size: Optional[int] = None
) -> keras.Model:
    """A copy of ``model`` with every conv -> BatchNorm pair folded into one conv.

    Works for the classifiers, backbones, segmenters and detectors built by this
    package (any functional model). ``input_shape`` / ``batch_size`` optionally fix
    the input shape of the copy. The copy does not share weights with ``model``.
    """
    plan = batch_norm_fold_plan(model)
    folded = {bn.name for bn in plan.values()}

    def replace(layer):
        if layer.name in plan:
            bn = plan[layer.name]

            def fold(old, new, bn=bn):
                new.set_weights(list(folded_conv_weights(old, bn)))

            return _with_bias(layer), fold
        if layer.name in folded:
            return keras.layers.Identity(name=layer.name), None
        if _is_token_dense(layer):
            return dense_as_conv(layer)
        if _is_silu(layer):
            return keras.layers.Activation(silu_inference, name=layer.name), None
        return None

    def call_function(layer, *args, **kwargs):
        if layer.name in folded:
            return args[0]  # the folded BatchNorm is bypassed: no op in the graph
        return layer(*args, **kwargs)

    return clone_with(
        model,
        replace,
        input_shape=input_shape,
        batch_size=batch_size,
        call_function=call_function,
    )
