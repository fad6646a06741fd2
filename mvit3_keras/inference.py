"""Inference formulation of a model, as a pipeline of small graph passes.

Each pass is a plan (:class:`Rewrite`: which layers to replace or bypass, made by
``*_rewrite(model)``) and its application (:func:`apply_rewrites`, one
:func:`mvit3_keras.graph_clone.clone_with`); the pass functions ``model -> model``
apply one plan, pipelines apply several plans in one clone. Each keeps the
function up to float32 rounding:

* :func:`fold_batchnorm` - every ``cvnets`` ``ConvLayer`` is conv -> BatchNorm ->
  activation (``cvnets/layers/conv_layer.py``). With frozen statistics the
  BatchNorm is a per-channel affine map, folded into the convolution's kernel and
  bias (``W' = W * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var +
  eps)``), as the TFLite converter and PyTorch's ``fuse_modules`` do;
* :func:`fold_norm_affine` - the ``gamma`` / ``beta`` of a LayerNorm /
  GroupNorm(1) moved into the pointwise layer it feeds;
* :func:`split_qkv` - ``qkv_proj`` absorbed into the attention core as q / k / v
  1x1 convs (q scale and ``relu(v)`` folded in, no slicing; the cores' ``dim``
  switch);
* :func:`dense_as_conv` - rank-4 ``Dense`` layers as 1x1 ``Conv2D``;
* :func:`expand_silu` - SiLU written out so Grappler fuses conv + bias + activation.

:func:`optimize_for_inference` is their pipeline (all plans made on the input
model, applied in one clone). The result is for inference
only: the BatchNorm layers (and their statistics) are gone, so train the original
model and fold afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np

from mvit3_keras.compat import sole_parent
from mvit3_keras.folding import (
    affine_fold_plan,
    batch_norm_fold_plan,
    folded_conv_weights,
    folded_linear_weights,
    folded_pointwise,
    input_rank,
    is_exclusive_linear,
    is_pointwise_linear,
)
from mvit3_keras.graph_clone import bypassing, clone_with, iter_layers
from mvit3_keras.layers.attention import LinearSelfAttention, MultiHeadSelfAttention


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


def is_token_dense(layer) -> bool:
    """A Dense on a rank-4 token map ``[B, P, N, d]`` (the v1-family transformer)."""
    return type(layer) is keras.layers.Dense and input_rank(layer) == 4


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """The plan of one pass: ``replacements`` ``{name: fn(layer) -> (new, weight_fn)}``
    and the ``bypassed`` layer names (their output is their input)."""

    replacements: dict = dataclasses.field(default_factory=dict)
    bypassed: frozenset = frozenset()


def apply_rewrites(model, rewrites, *, input_shape=None, batch_size=None, copy=False):
    """One clone of ``model`` with the ``rewrites`` applied (a later plan's replacement
    of a layer wins); ``model`` itself when there is nothing to do and not ``copy``."""
    replacements, bypassed = {}, set()
    for plan in rewrites:
        replacements.update(plan.replacements)
        bypassed |= set(plan.bypassed)
    unchanged = not replacements and not bypassed and input_shape is None and batch_size is None
    if unchanged and not copy:
        return model

    def replace(layer):
        build = replacements.get(layer.name)
        return None if build is None else build(layer)

    return clone_with(
        model,
        replace,
        input_shape=input_shape,
        batch_size=batch_size,
        call_function=bypassing(bypassed),
    )


def conv_from_dense(dense):
    """``(Conv2D, weight_fn)``: the same map as a 1x1 ``Conv2D``. Keras runs a rank-4
    Dense as reshape -> MatMul -> reshape -> BiasAdd, which Grappler cannot fuse; a
    1x1 conv is one fused conv + bias (+ activation) kernel."""
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


def _conv_with_bias(conv, bn):
    config = conv.get_config()
    config.update(use_bias=True, bias_initializer="zeros")

    def fold(old, new):
        new.set_weights(list(folded_conv_weights(old, bn)))

    return conv.__class__.from_config(config), fold


def batchnorm_fold_rewrite(model) -> Rewrite:
    """Every conv -> BatchNorm pair (:func:`batch_norm_fold_plan`) as one conv with bias."""
    plan = batch_norm_fold_plan(model)  # {conv: bn}
    replacements = {
        name: (lambda conv, bn=bn: _conv_with_bias(conv, bn)) for name, bn in plan.items()
    }
    return Rewrite(replacements, frozenset(bn.name for bn in plan.values()))


def _without_affine(norm):
    config = norm.get_config()
    config.update(center=False, scale=False)
    return norm.__class__.from_config(config), None


def norm_affine_rewrite(model, affine=None, *, token_dense_as_conv: bool = True) -> Rewrite:
    """LayerNorm / GroupNorm(1) affines folded into the pointwise layer each feeds
    (``affine``: :func:`mvit3_keras.folding.affine_fold_plan`). The folded layer is a
    1x1 ``Conv2D`` for a ``Conv2D`` and (``token_dense_as_conv``) for a rank-4 Dense."""
    affine = affine_fold_plan(model) if affine is None else affine
    replacements = {}
    for name, other in affine.items():
        if is_pointwise_linear(other):  # ``name`` is the norm
            replacements[name] = _without_affine
            continue

        def fold(layer, norm=other):
            as_conv = type(layer) is keras.layers.Conv2D or (
                token_dense_as_conv and input_rank(layer) == 4
            )
            return folded_pointwise(layer, norm, as_conv)

        replacements[name] = fold
    return Rewrite(replacements)


def attention_split_plan(model: keras.Model) -> dict:
    """``{qkv_name: attention_layer}`` for attention cores fed by one pointwise
    ``qkv_proj`` (Dense / 1x1 Conv2D without activation) that feeds nothing else."""
    plan = {}
    for layer in iter_layers(model):
        if type(layer) not in (MultiHeadSelfAttention, LinearSelfAttention):
            continue
        qkv = sole_parent(layer) if layer.projection_dim is None else None
        if qkv is not None and is_pointwise_linear(qkv) and is_exclusive_linear(qkv):
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


def _split_core(qkv, attention, norm=None, target=None):
    """The attention core with ``qkv_proj`` (and ``norm``'s affine, if given) inside as
    three 1x1 convs; the q scale is folded in float64. ``target``: the core's export
    formulation (:class:`LinearSelfAttention` only), else its own."""
    units = qkv.units if isinstance(qkv, keras.layers.Dense) else qkv.filters
    config = attention.get_config()
    if target is not None and "target" in config:
        config["target"] = target
    if isinstance(attention, MultiHeadSelfAttention):
        config["dim"] = units // 3
        q_width, q_scale = units // 3, (units // 3 // attention.num_heads) ** -0.5
    else:
        config["dim"] = (units - 1) // 2
        q_width, q_scale = 1, 1.0

    def weights(_old, new_layer):
        kernel, bias = _linear_weights(qkv, norm)
        kernel, bias = kernel.astype(np.float64), bias.astype(np.float64)
        kernel[:, :q_width] *= q_scale
        bias[:q_width] *= q_scale
        new_layer.qkv.set_split_weights(kernel.astype(np.float32), bias.astype(np.float32))

    return attention.__class__.from_config(config), weights


def split_qkv_rewrite(model, affine=None, target=None) -> Rewrite:
    """Each ``qkv_proj`` absorbed into its attention core (:func:`attention_split_plan`;
    the cores' ``dim`` formulation), with the norm affine of ``affine`` folded in and
    the cores in their ``target`` export formulation; ``qkv_proj`` itself is bypassed
    in the graph."""
    affine = {} if affine is None else affine
    plan = attention_split_plan(model)  # {qkv: attention}
    layers = {layer.name: layer for layer in iter_layers(model)}
    replacements = {
        core.name: (
            lambda layer, qkv=layers[name]: _split_core(qkv, layer, affine.get(qkv.name), target)
        )
        for name, core in plan.items()
    }
    return Rewrite(replacements, frozenset(plan))


def dense_as_conv_rewrite(model, exclude=()) -> Rewrite:
    """Every rank-4 ``Dense`` (:func:`is_token_dense`) not in ``exclude`` as a 1x1 conv."""
    names = [x.name for x in iter_layers(model) if is_token_dense(x) and x.name not in exclude]
    return Rewrite(dict.fromkeys(names, conv_from_dense))


def _silu_replacement(layer):
    return keras.layers.Activation(silu_inference, name=layer.name), None


def silu_rewrite(model) -> Rewrite:
    """Every SiLU ``Activation`` as :func:`silu_inference`."""
    names = [layer.name for layer in iter_layers(model) if _is_silu(layer)]
    return Rewrite(dict.fromkeys(names, _silu_replacement))


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """Pass: :func:`batchnorm_fold_rewrite` applied."""
    return apply_rewrites(model, [batchnorm_fold_rewrite(model)])


def fold_norm_affine(model: keras.Model, *, token_dense_as_conv: bool = True) -> keras.Model:
    """Pass: :func:`norm_affine_rewrite` applied."""
    rewrite = norm_affine_rewrite(model, token_dense_as_conv=token_dense_as_conv)
    return apply_rewrites(model, [rewrite])


def split_qkv(model: keras.Model) -> keras.Model:
    """Pass: :func:`split_qkv_rewrite` applied."""
    return apply_rewrites(model, [split_qkv_rewrite(model)])


def dense_as_conv(model: keras.Model) -> keras.Model:
    """Pass: :func:`dense_as_conv_rewrite` applied."""
    return apply_rewrites(model, [dense_as_conv_rewrite(model)])


def expand_silu(model: keras.Model) -> keras.Model:
    """Pass: :func:`silu_rewrite` applied."""
    return apply_rewrites(model, [silu_rewrite(model)])


def inference_rewrites(model) -> list:
    """The plans of :func:`optimize_for_inference`, all made on ``model`` (the norm
    affines that move into ``qkv_proj`` move on into the split attention cores)."""
    affine = affine_fold_plan(model)  # {norm: linear, linear: norm}
    return [
        batchnorm_fold_rewrite(model),
        norm_affine_rewrite(model, affine),
        split_qkv_rewrite(model, affine),
        dense_as_conv_rewrite(model, exclude=affine),
        silu_rewrite(model),
    ]


INFERENCE_PASSES = (fold_batchnorm, fold_norm_affine, split_qkv, dense_as_conv, expand_silu)
"""The passes of :func:`optimize_for_inference`, in order (each usable alone)."""


def optimize_for_inference(
    model: keras.Model, *, input_shape=None, batch_size: Optional[int] = None
) -> keras.Model:
    """A copy of ``model`` in its inference formulation (same function up to float32
    rounding): the plans of :data:`INFERENCE_PASSES` (``fold_batchnorm``,
    ``fold_norm_affine``, ``split_qkv``, ``dense_as_conv``, ``expand_silu``) made on
    ``model`` (:func:`inference_rewrites`) and applied in one clone.

    Works for the classifiers, backbones, segmenters and detectors built by this
    package (any functional model). ``input_shape`` / ``batch_size`` optionally fix
    the input shape of the copy. The copy does not share weights with ``model``.
    """
    return apply_rewrites(
        model,
        inference_rewrites(model),
        input_shape=input_shape,
        batch_size=batch_size,
        copy=True,
    )


def inference_function(model: keras.Model, *, batch_size: int = 1, input_shape=None):
    """A fixed-shape TensorFlow serving function of ``model``: its inference formulation
    (:func:`optimize_for_inference`) traced once for ``(batch_size, *input_shape)`` with
    the variables frozen into constants.

    Freezing lets Grappler constant-fold the weight-side arithmetic and drops the
    ~460 variable reads of every call: at batch 1 on 2 CPU threads it runs MobileViTv3-XXS
    in 20.6 ms against 22.5 ms for the ``tf.function`` of the optimized model (mobilevit_xxs:
    19.9 vs 21.1 ms), the same outputs up to float32 rounding. The weights are copied:
    later changes to ``model`` do not reach the function.

    Returns a callable ``images -> outputs`` (tensors in the model's output structure,
    e.g. the detector's dict) that accepts exactly the traced shape (a clear
    ``ValueError`` otherwise).
    """
    import tensorflow as tf

    from mvit3_keras.compat import frozen_function

    shape = tuple(input_shape or model.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"inference_function needs a static input shape, the model has {model.input_shape}: "
            "pass input_shape=(height, width, channels)"
        )
    optimized = optimize_for_inference(model, input_shape=shape, batch_size=batch_size)
    spec = tf.TensorSpec((batch_size, *shape), tf.float32)
    serve = tf.function(lambda images: optimized(images, training=False))
    concrete = serve.get_concrete_function(spec)
    frozen = frozen_function(concrete)
    expected = (batch_size, *shape)

    def run(images):
        images = tf.convert_to_tensor(images, tf.float32)
        if tuple(images.shape) != expected:
            raise ValueError(
                f"this inference function was traced for images of shape {expected}, got "
                f"{tuple(images.shape)}: call inference_function(model, batch_size=..., "
                "input_shape=...) for that shape"
            )
        return tf.nest.pack_sequence_as(concrete.structured_outputs, list(frozen(images)))

    return run
