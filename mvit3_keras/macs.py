"""Multiply-accumulate counts, official and real.

``official`` reproduces the ml-cvnets profiler (``profile_model`` of
``cvnets/utils/profiler.py``; docs/semantics.md section 8): multiply-adds of convolutions and linear layers only,
plus one per output element of a bias (norms, activations, additions and
resizes are free); in the v1 family each
attention counts its two products as ``2 * N * d**2`` per sequence (what the
profiler assumes), in the v2 family the linear attention counts only its 1x1
projections.

``real`` counts the multiply-adds that actually run: conv / linear work (no bias) plus the true
attention products (``2 * N**2 * d`` per sequence in the v1 family, ``2 * N * d``
for the separable attention of the v2 family).
"""

from __future__ import annotations

import math

import keras

from mvit3_keras.compat import layer_calls
from mvit3_keras.layers import LinearSelfAttention, MultiHeadSelfAttention


def _shape(tensor):
    return tuple(tensor.shape)


def _static(shape, layer):
    if any(s is None for s in shape[1:]):
        raise ValueError(
            f"count_macs needs static spatial sizes; layer {layer.name!r} has shape {shape}. "
            "Build the model with a fixed input_shape, e.g. create_model(name, input_shape=(256, 256, 3))."
        )
    return shape


def _iter_nodes(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_nodes(layer)
            continue
        for node in layer_calls(layer):
            yield layer, node


def _layer_macs(layer, in_shapes, out_shape):
    """(official, real) MACs of one call of ``layer`` for batch size 1."""
    out = _static(out_shape, layer)
    # The official profiler adds one MAC per output element for a bias.
    bias = math.prod(out[1:]) if getattr(layer, "use_bias", False) else 0
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        m = math.prod(out[1:]) * kh * kw
        return m + bias, m
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        cin = _static(in_shapes[0], layer)[-1] // layer.groups
        m = math.prod(out[1:]) * kh * kw * cin
        return m + bias, m
    if isinstance(layer, keras.layers.Dense):
        cin = _static(in_shapes[0], layer)[-1]
        m = math.prod(out[1:]) * cin
        return m + bias, m
    if isinstance(layer, MultiHeadSelfAttention):
        _, p, n, d = out
        return 2 * p * n * d * d, 2 * p * n * n * d
    if isinstance(layer, LinearSelfAttention):
        _, p, n, d = out
        return 0, 2 * p * n * d
    return 0, 0


def count_macs(model, *, batch_size: int = 1) -> dict:
    """MACs of one forward pass: ``{"official": int, "real": int, "by_layer": {...}}``.

    ``model`` must have static spatial input sizes. MobileViTv3-XXS at 256x256:
    official 289.0M (the paper's 289M).
    """
    official = real = 0
    by_layer = {}
    # Optional hook of task models: ``{layer name: (official factor, real factor)}``
    # (e.g. 0 for a training-only head, or the official profiler's map sizes).
    scales = model.mac_count_scales() if hasattr(model, "mac_count_scales") else {}
    for layer, node in _iter_nodes(model):
        in_shapes = [_shape(t) for t in node.input_tensors]
        outputs = node.output_tensors
        if not outputs:
            continue
        o, r = _layer_macs(layer, in_shapes, _shape(outputs[0]))
        if layer.name in scales:
            o, r = (round(v * f) for v, f in zip((o, r), scales[layer.name]))
        if o or r:
            by_layer[layer.name] = (o * batch_size, r * batch_size)
            official += o
            real += r
    return {"official": official * batch_size, "real": real * batch_size, "by_layer": by_layer}
