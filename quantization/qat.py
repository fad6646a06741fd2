"""Quantization-aware training for Keras 3 (no tensorflow-model-optimization).

``quantize_model(model)`` -> a trainable functional model with fake
quantization everywhere the int8 TFLite model quantizes (see
:mod:`quantization.qat_config` for the scheme and :mod:`mvit3_keras.layers.quantized`
for the layers). Fine-tune it with ``model.fit`` (BatchNorm statistics stay
frozen, ranges track moving averages), then
``export_tflite(qat_model, "model.tflite", quant="qat")``: the converter takes
every range from the fake-quant ops, no calibration, and the int8 file
reproduces the QAT model's outputs (measured by the export's verification and
by ``tests/test_quant_qat.py``).

The API mirrors TFMOT: ``quantize_model(model, config=QuantizeConfig(...))`` and
``quantize_annotate_layer(layer)`` to keep a layer in float.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np

from mvit3_keras import layers as L
from mvit3_keras.compat import consumer_count, layer_calls, producer, sole_parent
from mvit3_keras.detection.ssd_head import SliceLastAxis
from mvit3_keras.graph_clone import clone_with, iter_layers
from mvit3_keras.segmentation import AdaptiveAveragePooling2D, ArgmaxMask, ScaleResize
from quantization.graph_rewrite import prepare_for_export
from quantization.qat_config import SKIP_ATTRIBUTE, QuantizeConfig, quantize_annotate_layer

__all__ = [
    "QuantizeConfig",
    "bake_ranges",
    "calibrate_ranges",
    "float_layers",
    "is_qat_model",
    "qat_float_islands",
    "qat_target",
    "quantize_annotate_layer",
    "quantize_model",
    "shared_ranges",
    "uncalibrated_quantizers",
    "wrap_quantized",
]

# Layers that only move data: TFLite keeps the input's quantization parameters.
PASS_THROUGH = (
    keras.layers.InputLayer,
    keras.layers.ZeroPadding2D,
    keras.layers.Dropout,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Flatten,
    keras.layers.Identity,
    keras.layers.Cropping2D,
    L.Unfold,
    L.Fold,
    L.ResizeToEven,
    L.ResizeLike,
    ScaleResize,
    SliceLastAxis,
    ArgmaxMask,  # class indices (int32): no range
)
# Layers without weights whose output gets its own range.
OUTPUT_QUANTIZED = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Concatenate,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.AveragePooling2D,
    AdaptiveAveragePooling2D,
    keras.layers.MaxPooling2D,
    keras.layers.ReLU,
)
_CONVS = tuple(L.QUANT_CONV_TWINS)
_ATTENTION_TWINS = {
    L.MultiHeadSelfAttention: L.QuantMultiHeadSelfAttention,
    L.LinearSelfAttention: L.QuantLinearSelfAttention,
}


def is_qat_model(model) -> bool:
    """True if ``model`` was made by :func:`quantize_model` (has fake-quant layers)."""
    return any(isinstance(layer, L.QAT_LAYER_CLASSES) for layer in iter_layers(model))


def qat_target(model) -> str:
    """The export target whose formulation a QAT model instruments."""
    for layer in iter_layers(model):
        if (
            isinstance(layer, (L.Unfold, L.Fold, L.LinearSelfAttention))
            and layer.target is not None
        ):
            return layer.target
    return "generic"


def qat_float_islands(model) -> tuple:
    """The ``QuantizeConfig.keep_float`` parts of a QAT model."""
    parts = set()
    for layer in iter_layers(model):
        if getattr(layer, "float_core", False):
            parts.add("attention")
        if getattr(layer, "float_statistics", False):
            parts.add("normalization")
    return tuple(sorted(parts))


def float_layers(model) -> list:
    """Names of compute layers a QAT model leaves in float (annotated / skipped)."""
    names = []
    for layer in iter_layers(model):
        if isinstance(layer, L.QAT_LAYER_CLASSES) or isinstance(layer, PASS_THROUGH):
            continue
        if isinstance(layer, keras.Model) or isinstance(layer, keras.layers.BatchNormalization):
            continue
        names.append(layer.name)
    return names


def conv_batchnorm_plan(model) -> dict:
    """``{conv_name: bn_layer}`` for BatchNorms that directly follow a conv whose
    output feeds nothing else (:class:`~mvit3_keras.layers.QuantConv` folds them, Krishnamoorthi 2018,
    section 3.2)."""
    plan = {}
    for layer in iter_layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        parent = sole_parent(layer)
        if type(parent) in _CONVS and consumer_count(parent) == 1:
            plan[parent.name] = layer
    return plan


def _transfer_same(old, new):
    new_weights = {w.path.split("/")[-1]: w for w in new.weights}
    for w in old.weights:
        key = w.path.split("/")[-1]
        if key in new_weights:
            new_weights[key].assign(w)


def _transfer_wrapped(old, new):
    new.layer.set_weights(old.get_weights())


def _quant_conv(layer, config, bn, quantize_output=True):
    twin_config = dict(
        layer.get_config(),
        batch_norm=None if bn is None else bn.get_config(),
        ema_decay=config.ema_decay,
        per_channel=config.per_channel,
        quantize_output=quantize_output,
    )
    new = L.QUANT_CONV_TWINS[type(layer)].from_config(twin_config)

    def transfer(old, new_layer):
        new_layer.kernel.assign(old.kernel)
        if old.use_bias:
            new_layer.bias.assign(old.bias)
        if bn is not None:
            new_layer.batch_norm.set_weights(bn.get_weights())

    return new, transfer


def _activation_name(layer) -> str:
    activation = keras.activations.serialize(layer.activation)
    activation = activation if isinstance(activation, str) else activation.get("config", activation)
    return getattr(layer.activation, "__name__", str(activation))


def _quant_activation(layer, config, quantize_output=True):
    name = _activation_name(layer)
    twin = L.QuantActivation(name, config.ema_decay, quantize_output, name=layer.name)
    return twin, None


def _quant_normalization(layer, config, quantize_output=True):
    twin_config = dict(
        layer.get_config(),
        ema_decay=config.ema_decay,
        float_statistics="normalization" in config.keep_float,
        stepwise_statistics=False,  # the QAT graph quantizes one MEAN over all axes
        quantize_output=quantize_output,
    )
    return L.QuantNormalization.from_config(twin_config), _transfer_same


def _quant_attention(layer, config):
    twin_config = dict(
        layer.get_config(),
        ema_decay=config.ema_decay,
        float_core="attention" in config.keep_float,
    )
    return _ATTENTION_TWINS[type(layer)].from_config(twin_config), None


def _quant_output(layer, config, quantize_output=True):
    inner = layer.__class__.from_config(dict(layer.get_config(), name="inner"))
    twin = L.QuantizeWrapper(inner, config.ema_decay, quantize_output, name=layer.name)
    return twin, _transfer_wrapped


def quantized_twin(layer, config: QuantizeConfig, bn=None, *, quantize_output=True):
    """``(twin, weight_fn)`` for a layer with a quantized twin, ``None`` for a
    pass-through layer; raises ``TypeError`` for a layer without either.
    ``quantize_output=False``: a layer (:func:`_shares_range`) whose output range is a
    :class:`~mvit3_keras.layers.SharedRangeQuantizer`'s."""
    if type(layer) in _CONVS:
        return _quant_conv(layer, config, bn, quantize_output)
    if isinstance(layer, keras.layers.Activation):
        return _quant_activation(layer, config, quantize_output)
    if isinstance(layer, L.NormalizationExport):
        return _quant_normalization(layer, config, quantize_output)
    if type(layer) in _ATTENTION_TWINS:
        return _quant_attention(layer, config)
    if isinstance(layer, OUTPUT_QUANTIZED):
        return _quant_output(layer, config, quantize_output)
    if isinstance(layer, keras.layers.BatchNormalization):
        raise TypeError(f"{layer.name} (BatchNormalization not after a convolution)")
    if isinstance(layer, PASS_THROUGH):
        return None
    raise TypeError(f"{layer.name} ({type(layer).__name__})")


@dataclasses.dataclass(frozen=True)
class SharedRanges:
    """The tensors that concatenations join, grouped: each group is quantized with one
    :class:`~mvit3_keras.layers.SharedRangeQuantizer` (TFLite's int8 CONCATENATION
    takes its inputs at the output's scale; the post-training converter does the
    same).

    Attributes:
        groups: ``{group name: (producer layer names, one site each)}``; a group is
            named after its first concatenation.
        sites: ``{producer layer name: (group name, site index)}``.
        joins: names of the concatenations whose inputs share a group's range (their
            output needs no quantizer of its own).
    """

    groups: dict
    sites: dict
    joins: frozenset


def _shares_range(layer, skipped) -> bool:
    """A layer whose output range can be a shared one: a convolution, a (non-sigmoid)
    activation, a normalization or an output-quantized layer (fixed-range and float
    layers cannot)."""
    if layer.name in skipped:
        return False
    if isinstance(layer, keras.layers.Activation):
        return _activation_name(layer) != "sigmoid"
    shareable = (L.NormalizationExport, *OUTPUT_QUANTIZED)
    return type(layer) in _CONVS or isinstance(layer, shareable)


def _range_source(tensor, skipped, folded_bns):
    """The layer whose output quantizer sets ``tensor``'s int8 range (through the
    data-movement layers and folded BatchNorms), or None if that range cannot be
    shared."""
    layer = producer(tensor)
    while layer is not None and (isinstance(layer, PASS_THROUGH) or layer.name in folded_bns):
        if isinstance(layer, keras.layers.InputLayer):
            return None
        (node,) = layer_calls(layer)
        layer = producer(keras.tree.flatten(node.input_tensors)[0])  # the data input
    return layer if layer is not None and _shares_range(layer, skipped) else None


def _concat_sources(model, skipped, folded_bns) -> dict:
    """``{concatenation name: [producer names]}`` for the concatenations whose every
    input range can be shared."""
    joins = {}
    for layer in iter_layers(model):
        if not isinstance(layer, keras.layers.Concatenate) or layer.name in skipped:
            continue
        calls = layer_calls(layer)
        if len(calls) != 1:
            continue
        sources = [_range_source(t, skipped, folded_bns) for t in calls[0].input_tensors]
        if all(sources):
            joins[layer.name] = list(dict.fromkeys(source.name for source in sources))
    return joins


def shared_ranges(model, skipped=frozenset(), folded_bns=frozenset()) -> SharedRanges:
    """The :class:`SharedRanges` of ``model`` (an export-formulation float model):
    concatenations that share a producer are merged into one group."""
    joins = _concat_sources(model, skipped, folded_bns)
    group_of = {}  # producer -> group name
    members = {}  # group name -> producers
    for join, sources in joins.items():
        merged = {group_of[s] for s in sources if s in group_of}
        name = min(merged, key=list(members).index) if merged else join
        producers = members.pop(name, [])
        for other in merged - {name}:
            producers += members.pop(other)
        producers += [s for s in sources if s not in producers]
        members[name] = producers
        group_of.update({s: name for s in producers})
    sites = {p: (name, i) for name, producers in members.items() for i, p in enumerate(producers)}
    groups = {name: tuple(producers) for name, producers in members.items()}
    return SharedRanges(groups, sites, frozenset(joins))


def _unsupported_layers(model, config, skipped, bn_plan) -> list:
    problems = []
    folded = {bn.name for bn in bn_plan.values()}
    for layer in iter_layers(model):
        if isinstance(layer, keras.Model) or layer.name in skipped or layer.name in folded:
            continue
        try:
            quantized_twin(layer, config, bn_plan.get(layer.name))
        except TypeError as err:
            problems.append(str(err))
    return problems


def _quantizing_call(config: QuantizeConfig, skipped, shared: SharedRanges):
    """``clone_model`` call hook: the model inputs get an input quantizer, the outputs
    of skipped (float) layers are re-quantized for the next layer, the outputs that a
    concatenation joins go through their group's shared range."""
    input_quantizers = {}
    shared_quantizers = {}

    def shared_range(layer_name, out):
        group, site = shared.sites[layer_name]
        if group not in shared_quantizers:
            shared_quantizers[group] = L.SharedRangeQuantizer(
                len(shared.groups[group]), config.ema_decay, name=f"{group}.shared_range"
            )
        return shared_quantizers[group](out, site=site)

    def quantize_input(t):
        source = producer(t)
        if not isinstance(source, keras.layers.InputLayer):
            return t
        if id(t) not in input_quantizers:
            quantizer = L.ActivationQuantizer(
                config.ema_decay,
                fixed_range=config.input_range,
                name=f"{source.name}_quantizer",
            )
            input_quantizers[id(t)] = quantizer(t)
        return input_quantizers[id(t)]

    def call_function(layer, *args, **kwargs):
        args = keras.tree.map_structure(
            lambda t: quantize_input(t) if isinstance(t, keras.KerasTensor) else t, args
        )
        if kwargs.get("mask", 0) is None:  # recorded by BatchNormalization nodes
            kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
        out = layer(*args, **kwargs)
        if layer.name in skipped and not isinstance(layer, PASS_THROUGH):
            requant = L.ActivationQuantizer(config.ema_decay, name=f"{layer.name}.requantize")
            out = keras.tree.map_structure(requant, out)
        if layer.name in shared.sites:
            out = shared_range(layer.name, out)
        return out

    return call_function


def wrap_quantized(model: keras.Model, config: QuantizeConfig, skipped=frozenset()):
    """The pass that swaps every layer of an export-formulation model for its quantized
    twin (:func:`quantized_twin`; conv -> BatchNorm pairs into one :class:`~mvit3_keras.layers.QuantConv`);
    layers named in ``skipped`` stay float, their outputs re-quantized."""
    bn_plan = conv_batchnorm_plan(model) if config.fold_batch_norm else {}
    bn_plan = {name: bn for name, bn in bn_plan.items() if name not in skipped}
    unsupported = _unsupported_layers(model, config, skipped, bn_plan)
    if unsupported:
        raise ValueError(
            "no quantized version for: "
            + ", ".join(unsupported[:10])
            + " - annotate them with quantization.quantize_annotate_layer(layer) to keep them "
            "in float, or add a QuantizeConfig.skip pattern"
        )
    folded_bns = {bn.name for bn in bn_plan.values()}
    shared = shared_ranges(model, skipped, folded_bns)

    def replace(layer):
        if layer.name in skipped:
            return None
        if layer.name in folded_bns:
            return keras.layers.Identity(name=layer.name), None
        own_range = layer.name not in shared.sites and layer.name not in shared.joins
        bn = bn_plan.get(layer.name)
        return quantized_twin(layer, config, bn, quantize_output=own_range)

    call_function = _quantizing_call(config, skipped, shared)
    return clone_with(model, replace, call_function=call_function)


def _check_float32(model) -> None:
    """QAT computes in float32 (the int8 file's ranges and rounding are float32's); a
    model built under a mixed-precision policy keeps that policy in every layer's
    config, so its twins would too."""
    mixed = [x for x in iter_layers(model) if x.dtype_policy.compute_dtype != "float32"]
    if mixed:
        raise ValueError(
            f"{len(mixed)} layers of {model.name!r} compute in "
            f"{mixed[0].dtype_policy.compute_dtype} (policy {mixed[0].dtype_policy.name!r}, "
            f"e.g. {mixed[0].name!r}); quantization-aware training computes in float32. "
            "Rebuild the model under the float32 policy and copy its weights: "
            "keras.config.set_dtype_policy('float32'); "
            "float32_model = mvit3_keras.rebuild_model(mvit3_keras.model_record(model)); "
            "float32_model.set_weights(model.get_weights())"
        )


def quantize_model(model: keras.Model, config: Optional[QuantizeConfig] = None) -> keras.Model:
    """A quantization-aware copy of ``model`` (weights copied, ready for ``fit``).

    The pipeline: :func:`quantization.prepare_for_export` (the export formulation
    for ``config.target``, static H, W, dynamic batch for training), then
    :func:`wrap_quantized`. Layers annotated with :func:`quantize_annotate_layer`
    (or matching ``config.skip``) stay float, with their output re-quantized.
    Raises ``ValueError`` for layer types without a quantized version.
    """
    config = config or QuantizeConfig()
    if is_qat_model(model):
        raise ValueError("the model is already quantization-aware")
    _check_float32(model)
    skipped = frozenset(layer.name for layer in iter_layers(model) if config.skips(layer))
    prepared = prepare_for_export(model, config.target, batch_size=None, split_attention=False)
    for layer in iter_layers(prepared):
        if layer.name in skipped:
            setattr(layer, SKIP_ATTRIBUTE, True)
    return wrap_quantized(prepared, config, skipped)


def calibrate_ranges(qat_model: keras.Model, images, *, batch_size: int = 16) -> keras.Model:
    """Initialise the activation ranges of a fresh QAT model from ``images``
    (moving averages over the batches, no weight update, no dropout), so
    fine-tuning starts from the post-training-quantized operating point."""
    quantizers = [
        layer
        for layer in iter_layers(qat_model, sublayers=True)
        if isinstance(layer, L.ActivationQuantizer) and layer.fixed_range is None
    ]
    for q in quantizers:
        q.force_update = True
    try:
        images = np.asarray(images, dtype=np.float32)
        for start in range(0, len(images), batch_size):
            qat_model(images[start : start + batch_size], training=False)
    finally:
        for q in quantizers:
            q.force_update = False
    return qat_model


def uncalibrated_quantizers(qat_model: keras.Model) -> list:
    """Paths of activation quantizers whose range was never set (no calibration,
    no training step)."""
    return [
        layer.path if hasattr(layer, "path") else layer.name
        for layer in iter_layers(qat_model, sublayers=True)
        if isinstance(layer, L.ActivationQuantizer)
        and layer.fixed_range is None
        and not np.all(keras.ops.convert_to_numpy(layer.initialized))
    ]


def bake_ranges(qat_model: keras.Model) -> keras.Model:
    """Make every activation quantizer trace its (frozen) range as a constant:
    used on the copy of a QAT model that is converted."""
    for layer in iter_layers(qat_model, sublayers=True):
        if isinstance(layer, L.ActivationQuantizer):
            layer.bake_ranges = True
        elif isinstance(layer, (L.QuantConv, L.QuantNormalization)):
            layer.bake = True
    return qat_model
