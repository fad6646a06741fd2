"""Intermediate outputs by official module name, to find where two implementations
start to differ (the reference parity files store ``conv_1``, ``layer_1`` ...
``layer_5``, ``conv_1x1_exp`` and the parts of ``layer_3.1``)."""

from __future__ import annotations

import keras


def official_output(model, module: str):
    """The Keras tensor that corresponds to the output of official module ``module``.

    ``<block>.conv_proj_in`` / ``<block>.fusion_in`` are the inputs of those convs;
    any other module is the last layer whose name is ``module`` or starts with
    ``module + "."`` (the functional graph is built in execution order).
    """
    for suffix in ("conv_proj_in", "fusion_in"):
        if module.endswith("." + suffix):
            conv = module[: -len(suffix)] + suffix[: -len("_in")] + ".block.conv"
            return model.get_layer(conv).input
    last = None
    for layer in model.layers:
        if layer.name == module or layer.name.startswith(module + "."):
            last = layer
    if last is None:
        raise ValueError(f"model {model.name!r} has no layer for official module {module!r}")
    return last.output


def official_features_model(model, modules) -> keras.Model:
    """A model returning ``{module: tensor}`` for the given official module names."""
    return keras.Model(model.input, {m: official_output(model, m) for m in modules})
