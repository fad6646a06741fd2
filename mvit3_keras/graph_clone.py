"""Clone a functional model with some layers swapped: the mechanism of the graph passes.

:func:`clone_with` is the one mechanism behind every graph pass
(:mod:`mvit3_keras.inference`: ``fold_batchnorm``, ``fold_norm_affine``,
``split_qkv``, ...; ``quantization.prepare_for_export`` and
``quantization.quantize_model``): ``keras.models.clone_model`` with a per-layer
replacement rule, nested functional models cloned recursively, and the weights
copied (or transformed) once the clone is built
(``mvit3_keras.inference.apply_rewrites`` applies the passes' plans in one clone).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Optional

import keras

from mvit3_keras.compat import nested_layers
from mvit3_keras.recorded_model import MobileViTModel, attach_model_record, model_record


def iter_layers(model, *, sublayers: bool = False):
    """All layers of ``model`` and its nested models, depth first; ``sublayers``: also
    the layers that layers own (e.g. a quantized layer's quantizers), each once."""
    if not sublayers:
        for layer in model.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from iter_layers(layer)
        return
    seen = set()
    for layer in iter_layers(model):
        for sub in nested_layers(layer):
            if id(sub) not in seen:
                seen.add(id(sub))
                yield sub


def bypassing(names) -> Callable:
    """A ``call_function`` for :func:`clone_with` that skips the layers in ``names``
    (their output is their first input: a folded or absorbed layer)."""
    names = frozenset(names)

    def call_function(layer, *args, **kwargs):
        if layer.name in names:
            return args[0]
        return layer(*args, **kwargs)

    return call_function


def layers_by_name(model) -> dict:
    return {layer.name: layer for layer in iter_layers(model)}


def copy_weights(old, new):
    new.set_weights(old.get_weights())


def clone_with(
    model: keras.Model,
    replace: Callable,
    *,
    input_shape=None,
    batch_size: Optional[int] = None,
    call_function: Optional[Callable] = None,
) -> keras.Model:
    """Clone ``model`` (functional, nested models too); ``replace(layer)`` returns
    ``None`` (plain clone) or ``(new_layer, weight_fn)``; ``weight_fn(old, new)``
    copies the weights once the new layer is built (``None``: no weights).

    ``input_shape`` / ``batch_size`` fix the input of the clone (static shapes);
    ``call_function(layer, *args, **kwargs)`` is ``keras.models.clone_model``'s hook
    (e.g. to bypass a layer by returning its input).
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        raise TypeError(
            f"expected a functional keras.Model (as built by mvit3_keras), got {type(model)!r}"
        )
    weight_fns = {}

    def clone_function(layer):
        if isinstance(layer, keras.Model):
            return layer  # handled by recursive cloning
        swapped = replace(layer)
        if swapped is None:
            new = layer.__class__.from_config(layer.get_config())
            weight_fns[layer.name] = (layer, copy_weights if layer.weights else None)
            return new
        new, fn = swapped
        weight_fns[layer.name] = (layer, fn)
        return new

    input_tensors = None
    inputs = model.inputs
    if input_shape is not None or batch_size is not None:
        if len(inputs) != 1:
            raise ValueError("input_shape/batch_size need a single-input model")
        shape = tuple(inputs[0].shape)
        if input_shape is not None:
            input_shape = tuple(int(s) for s in input_shape)
            if len(input_shape) != len(shape) - 1:
                raise ValueError(
                    f"input_shape {input_shape} does not match the model input {shape[1:]}"
                )
            shape = (shape[0], *input_shape)
        if batch_size is not None:
            shape = (int(batch_size), *shape[1:])
        input_tensors = keras.Input(batch_shape=shape, dtype=inputs[0].dtype, name=inputs[0].name)

    new_model = _clone(model, clone_function, input_tensors, call_function)
    new_layers = layers_by_name(new_model)
    for name, (old, fn) in weight_fns.items():
        if fn is not None and name in new_layers:
            fn(old, new_layers[name])
    return keep_record(model, new_model)


def keep_record(original: keras.Model, clone: keras.Model) -> keras.Model:
    """Copy the variant record of ``original`` onto its ``clone`` (``clone_model`` keeps
    the class but not its constructor arguments), so folded, export and QAT formulations
    still say which variant they are, and the class's other constructor arguments
    (``config_attributes``: a detector's anchors and classes, a segmenter's head)."""
    record = model_record(original)
    if record is not None and isinstance(clone, MobileViTModel):
        attach_model_record(clone, record)
    if type(clone) is type(original):
        for name in getattr(original, "config_attributes", ()):
            setattr(clone, name, copy.deepcopy(getattr(original, name)))
    return clone


def _clone(model, clone_function, input_tensors, call_function):
    def recursive_clone(layer):
        if isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph"):
            return _clone(layer, clone_function, None, call_function)
        return clone_function(layer)

    return keras.models.clone_model(
        model,
        input_tensors=input_tensors,
        clone_function=recursive_clone,
        call_function=call_function,
    )
